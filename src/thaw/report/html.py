"""One self-contained ``report.html`` for a run directory.

The page embeds its plots and thumbnails as base64 data URIs and its CSS inline, loads nothing from elsewhere and
needs no JavaScript to be read (one inline script only records, for tests, whether every image decoded). It reads the
run-directory contract (docs/architecture.md): summary.json, metrics.jsonl, audit.json, predictions.jsonl and
eval.json, each optional, and shows what is there.

Example:
    >>> from thaw.report.html import write_report
    >>> write_report("runs/cats")  # doctest: +SKIP
    PosixPath('runs/cats/report.html')
"""

from __future__ import annotations

import base64
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from thaw.errors import CheckpointError, ThawError
from thaw.jsonio import atomic_write_text
from thaw.report.metrics import compute_metrics
from thaw.report.plots import group_order, plot_confusion, plot_curves, plot_heatmap, plot_reliability, plot_timeline
from thaw.rundir import REPORT, RunDir
from thaw.textfmt import as_number, duration, fixed, pct, sig

__all__ = ["write_report", "REPORT_NAME", "THUMBNAIL_SIZE", "MAX_TOP_LOSSES"]

logger = logging.getLogger(__name__)

REPORT_NAME = REPORT
#: Longest side of a top-losses thumbnail, in pixels.
THUMBNAIL_SIZE = 96
#: How many of the most confidently wrong images the gallery shows.
MAX_TOP_LOSSES = 24
#: Row limits for long tables (skipped files, duplicates), so a messy dataset still gives a readable page.
_MAX_ROWS = 100
_SPLIT_ORDER = ("train", "val", "test")

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #222;
       margin: 0 auto; max-width: 1180px; padding: 0 24px 48px; line-height: 1.45; }
h1 { margin: 24px 0 4px; font-size: 26px; }
h2 { border-bottom: 2px solid #e3e6ea; padding-bottom: 4px; margin-top: 36px; font-size: 20px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
nav { font-size: 13px; margin: 8px 0 16px; }
nav a { margin-right: 12px; color: #2c5ea8; text-decoration: none; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }
th, td { border: 1px solid #dfe2e6; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f6f8; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { width: 190px; }
.muted { color: #777; }
.note { color: #777; font-style: italic; }
.plot { max-width: 100%; height: auto; display: block; margin: 8px 0; }
.bar { display: inline-block; height: 9px; background: #4c72b0; vertical-align: middle; margin-right: 6px; }
.warn li { color: #8a4b00; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.tile { width: 132px; font-size: 11px; border: 1px solid #dfe2e6; border-radius: 4px; padding: 6px; }
.tile img, .tile .missing { width: 96px; height: 96px; object-fit: contain; display: block; margin: 0 auto 4px;
       background: #f4f6f8; }
.tile .missing { display: flex; align-items: center; justify-content: center; text-align: center; color: #999; }
.tile .path { color: #888; word-break: break-all; }
.bad { color: #b02a2a; }
.good { color: #2a7a2a; }
"""

# Records, for automated checks, whether every embedded image decoded; the page reads the same without it.
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.dataset.imagesCount = String(imgs.length);
  document.body.dataset.imagesOk = String(imgs.every(function (i) { return i.complete && i.naturalWidth > 0; }));
});
"""


# ----------------------------------------------------------------------------------------------------------------------
# tolerant access to JSON values (the files are read by thaw.rundir)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# ----------------------------------------------------------------------------------------------------------------------
# formatting


_DASH = "\u2014"  # what a missing or non-finite number shows as
_num = as_number


def _pct(value: Any) -> str:
    return pct(value, 2, missing=_DASH)


def _float(value: Any, digits: int = 4) -> str:
    return fixed(value, digits, missing=_DASH)


def _lr(value: Any) -> str:
    return sig(value, 3, missing=_DASH)


def _duration(value: Any) -> str:
    return duration(value, missing=_DASH)


def _text(value: Any) -> str:
    """Escaped text of any value ("—" for None)."""
    return "\u2014" if value is None else escape(str(value))


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = (), cls: str = "") -> str:
    """An HTML table; cells must already be escaped HTML. Columns in ``numeric`` are right-aligned."""
    head = "".join(f'<th class="num">{h}</th>' if i in numeric else f"<th>{h}</th>" for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    cls_attr = f' class="{cls}"' if cls else ""
    return f"<table{cls_attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _plot_img(path: Path | None, alt: str) -> str:
    if path is None:
        return ""
    return f'<img class="plot" src="{_data_uri(path.read_bytes(), "image/png")}" alt="{escape(alt)}">'


def _thumbnail(path: str) -> str | None:
    """A data URI of a thumbnail at most THUMBNAIL_SIZE px, or None when the file is missing or unreadable."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (THUMBNAIL_SIZE * 2, THUMBNAIL_SIZE * 2))  # JPEG: decode at reduced scale, much faster
            image = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        logger.debug("no thumbnail for %s: %s", path, exc)
        return None
    side = max(image.size)
    buf = BytesIO()
    if side * 2 <= THUMBNAIL_SIZE:
        # Tiny images (e.g. 28 px) are enlarged by a whole factor with nearest neighbour so pixels stay crisp,
        # and stored as PNG because JPEG would smear the blocks.
        factor = THUMBNAIL_SIZE // side
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
        image.save(buf, format="PNG", optimize=True)
        return _data_uri(buf.getvalue(), "image/png")
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    image.save(buf, format="JPEG", quality=85)
    return _data_uri(buf.getvalue(), "image/jpeg")


# ----------------------------------------------------------------------------------------------------------------------
# sections


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>\n{body}\n</section>'


def _split_counts(summary: Mapping[str, Any], audit: Mapping[str, Any]) -> dict[str, int | None]:
    """Images per split: summary ``data`` first, else the audit's per-class counts summed."""
    data = _mapping(summary.get("data"))
    if data:
        return {str(k): (int(v) if _num(v) is not None else None) for k, v in data.items()}
    totals: Counter[str] = Counter()
    for per_split in _mapping(audit.get("classes")).values():
        for split, n in _mapping(per_split).items():
            totals[str(split)] += int(n) if _num(n) is not None else 0
    return dict(totals)


def _ordered_splits(splits: Iterable[str]) -> list[str]:
    seen = list(dict.fromkeys(splits))
    return [s for s in _SPLIT_ORDER if s in seen] + [s for s in seen if s not in _SPLIT_ORDER]


def _overview(
    run: Path,
    summary: Mapping[str, Any],
    audit: Mapping[str, Any],
    classes: Sequence[str],
    metrics: Mapping[str, Any] | None,
    eval_split: str | None,
) -> str:
    counts = _split_counts(summary, audit)
    splits = _ordered_splits(list(counts) + ["train", "val", "test"])
    images = ", ".join(
        f"{escape(s)} {counts[s]}" if counts.get(s) is not None else f"{escape(s)} <span class='muted'>none</span>"
        for s in splits
    )
    shown = ", ".join(escape(c) for c in classes[:40]) + (
        f", \u2026 ({len(classes) - 40} more)" if len(classes) > 40 else ""
    )
    model = _text(summary.get("model"))
    if summary.get("model_source"):
        model += f' <span class="muted">({_text(summary.get("model_source"))})</span>'
    rows: list[tuple[str, str]] = [
        ("Model", model),
        ("Strategy", _text(summary.get("strategy"))),
        ("Classes", f"{len(classes)}: {shown}" if classes else "\u2014"),
        ("Images", images),
        ("Skipped files", str(len(_list(audit.get("skipped")))) if audit else "\u2014"),
    ]
    if _num(summary.get("img_size")) is not None:
        rows.append(("Image size", f"{int(summary['img_size'])} px"))
    rows.append(("Wall time", _duration(summary.get("wall_seconds"))))
    if _num(summary.get("train_images_per_second")) is not None:
        rows.append(("Training throughput", f"{summary['train_images_per_second']:.1f} images/s"))
    rows.append(("Best val accuracy", _pct(summary.get("best_val_accuracy"))))
    if "test_accuracy" in summary or metrics is None:
        rows.append(
            (
                "Test accuracy",
                _pct(summary.get("test_accuracy"))
                if summary.get("test_accuracy") is not None
                else '<span class="muted">no test set</span>',
            )
        )
    if metrics is not None:
        split = escape(eval_split or "evaluation")
        rows.append(
            (
                f"Evaluation ({split}, {int(metrics.get('num_images') or 0)} images)",
                f"accuracy <b>{_pct(metrics.get('accuracy'))}</b>"
                f" &nbsp; macro-F1 <b>{_float(metrics.get('macro_f1'))}</b>"
                f" &nbsp; ECE <b>{_float(metrics.get('ece'))}</b> &nbsp; NLL {_float(metrics.get('nll'))}",
            )
        )
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table><p class="muted">Run directory: {escape(str(run))}</p>'


def _phases_html(summary: Mapping[str, Any]) -> str:
    phases = [p for p in _list(summary.get("phases")) if isinstance(p, dict)]
    if not phases:
        return _note("No phases recorded in summary.json.")
    rows = [
        (
            _text(p.get("index")),
            _text(p.get("name")),
            ", ".join(escape(str(g)) for g in _list(p.get("trainable_groups"))) or '<span class="muted">none</span>',
            _text(p.get("epochs")),
            _lr(p.get("lr")),
            _pct(p.get("best_val_accuracy")),
            _text(p.get("reason")),
        )
        for p in phases
    ]
    return "<h3>Phases</h3>" + _table(
        ["#", "name", "trainable groups", "epochs", "lr", "best val", "reason"], rows, numeric=(0, 3, 4, 5)
    )


def _race_html(summary: Mapping[str, Any]) -> str:
    """auto's race: each candidate with its rung, what it cost, what it scored and why it was kept or dropped."""
    phases = [p for p in _list(summary.get("phases")) if isinstance(p, dict)]
    candidates = [p for p in phases if _mapping(p.get("signals")).get("role") == "candidate"]
    # the winner either continued (role "final") or was repeated for a weight soup (role "repeat")
    final = next((p for p in phases if _mapping(p.get("signals")).get("role") in ("final", "repeat")), None)
    if not candidates:
        return ""
    final_signals = _mapping(final.get("signals")) if final else {}
    verdicts = _mapping(final_signals.get("race"))
    winner = final_signals.get("recipe")
    # the rung that fitted early may be the loser's (summaries written before it could be named it only implicitly)
    early = final_signals.get("fitted_early_recipe", winner)
    whose = "" if early == winner else f"the {early} rung's "
    won = (
        f"won: its rung repeated {final_signals.get('repeats')} time(s) for a weight soup ({whose}lowest validation "
        f"loss at epoch {final_signals.get('rung_min_val_loss_epoch')} of {final_signals.get('rung_epochs')})"
        if final_signals.get("role") == "repeat"
        else "won: continued for the rest of the budget"
    )
    rows = []
    for p in candidates:
        recipe = _mapping(p.get("signals")).get("recipe")
        verdict = _mapping(verdicts.get(str(p.get("index"))))
        outcome = escape(won) if recipe == winner else _text(verdict.get("verdict"))
        rows.append(
            (
                _text(recipe),
                ", ".join(escape(str(g)) for g in _list(p.get("trainable_groups"))),
                _duration(p.get("planned_seconds")),
                _duration(p.get("seconds")),
                _text(p.get("epochs")),
                _pct(p.get("selected_val_accuracy")),
                _float(p.get("selected_val_loss")),
                outcome,
            )
        )
    return "<h3>The race</h3>" + _table(
        ["candidate", "trainable groups", "rung", "spent", "epochs", "val acc", "val loss", "outcome"],
        rows,
        numeric=(2, 3, 4, 5, 6),
    )


def _decisions_html(summary: Mapping[str, Any]) -> str:
    decisions = [d for d in _list(summary.get("decisions")) if isinstance(d, dict)]
    if not decisions:
        return ""
    rows = []
    for d in decisions:
        signals = _mapping(d.get("signals"))
        sig = "<br>".join(
            f"{escape(str(k))} = {_float(v) if _num(v) is not None else _text(v)}" for k, v in signals.items()
        )
        rows.append((_text(d.get("phase")), _text(d.get("decision")), _text(d.get("reason")), sig or "\u2014"))
    return "<h3>Automatic decisions</h3>" + _table(["phase", "decision", "reason", "signals"], rows, numeric=(0,))


def _per_class_html(metrics: Mapping[str, Any]) -> str:
    rows = [
        (
            _text(r.get("class")),
            _float(r.get("precision")),
            _float(r.get("recall")),
            _float(r.get("f1")),
            _text(r.get("support")),
        )
        for r in _list(metrics.get("per_class"))
        if isinstance(r, dict)
    ]
    return _table(["class", "precision", "recall", "F1", "support"], rows, numeric=(1, 2, 3, 4))


def _top_losses_html(predictions: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> str:
    wrong: list[tuple[float, float, Mapping[str, Any]]] = []
    for p in predictions:
        label, pred = p.get("label"), p.get("pred")
        probs = _list(p.get("probs"))
        if not isinstance(label, int) or not isinstance(pred, int) or label == pred:
            continue
        conf = float(probs[pred]) if 0 <= pred < len(probs) else float("nan")
        p_true = float(probs[label]) if 0 <= label < len(probs) else float("nan")
        wrong.append((conf, p_true, p))
    if not wrong:
        return _note("No misclassified images." if predictions else "No predictions.jsonl in this run.")
    # Most confidently wrong first; NaN confidences (no probs) last.
    wrong.sort(key=lambda t: (-(t[0] if math.isfinite(t[0]) else -1.0), t[1] if math.isfinite(t[1]) else 1.0))

    def name(i: int) -> str:
        return classes[i] if 0 <= i < len(classes) else f"class {i}"

    tiles = []
    for conf, p_true, p in wrong[:MAX_TOP_LOSSES]:
        path = str(p.get("path") or "")
        thumb = _thumbnail(path) if path else None
        true_name, pred_name = name(int(p["label"])), name(int(p["pred"]))
        if thumb is None:
            reason = "image not found" if not path or not os.path.exists(path) else "image unreadable"
            picture = f'<div class="missing">{escape(reason)}</div>'
        else:
            picture = f'<img src="{thumb}" alt="{escape(f"true {true_name}, predicted {pred_name}")}">'
        loss = f"loss {-math.log(max(p_true, 1e-12)):.2f}" if math.isfinite(p_true) else ""
        tiles.append(
            f'<div class="tile" title="{escape(path)}">{picture}'
            f'<div>true: <b class="good">{escape(true_name)}</b></div>'
            f'<div>pred: <b class="bad">{escape(pred_name)}</b> ({_pct(conf) if math.isfinite(conf) else "?"})</div>'
            f'<div class="muted">{escape(loss)}</div>'
            f'<div class="path">{escape(Path(path).name)}</div></div>'
        )
    intro = (
        f"<p>The {len(tiles)} most confidently wrong of {len(wrong)} misclassified images "
        f"(of {len(predictions)} evaluated).</p>"
    )
    return intro + f'<div class="gallery">{"".join(tiles)}</div>'


def _audit_html(audit: Mapping[str, Any], classes: Sequence[str]) -> str:
    if not audit:
        return _note("No audit.json in this run.")
    parts = []
    per_class = _mapping(audit.get("classes"))
    if per_class:
        splits = _ordered_splits(str(s) for counts in per_class.values() for s in _mapping(counts))
        names = [c for c in classes if c in per_class] + [c for c in per_class if c not in classes]
        totals = {c: sum(int(v) for v in _mapping(per_class[c]).values() if _num(v) is not None) for c in names}
        largest = max(totals.values(), default=0) or 1
        balance: list[list[str]] = []
        for c in names:
            counts = _mapping(per_class[c])
            bar = f'<span class="bar" style="width:{int(120 * totals[c] / largest)}px"></span>'
            balance.append([escape(c)] + [_text(counts.get(s, 0)) for s in splits] + [f"{bar}{totals[c]}"])
        parts.append("<h3>Class balance</h3>")
        parts.append(
            _table(["class", *map(escape, splits), "total"], balance, numeric=tuple(range(1, len(splits) + 1)))
        )
        if _num(audit.get("imbalance")) is not None:
            parts.append(f"<p>Imbalance (largest / smallest class): <b>{_float(audit['imbalance'], 2)}</b></p>")

    skipped = [s for s in _list(audit.get("skipped")) if isinstance(s, dict)]
    parts.append(f"<h3>Skipped files ({len(skipped)})</h3>")
    if skipped:
        reasons = Counter(str(s.get("reason")) for s in skipped)
        parts.append(_table(["reason", "files"], [(escape(r), str(n)) for r, n in reasons.most_common()], numeric=(1,)))
        files = [(_text(s.get("path")), _text(s.get("split")), _text(s.get("reason"))) for s in skipped[:_MAX_ROWS]]
        parts.append(_table(["path", "split", "reason"], files))
        if len(skipped) > _MAX_ROWS:
            parts.append(_note(f"\u2026 and {len(skipped) - _MAX_ROWS} more (see audit.json)."))
    else:
        parts.append(_note("Every file found was used."))

    duplicates = [d for d in _list(audit.get("duplicates")) if isinstance(d, dict)]
    cross = _num(audit.get("cross_split_duplicates"))
    title = f"Duplicates ({len(duplicates)} groups"
    title += f", {int(cross)} across splits)" if cross is not None else ")"
    parts.append(f"<h3>{escape(title)}</h3>")
    if duplicates:
        rows = [
            (
                escape(str(d.get("hash", ""))[:12]),
                "<br>".join(escape(str(p)) for p in _list(d.get("paths"))),
                ", ".join(escape(str(s)) for s in _list(d.get("splits"))),
            )
            for d in duplicates[:_MAX_ROWS]
        ]
        parts.append(_table(["hash", "paths", "splits"], rows))
        if len(duplicates) > _MAX_ROWS:
            parts.append(_note(f"\u2026 and {len(duplicates) - _MAX_ROWS} more (see audit.json)."))
    else:
        parts.append(_note("No duplicate images found."))
    return "".join(parts)


def _warnings_html(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], notes: Sequence[str]) -> str:
    items = [str(w) for w in _list(summary.get("warnings"))]
    gap_epochs = [str(r.get("epoch")) for r in rows if r.get("gap_warning") is True]
    if gap_epochs:
        items.append(f"train/validation gap flagged at epoch(s) {', '.join(gap_epochs)}: the model may be overfitting")
    items.extend(notes)
    if not items:
        return _note("No warnings.")
    return '<ul class="warn">' + "".join(f"<li>{escape(w)}</li>" for w in items) + "</ul>"


# ----------------------------------------------------------------------------------------------------------------------
# entry point


def _evaluation_metrics(
    eval_json: Any, predictions: Sequence[Mapping[str, Any]], classes: Sequence[str], notes: list[str]
) -> tuple[dict[str, Any] | None, str | None]:
    """Metrics from eval.json, else computed from predictions.jsonl; None when neither is usable."""
    if isinstance(eval_json, dict) and eval_json.get("confusion_matrix") is not None:
        return eval_json, str(eval_json.get("split") or "") or None
    usable = [p for p in predictions if isinstance(p.get("label"), int) and isinstance(p.get("probs"), list)]
    if not usable or not classes:
        return None, None
    try:
        metrics = compute_metrics(
            np.array([p["label"] for p in usable]), np.array([p["probs"] for p in usable], dtype=float), classes
        )
    except (ThawError, ValueError) as exc:
        notes.append(f"could not compute metrics from predictions.jsonl: {exc}")
        return None, None
    return metrics, str(usable[0].get("split") or "") or None


def write_report(run_dir: Path | str) -> Path:
    """Write ``plots/*.png`` and a self-contained ``report.html`` for a run directory.

    Reads summary.json, metrics.jsonl, audit.json, predictions.jsonl and eval.json; each may be absent (a run
    without a test set, without predictions, an older run), and the sections that need it then say so.

    Args:
        run_dir: The run directory written by ``thaw fit``.

    Returns:
        The path of the written report.html.

    Raises:
        CheckpointError: ``run_dir`` is not a directory, holds neither summary.json nor metrics.jsonl, or one of
            its JSON files cannot be parsed.

    Example:
        >>> write_report("runs/cats")  # doctest: +SKIP
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"run directory {run} does not exist; pass the folder `thaw fit` wrote (runs/NAME)")
    rd = RunDir(run)
    summary = rd.read_summary()
    rows = rd.read_metrics()
    if not summary and not rows:
        raise CheckpointError(
            f"{run} holds neither summary.json nor metrics.jsonl; pass a run directory written by `thaw fit`"
        )
    audit = rd.read_audit()
    predictions = rd.read_predictions()
    eval_json = rd.read_eval()
    notes: list[str] = []

    classes = [str(c) for c in _list(summary.get("classes"))]
    if not classes and isinstance(eval_json, dict):
        classes = [str(c) for c in _list(eval_json.get("classes"))]
    if not classes:
        classes = list(_mapping(audit.get("classes")))
    metrics, eval_split = _evaluation_metrics(eval_json, predictions, classes, notes)

    plots = rd.plots_dir
    phase_names = {
        p.get("index"): str(p["name"]) for p in _list(summary.get("phases")) if isinstance(p, dict) and p.get("name")
    }
    groups = group_order(summary, rows)
    curves = plot_curves(rows, plots / "curves.png", phase_names=phase_names)
    timeline = plot_timeline(summary, rows, plots / "timeline.png")
    drift = plot_heatmap(rows, "group_drift", plots / "group_drift.png", groups=groups)
    grad = plot_heatmap(rows, "grad_norm", plots / "grad_norm.png", groups=groups)
    confusion = plot_confusion(metrics, plots / "confusion.png") if metrics else None
    reliability = plot_reliability(metrics, plots / "reliability.png") if metrics else None

    split_word = f" ({eval_split} split)" if eval_split else ""
    no_eval = _note("No evaluation in this run (no eval.json and no predictions.jsonl).")
    heat_body = (
        (
            f"<h3>Weight drift from pretrained</h3>{_plot_img(drift, 'weight drift per group and epoch')}"
            if drift
            else ""
        )
        + (f"<h3>Gradient norm</h3>{_plot_img(grad, 'gradient norm per group and epoch')}" if grad else "")
    ) or _note("No per-group drift or gradient measurements were recorded.")
    sections = [
        ("overview", "Overview", _overview(run, summary, audit, classes, metrics, eval_split)),
        (
            "curves",
            "Learning curves",
            _plot_img(curves, "training and validation loss and accuracy per epoch")
            or _note("No per-epoch metrics (metrics.jsonl) in this run."),
        ),
        (
            "timeline",
            "Thaw timeline",
            (_plot_img(timeline, "trainable layer groups per epoch") or _note("No phases to draw."))
            + _phases_html(summary)
            + _race_html(summary)
            + _decisions_html(summary),
        ),
        ("heatmaps", "Per-group drift and gradients", heat_body),
        (
            "confusion",
            f"Confusion matrix{split_word}",
            _plot_img(confusion, "confusion matrix, rows are true classes") if confusion else no_eval,
        ),
        ("per-class", f"Per-class metrics{split_word}", _per_class_html(metrics) if metrics else no_eval),
        (
            "reliability",
            f"Calibration{split_word}",
            _plot_img(reliability, "reliability diagram") if reliability else no_eval,
        ),
        ("top-losses", f"Top losses{split_word}", _top_losses_html(predictions, classes)),
        ("audit", "Data audit", _audit_html(audit, classes)),
        ("warnings", "Warnings", _warnings_html(summary, rows, notes)),
    ]
    title = f"thaw report \u2014 {run.resolve().name}"
    nav = "".join(f'<a href="#{a}">{escape(t.split(" (")[0])}</a>' for a, t, _ in sections)
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n<nav>{nav}</nav>\n"
        + "\n".join(_section(a, t, b) for a, t, b in sections)
        + f"\n<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )
    out = atomic_write_text(rd.report_html, page)  # a viewer never sees half a report
    logger.info("wrote %s (%d KiB)", out, len(page) // 1024)
    return out
