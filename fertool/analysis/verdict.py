"""Whether a run's LHC-Net counts: the paper's stage-4 selection rule, and divergence.

One function, :func:`stage4_verdict`, read by both the pipeline (its final table, the
ablation and LHC-NetC) and ``fertool report`` (its statistics), so that ``pipeline.json``
and the report cannot disagree about which runs count.

A run's stage 4 (``RUN/stage4/summary.json``) is

* ``accepted``: its ``selection`` record says the rule accepted it (training loss below
  ``train.selection_factor`` x the starting ResNet's; docs/protocol.md §4);
* ``rejected``: the record says the rule rejected it;
* ``diverged``: the stage stopped on a non-finite training loss (``status: diverged``);
  the paper left its diverged run out, and so does fertool;
* ``unjudged``: finished without a selection record (the rule could not be applied), or
  no stage 4 at all: nothing says it is bad, and it counts.

LHC-Net (stage 4) and LHC-NetC (controller) results of a ``rejected`` or ``diverged``
run are excluded; the run's ResNet results are not affected.
"""

from __future__ import annotations

from pathlib import Path

from ..files import read_json

__all__ = ["EXCLUDED", "stage4_verdict"]

#: Verdicts whose LHC-Net and LHC-NetC results are left out.
EXCLUDED = ("rejected", "diverged")


def stage4_verdict(stage_dir: str | Path) -> dict:
    """``{"status": accepted | rejected | diverged | unjudged, "reason": str | None}`` of the
    stage-4 folder ``stage_dir`` (its ``summary.json``), with the rule's ``ratio`` and
    ``factor`` when it was applied."""
    path = Path(stage_dir) / "summary.json"
    summary = read_json(path, strict=True) if path.is_file() else {}  # unreadable: a DataError naming it
    if summary.get("status") == "diverged":
        at = summary.get("diverged_at") or {}
        return {
            "status": "diverged",
            "reason": f"diverged: training loss {at.get('loss')} at epoch {at.get('epoch')}, batch {at.get('batch')}",
        }
    selection = summary.get("selection")
    if not isinstance(selection, dict) or not isinstance(selection.get("accepted"), bool):
        return {"status": "unjudged", "reason": None}
    ratio, factor = selection.get("ratio"), selection.get("factor")
    numbers = isinstance(ratio, (int, float)) and isinstance(factor, (int, float))
    if selection["accepted"]:
        return {"status": "accepted", "reason": None, "ratio": ratio, "factor": factor}
    why = f": train loss ratio {ratio:.3f} >= {factor}" if numbers else ""
    return {"status": "rejected", "reason": "selection rule" + why, "ratio": ratio, "factor": factor}
