"""``report/index.html``: every result of a run directory on one static page.

The page is plain HTML with a little inline CSS: no JavaScript, no server, no web
framework.  Every picture is embedded as a base64 ``data:`` URI, so the single file can be
mailed or zipped on its own.  It is built only from files the other commands wrote
(``pipeline.json``, ``report.json``, ``summary.json``, ``eval-*/metrics.json``,
``ablate-*/ablation.json`` and the PNGs beside them), so it can be regenerated at any time
with ``fertool report RUN --html``.

Sections: the final table beside the paper's, the Table 7 statistics, training curves per
stage, evaluations (confusion matrices plain vs TTA), ablation, head correlations and
attention pictures.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

from ..files import read_json
from ..protocol import PAPER_TABLE7, STAGE_FOLDERS
from .stats import STAT_COLUMNS, stat_text, table_rows

__all__ = ["render_html"]

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 1.5em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-bottom: .3em; }
table { border-collapse: collapse; margin: .6em 0; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: .3em 0; }
figure { margin: .8em 0; } figcaption { font-size: .95em; color: #444; }
.note { background: #fff6d5; border-left: 4px solid #e0b000; padding: .5em .8em; }
.muted { color: #666; font-size: .9em; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
.grid figure { flex: 1 1 480px; max-width: 600px; }  /* two a row at 1280 px: numbers near their size */
@media (max-width: 600px) { body { padding: 0 .5em; } h1 { font-size: 1.25em; word-break: break-all; }
  th, td { padding: .2em .35em; }
  /* pictures at their own size, scrolled sideways: scaled to a phone's width their numbers are ~5 px */
  figure { overflow-x: auto; } figure img { max-width: none; } .grid figure { max-width: 100%; } }
nav a { margin-right: 1em; }
"""


def _pct(value: float | None, scale: float = 100.0) -> str:
    return "-" if value is None else f"{scale * value:.2f}%"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    # In a scrolling box: on a phone a wide table scrolls sideways instead of widening the page.
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _image(path: Path, alt: str, caption: str = "") -> str:
    """A figure with ``path`` embedded as a data URI (nothing when the file is missing)."""
    try:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return ""
    caption_html = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}">{caption_html}</figure>'


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _stage_folders(root: Path) -> list[Path]:
    """Every stage folder under ``root`` (a ``summary.json`` in a stage-named folder)."""
    found = [p.parent for p in root.rglob("summary.json") if p.parent.name in STAGE_FOLDERS]
    # Shared stages first, then per seed; within a folder in training order.
    return sorted(found, key=lambda p: (len(p.relative_to(root).parts), str(p.parent), STAGE_FOLDERS.index(p.name)))


# --------------------------------------------------------------------------- sections


def _provenance(runs: Sequence[Path], report_data: dict) -> str:
    """A warning banner when any result of the page was made on synthetic data."""
    if not (
        any(r.get("synthetic") for r in report_data["runs"])
        or any((read_json(run / "pipeline.json") or {}).get("synthetic") for run in runs)
    ):
        return ""
    return (
        '<p class="note"><b>Synthetic data.</b> These results come from the generated sample of '
        "cartoon faces (<code>fertool sample-data</code>), not from FER2013: they show that the "
        "machinery works and say nothing about facial expression recognition. The paper's "
        "numbers beside them are FER2013 PrivateTest at 224 px, shown for reference only.</p>"
    )


def _final_table(run: Path) -> str:
    pipeline = read_json(run / "pipeline.json")
    if not pipeline or not pipeline.get("table"):
        return ""
    rows = [
        [
            r["model"],
            r["runs"],
            r.get("rejected", 0),
            _pct(r["accuracy"], 1),
            _pct(r.get("tta_accuracy"), 1),
            "-" if r.get("params") is None else f"{r['params'] / 1e6:.1f}M",
            _pct(r["paper_accuracy"], 1),
            _pct(r["paper_tta_accuracy"], 1),
            r["paper_params"],
        ]
        for r in pipeline["table"]
    ]
    html = [
        f"<p>Test split of <code>{escape(str(pipeline.get('csv', '')))}</code>, best run per model "
        f"(seeds {escape(', '.join(str(s) for s in pipeline.get('seeds', [])))}).</p>",
        _table(["model", "runs", "left out", "accuracy", "TTA", "params", "paper", "paper TTA", "paper params"], rows),
    ]
    for note in pipeline.get("notes") or []:
        html.append(f'<p class="note">{escape(note)}</p>')
    return "\n".join(html)


def _statistics(data: dict) -> str:
    html = []
    header = [data["group_by"]] + [title for _, title in STAT_COLUMNS]
    for kind, title in (("plain", "without TTA"), ("tta", "with TTA")):
        rows = [[g] + [stat_text(k, s) for k, _ in STAT_COLUMNS] for g, _, s in table_rows(data["groups"], kind)]
        if rows:
            html += [f"<h3>{escape(data['split'])} accuracy (%), {title}</h3>", _table(header, rows)]
    paper_rows = [
        [m, f"{p['top40']:.2f}", f"{p['top25']:.2f}", f"{p['best']:.2f}", f"{p['best_tta']:.2f}"]
        for m, p in PAPER_TABLE7.items()
    ]
    html += [
        "<h3>The paper (FER2013 PrivateTest, Table 7; best single model with TTA)</h3>",
        _table(["model", "top 40%", "top 25%", "best", "best TTA"], paper_rows),
    ]
    rejected = [r for r in data["runs"] if r["status"] == "rejected"]
    if rejected:
        html.append(
            "<p>Rejected by the stage-4 selection rule (left out): "
            + escape(", ".join(f"{r['run']} ({r['stage']})" for r in rejected))
            + "</p>"
        )
    return "\n".join(html)


def _curves(run: Path) -> str:
    html = []
    for folder in _stage_folders(run):
        summary = read_json(folder / "summary.json") or {}
        best = summary.get("best_val_accuracy")
        line = (
            f"{summary.get('arch', '?')}, {summary.get('status', '?')} after {summary.get('epochs', '?')} "
            f"epoch(s); best validation accuracy {_pct(best)} at epoch {summary.get('best_epoch', '?')}"
        )
        selection = summary.get("selection")
        if selection:
            line += "; selection rule " + ("accepted" if selection.get("accepted") else "REJECTED")
        html.append(f'<h3>{escape(_rel(folder, run))}</h3><p class="muted">{escape(line)}</p>')
        html.append(_image(folder / "curves.png", f"training curves of {_rel(folder, run)}"))
    return "\n".join(html)


def _evaluations(run: Path) -> str:
    html = []
    for metrics_file in sorted(run.rglob("eval-*/metrics.json")):
        metrics = read_json(metrics_file) or {}
        folder = metrics_file.parent
        tta = metrics.get("tta") or {}
        line = (
            f"{metrics.get('arch', '?')} on {metrics.get('split', '?')} ({metrics.get('n', '?')} images): "
            f"accuracy {_pct(metrics.get('accuracy'))}"
        )
        if tta:
            line += f", with TTA ({tta.get('preset')}, {tta.get('views')} views) {_pct(tta.get('accuracy'))}"
        html.append(f'<h3>{escape(_rel(folder, run))}</h3><p class="muted">{escape(line)}</p>')
        html.append(
            _image(
                folder / "confusion.png",
                f"confusion matrices of {_rel(folder, run)}",
                "Rows: true class; columns: predicted class; colour: share of the true class.",
            )
        )
    return "\n".join(html)


def _ablations(run: Path) -> str:
    html = []
    for ablation_file in sorted(run.rglob("ablate-*/ablation.json")):
        data = read_json(ablation_file) or {}
        folder = ablation_file.parent
        html.append(f"<h3>{escape(_rel(folder, run))}</h3>")
        html.append(
            _image(
                folder / "ablation.png",
                "ablation",
                "Accuracy change when LHC modules are switched off (off) or reset to their "
                "untrained weights (detrain), without retraining.",
            )
        )
        modules = ((data.get("heads") or {}).get("modules")) or {}
        figures, missing = [], []
        for name, entry in modules.items():
            picture = folder / f"heads-{name}.png"
            if picture.is_file():
                figures.append(_image(picture, f"head correlation of {name}"))
            else:
                missing.append(f"{name} ({entry.get('note') or 'no picture'})")
        if figures:
            html.append("<h4>Correlation between the heads of each module</h4>")
            html.append('<div class="grid">' + "".join(figures) + "</div>")
        if missing:
            html.append(
                '<p class="muted">No head-correlation plot for '
                + escape(", ".join(missing))
                + "; a correlation between heads needs at least two heads.</p>"
            )
        controller = (data.get("heads") or {}).get("controller")
        if controller:
            rows = [
                [name, f"{c['w']:+.3f}", f"{c['tanh_w']:+.3f}", f"{c['gain']:.3f}"] for name, c in controller.items()
            ]
            html.append(
                "<h4>LHC-NetC controller weights</h4>" + _table(["module", "w", "tanh(w)", "gain 1 + tanh(w)"], rows)
            )
        pictures = data.get("pictures") or []
        if pictures:
            html.append("<h4>Attention pictures</h4>")
        for item in pictures:
            html.append(
                f"<p>Image {item.get('index')}: true {escape(str(item.get('label')))}, "
                f"predicted {escape(str(item.get('predicted')))}</p>"
            )
            for name in item.get("files", []):
                html.append(_image(folder / "pictures" / name, name))
    return "\n".join(html)


def render_html(run_dirs: Sequence[str | os.PathLike], report_data: dict, *, runs_png: Path | None = None) -> str:
    """The page for the run folders ``run_dirs`` and their Table 7 ``report_data``."""
    runs = [Path(d) for d in run_dirs]
    title = "fertool report: " + ", ".join(str(r) for r in runs)
    sections: list[tuple[str, str, str]] = []  # (anchor, heading, body)
    for run in runs:
        label = f" ({run})" if len(runs) > 1 else ""
        body = _final_table(run)
        if body:
            sections.append((f"final-{len(sections)}", "Final table" + label, body))
    stats = _statistics(report_data)
    if runs_png is not None:
        stats += _image(
            runs_png,
            "test accuracy per run",
            "Test accuracy of every run per model; circles without TTA, triangles with TTA.",
        )
    sections.append(("statistics", "Run statistics (Table 7)", stats))
    for run in runs:
        label = f" ({run})" if len(runs) > 1 else ""
        for anchor, heading, body in (
            ("curves", "Training curves", _curves(run)),
            ("evaluation", "Evaluation, plain and TTA", _evaluations(run)),
            ("ablation", "Ablation, heads and attention", _ablations(run)),
        ):
            if body:
                sections.append((f"{anchor}-{len(sections)}", heading + label, body))
    nav = "".join(f'<a href="#{a}">{escape(h)}</a>' for a, h, _ in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        _provenance(runs, report_data),
        f"<nav>{nav}</nav>",
    ]
    for anchor, heading, body in sections:
        parts.append(f'<h2 id="{anchor}">{escape(heading)}</h2>\n{body}')
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p) + "\n"
