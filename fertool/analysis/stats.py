"""Table 7's run statistics (docs/protocol.md §6): top 40% / top 25% of the runs (with and
without the best), best, mean and standard deviation, and how a statistic is printed.

Shared by :mod:`fertool.analysis.report` (which finds the runs) and
:mod:`fertool.analysis.html` (which draws them); no import of either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["STAT_COLUMNS", "top_count", "run_statistics", "pct", "stat_text"]

#: Statistic keys, in table order, with their column titles.
STAT_COLUMNS = (
    ("n", "runs"),
    ("top40", "top 40%"),
    ("top40_wo_best", "top 40% w/o best"),
    ("top25", "top 25%"),
    ("top25_wo_best", "top 25% w/o best"),
    ("best", "best"),
    ("mean", "mean"),
    ("std", "std"),
)


def top_count(n: int, percent: int) -> int:
    """Number of runs in the top ``percent``% of ``n``: round half up, at least 1, at most n.

    Exact integer arithmetic: ``floor(n * percent / 100 + 1/2)``.
    """
    if n <= 0:
        return 0
    return max(1, min(n, (2 * n * percent + 100) // 200))


def run_statistics(values: Sequence[float]) -> dict[str, Any]:
    """Table-7 statistics of accuracies ``values`` (see the module docstring); None = n/a."""
    vals = sorted((float(v) for v in values), reverse=True)
    n = len(vals)
    out: dict[str, Any] = {"n": n}
    if n == 0:
        out.update({k: None for k, _ in STAT_COLUMNS[1:]})
        return out
    for percent in (40, 25):
        m = top_count(n, percent)
        out[f"top{percent}"] = sum(vals[:m]) / m
        out[f"top{percent}_wo_best"] = sum(vals[1:m]) / (m - 1) if m >= 2 else None
        out[f"top{percent}_runs"] = m
    mean = sum(vals) / n
    out["best"] = vals[0]
    out["mean"] = mean
    out["std"] = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n >= 2 else None
    return out


def pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}"


def stat_text(key: str, stats: dict) -> str:
    """One statistic for a table: the run count, or a percentage with 2 decimals (n/a)."""
    return str(stats.get(key)) if key == "n" else pct(stats.get(key))


def table_rows(groups: dict, kind: str) -> list[tuple[str, dict, dict]]:
    """(group, entry, statistics) of the rows of a Table 7 of ``kind`` ("plain" or "tta").

    The tables without and with TTA list the same groups: those with at least one accepted
    run (a group whose runs were all rejected is listed with the rejected runs instead).  A
    group without TTA figures gets an all-n/a row in the TTA table.  No TTA figures at all:
    no TTA table (an empty list).
    """
    listed = [(name, entry) for name, entry in groups.items() if (entry.get("plain") or {}).get("n")]
    if kind == "tta" and not any(entry.get("tta") for _, entry in listed):
        return []
    return [(name, entry, entry.get(kind) or run_statistics([])) for name, entry in listed]
