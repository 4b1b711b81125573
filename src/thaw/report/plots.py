"""PNG plots of a run: learning curves, thaw timeline, per-group heatmaps, confusion matrix, reliability.

Every function builds a :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot), so plotting leaves no
global state behind and works without a display. Each returns the written path, or None when the data it needs is
absent (an old run, a run without predictions, a metric that was not recorded).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

__all__ = ["plot_curves", "plot_timeline", "plot_heatmap", "plot_confusion", "plot_reliability", "group_order"]

logger = logging.getLogger(__name__)

_DPI = 100
_PHASE_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def _save(fig: Figure, path: Path | str) -> Path:
    """Write ``fig`` as PNG to ``path`` (creating parent folders) and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, format="png", dpi=_DPI)
    logger.debug("wrote plot %s", out)
    return out


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is missing or not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _phase_spans(rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, int, int]]:
    """Consecutive runs of equal ``phase`` as ``(phase, first_epoch, last_epoch)``."""
    spans: list[tuple[Any, int, int]] = []
    for row in rows:
        epoch = int(row["epoch"])
        phase = row.get("phase")
        if spans and spans[-1][0] == phase:
            spans[-1] = (phase, spans[-1][1], epoch)
        else:
            spans.append((phase, epoch, epoch))
    return spans


def _epoch_rows(metrics_rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows that carry an epoch, one per epoch (the last one wins: a resumed run may repeat some), sorted."""
    by_epoch = {int(r["epoch"]): r for r in metrics_rows if _number(r.get("epoch")) is not None}
    return [by_epoch[e] for e in sorted(by_epoch)]


def group_order(summary: Mapping[str, Any] | None, metrics_rows: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """Layer group names in input-to-output order.

    Taken from ``summary["groups"]`` when present; otherwise from the order in which groups first appear in the
    phases and in per-epoch ``trainable_groups``, ``group_drift`` and ``grad_norm``.

    Args:
        summary: The run's summary.json (may be None or lack ``groups``).
        metrics_rows: Rows of metrics.jsonl.

    Returns:
        Group names, each once.
    """
    names: list[str] = []

    def add(items: Any) -> None:
        for name in items or ():
            if str(name) not in names:
                names.append(str(name))

    summary = summary or {}
    add(g.get("name") for g in summary.get("groups") or () if isinstance(g, Mapping) and g.get("name"))
    for phase in summary.get("phases") or ():
        add(phase.get("trainable_groups"))
    for row in metrics_rows:
        add(row.get("trainable_groups"))
        for key in ("group_drift", "grad_norm"):
            if isinstance(row.get(key), Mapping):
                add(row[key].keys())
    return names


def _mark_phases(ax: Axes, spans: Sequence[tuple[Any, int, int]], names: Mapping[Any, str], label: bool) -> None:
    """Draw a dashed line at each phase boundary and, when ``label``, the phase name above its span."""
    for i, (phase, first, last) in enumerate(spans):
        if i > 0:
            ax.axvline(first - 0.5, color="#888888", linestyle="--", linewidth=1)
        if label:
            text = names.get(phase, f"phase {phase}")
            ax.text(
                (first + last) / 2,
                1.01,
                text,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
                color="#444444",
            )


def plot_curves(
    metrics_rows: Sequence[Mapping[str, Any]], path: Path | str, phase_names: Mapping[Any, str] | None = None
) -> Path | None:
    """Train/validation loss and accuracy against epoch, with the phase boundaries marked.

    Args:
        metrics_rows: Rows of metrics.jsonl (``epoch``, ``phase``, ``train_loss``, ``val_loss``,
            ``train_accuracy``, ``val_accuracy``; any of the value keys may be missing).
        path: Where to write the PNG.
        phase_names: Optional phase index -> name, used to label the phases.

    Returns:
        The PNG path, or None when no row has an epoch and at least one value.
    """
    rows = _epoch_rows(metrics_rows)
    panels = [("loss", ("train_loss", "val_loss")), ("accuracy", ("train_accuracy", "val_accuracy"))]
    if not any(_number(r.get(k)) is not None for r in rows for _, keys in panels for k in keys):
        return None
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    spans = _phase_spans(rows)
    epochs = [int(r["epoch"]) for r in rows]
    for i, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        for key, style in zip(keys, ("-o", "-s"), strict=True):
            pts = [(e, _number(r.get(key))) for e, r in zip(epochs, rows, strict=True)]
            xs = [e for e, v in pts if v is not None]
            ys = [v for _, v in pts if v is not None]
            if xs:
                ax.plot(xs, ys, style, markersize=3, label=key.split("_")[0])
        _mark_phases(ax, spans, phase_names or {}, label=len(spans) > 1)
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
    return _save(fig, path)


def plot_timeline(
    summary: Mapping[str, Any] | None, metrics_rows: Sequence[Mapping[str, Any]], path: Path | str
) -> Path | None:
    """Thaw timeline: layer groups (input at the bottom, head at the top) against epochs.

    A cell is coloured (one colour per phase) when that group was trainable in that epoch, and left pale when it
    was frozen. The per-epoch trainable groups come from metrics.jsonl; without it they are reconstructed from the
    summary's phases (``trainable_groups`` x ``epochs``).

    Args:
        summary: The run's summary.json (``groups`` gives the order; ``phases`` gives names), or None.
        metrics_rows: Rows of metrics.jsonl.
        path: Where to write the PNG.

    Returns:
        The PNG path, or None when no epoch or no group is known.
    """
    summary = summary or {}
    phases = [p for p in summary.get("phases") or () if isinstance(p, Mapping)]
    names = {p.get("index"): str(p.get("name") or f"phase {p.get('index')}") for p in phases}
    # (epoch, phase, trainable groups)
    epochs: list[tuple[int, Any, list[str]]] = [
        (int(r["epoch"]), r.get("phase"), [str(g) for g in r.get("trainable_groups") or ()])
        for r in _epoch_rows(metrics_rows)
    ]
    if not epochs:
        epoch = 0
        for p in phases:
            for _ in range(int(p.get("epochs") or 0)):
                epoch += 1
                epochs.append((epoch, p.get("index"), [str(g) for g in p.get("trainable_groups") or ()]))
    groups = group_order(summary, metrics_rows)
    if not epochs or not groups:
        return None

    phase_ids = list(dict.fromkeys(phase for _, phase, _ in epochs))
    grid = np.zeros((len(groups), len(epochs)), dtype=int)  # 0 = frozen, k = trainable in the k-th phase
    for col, (_, phase, trainable) in enumerate(epochs):
        for g in trainable:
            if g in groups:
                grid[groups.index(g), col] = phase_ids.index(phase) + 1
    colors = ["#eef1f5"] + [_PHASE_COLORS[i % len(_PHASE_COLORS)] for i in range(len(phase_ids))]

    params = {
        str(g.get("name")): g.get("num_params")
        for g in summary.get("groups") or ()
        if isinstance(g, Mapping) and _number(g.get("num_params")) is not None
    }
    labels = [f"{g} ({_human(params[g])})" if g in params else g for g in groups]

    fig = Figure(
        figsize=(min(16.0, 3.0 + 0.35 * len(epochs)), min(12.0, 1.4 + 0.32 * len(groups))), layout="constrained"
    )
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(
        grid,
        cmap=ListedColormap(colors),
        vmin=-0.5,
        vmax=len(colors) - 0.5,
        aspect="auto",
        origin="lower",
        interpolation="nearest",
    )
    ax.set_yticks(range(len(groups)), labels, fontsize=8)
    step = max(1, math.ceil(len(epochs) / 30))
    ax.set_xticks(range(0, len(epochs), step), [str(e) for e, _, _ in epochs][::step], fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("layer group (input \u2192 output)")
    ax.set_xticks(np.arange(-0.5, len(epochs), 1), minor=True)
    ax.set_yticks(np.arange(-0.5, len(groups), 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    col_spans = _phase_spans([{"epoch": i, "phase": phase} for i, (_, phase, _) in enumerate(epochs)])
    _mark_phases(ax, col_spans, names, label=True)
    return _save(fig, path)


def _human(n: Any) -> str:
    """A parameter count as a short string: 950, 12.3K, 4.1M."""
    value = float(n)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{int(value)}"


def plot_heatmap(
    metrics_rows: Sequence[Mapping[str, Any]],
    key: str,
    path: Path | str,
    groups: Sequence[str] | None = None,
) -> Path | None:
    """Heatmap of a per-group, per-epoch measurement (``group_drift`` or ``grad_norm``): groups x epochs.

    Args:
        metrics_rows: Rows of metrics.jsonl; rows without ``key`` leave their column blank.
        key: The per-row mapping {group name: number} to plot.
        path: Where to write the PNG.
        groups: Group order (input to output); defaults to the order of first appearance.

    Returns:
        The PNG path, or None when no row has a number under ``key``.
    """
    rows = _epoch_rows(metrics_rows)
    seen: list[str] = []
    for r in rows:
        if isinstance(r.get(key), Mapping):
            seen.extend(str(g) for g in r[key] if str(g) not in seen)
    order = [g for g in groups or () if g in seen] + [g for g in seen if g not in (groups or ())]
    if not order:
        return None
    values = np.full((len(order), len(rows)), np.nan)
    for col, r in enumerate(rows):
        for g, v in (r.get(key) or {}).items():
            num = _number(v)
            if num is not None and str(g) in order:
                values[order.index(str(g)), col] = num
    if np.isnan(values).all():
        return None
    title = {"group_drift": "relative L2 distance from pretrained weights", "grad_norm": "relative gradient norm"}
    # the new head starts at zero, so its relative values are ~1e12 and would flatten every backbone group to the
    # bottom of a shared colour scale: the head gets a panel and a scale of its own
    head = groups[-1] if groups and groups[-1] in order and len(order) > 1 else None
    panels = [[g for g in order if g != head], [head]] if head is not None else [order]
    heights = [len(p) for p in panels]
    fig = Figure(figsize=(min(16.0, 3.5 + 0.35 * len(rows)), min(12.0, 2.0 + 0.32 * len(order))), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    # matplotlib.colormaps hands out a copy, so setting the 'bad' colour leaves the global registry untouched.
    cmap = colormaps["viridis"].with_extremes(bad="#f2f2f2")
    epochs = [int(r["epoch"]) for r in rows]
    step = max(1, math.ceil(len(epochs) / 30))
    spans = _phase_spans([{"epoch": i, "phase": r.get("phase")} for i, r in enumerate(rows)])
    for ax, names in zip(axes, panels, strict=True):
        block = values[[order.index(g) for g in names]]
        image = ax.imshow(
            np.ma.masked_invalid(block), aspect="auto", origin="lower", interpolation="nearest", cmap=cmap
        )
        fig.colorbar(image, ax=ax, shrink=0.9)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        _mark_phases(ax, spans, {}, label=False)
    axes[-1].set_xticks(range(0, len(epochs), step), [str(e) for e in epochs][::step], fontsize=8)
    axes[-1].set_xlabel("epoch")
    axes[0].set_title(
        title.get(key, key) + (" (the head on its own scale: it starts at zero)" if head is not None else ""),
        fontsize=10,
    )
    return _save(fig, path)


#: ``plot(metrics, path) -> Path | None``: a plot of :func:`thaw.report.metrics.compute_metrics` output.
MetricsPlot = Callable[[Mapping[str, Any], Path | str], Path | None]


_METRICS_PLOT_ARGS = """

    Args:
        metrics: Output of :func:`thaw.report.metrics.compute_metrics`.
        path: Where to write the PNG.

    Returns:
        The PNG path, or None when the metrics hold nothing this plot draws.
    """


def _metrics_plot(name: str, figure: Callable[[Mapping[str, Any]], Figure | None]) -> MetricsPlot:
    """The plot function ``name`` of a figure drawn from compute_metrics output.

    The plot writes ``figure(metrics)`` to ``path`` as PNG and returns the path, or returns None (and writes nothing)
    when ``figure`` finds nothing to draw. Its docstring is ``figure``'s plus the shared Args/Returns.
    """

    def plot(metrics: Mapping[str, Any], path: Path | str) -> Path | None:
        fig = figure(metrics)
        return None if fig is None else _save(fig, path)

    plot.__name__ = plot.__qualname__ = name
    plot.__doc__ = (figure.__doc__ or "").rstrip() + _METRICS_PLOT_ARGS
    return plot


def _confusion_figure(metrics: Mapping[str, Any]) -> Figure | None:
    """Confusion matrix (rows = true class), coloured by row-normalised rate and annotated with counts.

    Draws ``confusion_matrix`` (and ``classes``); nothing without a square confusion matrix.
    """
    raw = metrics.get("confusion_matrix")
    if not raw:
        return None
    cm = np.asarray(raw, dtype=float)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        return None
    n = cm.shape[0]
    classes = [str(c) for c in metrics.get("classes") or range(n)]
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(16.0, 2.5 + 0.45 * n)
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of true class")
    if n <= 50:
        ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    color = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return fig


def _reliability_figure(metrics: Mapping[str, Any]) -> Figure | None:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with the bin counts below.

    Draws ``reliability`` (and ``ece``); nothing without reliability bins that hold images.
    """
    rel = metrics.get("reliability")
    if not isinstance(rel, Mapping) or not rel.get("bin_edges") or not any(rel.get("count") or ()):
        return None
    edges = np.asarray(rel["bin_edges"], dtype=float)
    lefts, widths = edges[:-1], np.diff(edges)
    centers = lefts + widths / 2
    counts = np.asarray(rel["count"], dtype=float)
    acc = np.array([np.nan if a is None else a for a in rel["accuracy"]], dtype=float)
    conf = np.array([np.nan if c is None else c for c in rel["confidence"]], dtype=float)

    fig = Figure(figsize=(5.2, 5.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], "--", color="#888888", linewidth=1, label="perfect calibration")
    filled = ~np.isnan(acc)
    top.bar(
        lefts[filled],
        acc[filled],
        width=widths[filled],
        align="edge",
        color="#4c72b0",
        edgecolor="white",
        label="accuracy",
    )
    top.plot(centers[filled], conf[filled], "o", color="#dd8452", markersize=4, label="mean confidence")
    top.set_ylim(0, 1)
    top.set_xlim(0, 1)
    top.set_ylabel("accuracy")
    ece = _number(metrics.get("ece"))
    top.set_title(f"ECE = {ece:.4f}" if ece is not None else "reliability", fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(lefts, counts, width=widths, align="edge", color="#8c8c8c", edgecolor="white")
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("images")
    return fig


plot_confusion = _metrics_plot("plot_confusion", _confusion_figure)
plot_reliability = _metrics_plot("plot_reliability", _reliability_figure)
