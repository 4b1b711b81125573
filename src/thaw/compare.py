"""Data-efficiency grid: test accuracy of several strategies as the amount of training data grows.

``compare`` draws seeded, stratified subsets of the training data (one per fraction and seed), writes each as a CSV
manifest, and runs ``thaw.api.fit`` once per strategy on it. Every strategy at the same (fraction, seed) sees exactly
the same images and the same train/validation split, so the differences between lines are the strategies'. The grid
ends in ``compare.json`` (one cell per run, plus mean/std per strategy and fraction) and ``compare.png`` (test accuracy
against labelled images per class, log x axis).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from thaw.config import STRATEGIES, FitConfig
from thaw.data.sources import scan
from thaw.data.split import subsample_per_class
from thaw.data.types import Sample
from thaw.errors import ConfigError, DataError, ThawError
from thaw.jsonio import atomic_write_text, write_json
from thaw.names import did_you_mean
from thaw.textfmt import fixed, table

__all__ = ["compare", "CompareResult", "CompareCell", "compare_figure", "plot_compare", "summarize", "SCRATCH"]

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: Label of the from-scratch baseline (strategy "full" from random initialisation).
SCRATCH = "scratch"

# fit() arguments that compare() sets itself for every cell.
_RESERVED = ("train", "test", "out", "seed", "strategy", "config", "resume", "overwrite", "progress", "on_step")
# What compare() owns inside ``out``; only these are removed by overwrite=True.
_OWNED = ("data", "runs", "compare.json", "compare.png")
_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


# ---------------------------------------------------------------------------------------------------- results
@dataclass
class CompareCell:
    """One run of the grid: a strategy trained on one subset (fraction, seed).

    Attributes:
        strategy: Strategy name, or ``"scratch"`` for the from-scratch baseline.
        fraction: Share of each class of the training data in the subset.
        seed: Seed of the subset draw, the validation split and the run.
        images_per_class: Mean over classes of the subset's images per class (validation share included: the
            labelled images a user would need).
        train_images: Images in the subset (before fit holds out validation images).
        test_accuracy: Accuracy of the best weights on the test data; None when the run failed.
        best_val_accuracy: Best validation accuracy of the run; None when the run failed.
        wall_seconds: Wall time of the run (failed runs included).
        run_dir: The run directory.
        error: The ThawError message of a failed run, else None.
    """

    strategy: str
    fraction: float
    seed: int
    images_per_class: float
    train_images: int
    test_accuracy: float | None
    best_val_accuracy: float | None
    wall_seconds: float
    run_dir: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CompareResult:
    """What ``compare`` returns; ``compare.json`` holds the same numbers.

    Attributes:
        out: The comparison folder.
        cells: One entry per (seed, fraction, strategy), in the order they ran.
        summary: ``summary[strategy][fraction]`` = ``{"mean", "std", "n", "images_per_class"}`` of test accuracy
            over seeds (fraction keys as written by ``format(fraction, "g")``; std is None below two seeds).
        plot: Path of ``compare.png``.
    """

    out: Path
    cells: list[CompareCell]
    summary: dict[str, dict[str, dict[str, Any]]]
    plot: Path | None = None
    excluded: list[str] = field(default_factory=list)

    def format_table(self) -> str:
        """Test accuracy as a text table: one row per strategy, one column per fraction, "mean ± std".

        A single seed shows the mean alone; a cell whose runs all failed shows "failed".
        """
        fractions = sorted({c.fraction for c in self.cells})
        grid = _grid(self.cells)
        per_class = {f: _mean([c.images_per_class for c in self.cells if c.fraction == f]) for f in fractions}
        header = ["strategy"] + [f"{f:g} ({per_class[f]:.3g}/class)" for f in fractions]
        rows = []
        for s, ran in grid.items():
            row = [s]
            for f in fractions:
                entry = self.summary.get(s, {}).get(_key(f))
                if entry is None or not entry["n"]:
                    row.append("failed" if f in ran else "-")
                elif entry["std"] is None:
                    row.append(fixed(entry["mean"]))
                else:
                    row.append(f"{fixed(entry['mean'])} ± {fixed(entry['std'])}")
            rows.append(row)
        return table(header, rows)


# ---------------------------------------------------------------------------------------------------- helpers
def _key(fraction: float) -> str:
    return format(fraction, "g")


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values)) if values else math.nan


def _grid(cells: Iterable[CompareCell]) -> dict[str, dict[float, list[CompareCell]]]:
    """``grid[strategy][fraction]`` = the cells of that strategy and fraction, in run order.

    Strategies keep the order in which they first ran; fractions are ascending.
    """
    grid: dict[str, dict[float, list[CompareCell]]] = {}
    for c in cells:
        grid.setdefault(c.strategy, {}).setdefault(c.fraction, []).append(c)
    return {s: dict(sorted(by_fraction.items())) for s, by_fraction in grid.items()}


def _strategy_problem(s: Any) -> str | None:
    if s in STRATEGIES:
        return None
    return f"unknown strategy '{s}'{did_you_mean(s, STRATEGIES)}: use one of {', '.join(STRATEGIES)}"


def _fraction_problem(f: Any) -> str | None:
    if isinstance(f, bool) or not isinstance(f, int | float) or not 0.0 < f <= 1.0:
        return f"data fraction {f!r} is not in (0, 1]: e.g. use 0.25 for a quarter of each class"
    return None


def _seed_problem(sd: Any) -> str | None:
    if isinstance(sd, bool) or not isinstance(sd, int) or sd < 0:
        return f"seed {sd!r} is not a non-negative integer"
    return None


def _axis_problems(values: Sequence[Any], what: str, empty: str, problem: Callable[[Any], str | None]) -> list[str]:
    """Problems of one axis of the grid: none given, a bad value (``problem``), a value listed twice."""
    problems = [] if values else [empty]
    problems += [p for p in map(problem, values) if p is not None]
    if len(set(values)) != len(values):
        problems.append(f"{what} are listed twice: {', '.join(map(str, values))}")
    return problems


def _check_grid(strategies: Sequence[str], fractions: Sequence[float], seeds: Sequence[int]) -> None:
    problems = [
        *_axis_problems(
            strategies, "strategies", "no strategies given: name at least one, e.g. linear,lp-ft", _strategy_problem
        ),
        *_axis_problems(fractions, "fractions", "no data fractions given: e.g. 0.1,0.25,0.5,1", _fraction_problem),
        *_axis_problems(seeds, "seeds", "no seeds given: e.g. 0 or 0,1,2", _seed_problem),
    ]
    if problems:
        raise ConfigError("invalid comparison: " + "; ".join(problems))


def _prepare_out(out: Path, overwrite: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder: choose another --out")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} already exists and is not empty: choose another --out or pass --overwrite")
        for name in _OWNED:  # only what compare() writes: other files a user keeps there are left alone
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        (out / "data").mkdir(parents=True, exist_ok=True)
        (out / "runs").mkdir(exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write to {out}: {exc.strerror or exc}; choose another --out") from exc
    return out


def _manifest_safe(path: str, label: str) -> bool:
    """Whether a CSV manifest can carry this sample unchanged (scan strips cells and reads UTF-8)."""
    try:
        path.encode("utf-8")
        label.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8 (os.fsdecode surrogates)
        return False
    return path == path.strip() and label == label.strip()


def _write_manifest(path: Path, samples: Iterable[Sample], classes: Sequence[str]) -> None:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["path", "label"])
    for s in samples:
        writer.writerow([os.path.abspath(s.path), classes[s.label]])
    atomic_write_text(path, buf.getvalue())


def summarize(cells: Sequence[CompareCell]) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean, sample standard deviation and count of test accuracy over seeds, per strategy and fraction.

    Failed runs (and runs without a test accuracy) are left out of ``n``; ``std`` is None below two runs.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for s, by_fraction in _grid(cells).items():
        out[s] = {}
        for f, group in by_fraction.items():
            accs = [c.test_accuracy for c in group if c.test_accuracy is not None]
            out[s][_key(f)] = {
                "mean": _mean(accs) if accs else None,
                "std": statistics.stdev(accs) if len(accs) >= 2 else None,
                "min": min(accs) if accs else None,
                "max": max(accs) if accs else None,
                "n": len(accs),
                "images_per_class": _mean([c.images_per_class for c in group]),
            }
    return out


def _command(
    train: str,
    test: str,
    strategies: Sequence[str],
    fractions: Sequence[float],
    seeds: Sequence[int],
    scratch: bool,
    out: Path,
    fit_options: Mapping[str, Any],
) -> str:
    """The equivalent ``thaw compare`` command line (recorded for reproducibility)."""
    parts = [
        "thaw",
        "compare",
        train,
        "--test",
        test,
        "--strategies",
        ",".join(strategies),
        "--fractions",
        ",".join(_key(f) for f in fractions),
        "--seeds",
        ",".join(map(str, seeds)),
    ]
    if scratch:
        parts.append("--scratch")
    parts += ["--out", str(out)]
    for name, value in fit_options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif value is not False and value is not None:
            parts += [flag, str(value)]
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------------- plot
def compare_figure(cells: Sequence[CompareCell], title: str | None = None) -> Figure:
    """Test accuracy against training images per class (log x), one line per strategy.

    Each line is the mean over seeds; with several seeds a shaded band spans their min..max. The from-scratch
    baseline is drawn dashed. Failed runs are left out.

    Args:
        cells: The grid's cells.
        title: Optional axes title.

    Returns:
        The figure (Agg canvas attached; save it with ``fig.savefig``).
    """
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    drawn: set[float] = set()
    for i, (s, by_fraction) in enumerate(_grid(cells).items()):
        xs: list[float] = []
        means: list[float] = []
        lows: list[float] = []
        highs: list[float] = []
        for group in by_fraction.values():
            accs = [c.test_accuracy for c in group if c.test_accuracy is not None]
            if not accs:
                continue
            xs.append(_mean([c.images_per_class for c in group]))
            means.append(_mean(accs))
            lows.append(min(accs))
            highs.append(max(accs))
        if not xs:
            continue
        color = "#333333" if s == SCRATCH else _COLORS[i % len(_COLORS)]
        style = "--" if s == SCRATCH else "-"
        drawn.update(xs)
        ax.plot(xs, means, linestyle=style, marker="o", markersize=4, color=color, label=s)
        if any(h > lo for lo, h in zip(lows, highs, strict=True)):
            ax.fill_between(xs, lows, highs, color=color, alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    ticks = sorted(drawn)
    if ticks:  # label the measured sizes themselves: log-axis defaults read "2x10^1" for 20
        ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training images per class (log scale)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_compare(cells: Sequence[CompareCell], path: Path | str, title: str | None = None) -> Path | None:
    """Write ``compare_figure(cells)`` as a PNG; None when no run has a test accuracy."""
    if not any(c.test_accuracy is not None for c in cells):
        return None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    compare_figure(cells, title).savefig(out, format="png", dpi=100)
    logger.debug("wrote plot %s", out)
    return out


# ---------------------------------------------------------------------------------------------------- compare
def compare(
    train: str | os.PathLike[str],
    *,
    test: str | os.PathLike[str],
    strategies: Sequence[str] = ("linear", "last-k", "full", "auto"),
    fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
    seeds: Sequence[int] = (0,),
    scratch: bool = False,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    command: str | None = None,
    **fit_options: Any,
) -> CompareResult:
    """Run a data-efficiency grid: every strategy on stratified subsets of the training data.

    For each seed and fraction a subset keeps ``round(fraction * n)`` images of each class (at least one), drawn
    with that seed, and is written to ``OUT/data/train-f<fraction>-s<seed>.csv``; each strategy is then trained on
    it with ``thaw.api.fit`` into ``OUT/runs/<strategy>-f<fraction>-s<seed>``. All strategies of one (fraction,
    seed) share the subset and fit's validation split of it (same seed). A run that fails with a ThawError is
    recorded with its message and the grid goes on. ``compare.json`` is rewritten after every run, so an
    interrupted grid keeps what finished.

    Args:
        train: Training data (class-per-subfolder folder or CSV manifest).
        test: Test data, the same for every run (the measure on the y axis).
        strategies: Strategy names (see ``thaw.config.STRATEGIES``).
        fractions: Shares of each class to train on, each in (0, 1].
        seeds: Subset/split/training seeds; several seeds give mean ± std.
        scratch: Add a from-scratch baseline ("scratch": strategy ``full`` from random initialisation).
        out: The comparison folder; default ``runs/compare-<timestamp>``.
        overwrite: Replace an earlier comparison in a non-empty ``out`` (only its data/, runs/, compare.json and
            compare.png are removed).
        progress: Called with one line as each run starts and ends; default: this module's logger at INFO.
            fit's per-epoch lines go to the logger at DEBUG.
        command: The command line to record in compare.json; default: the equivalent ``thaw compare`` line.
        **fit_options: Any other FitConfig field, applied to every run (e.g. ``img_size=64, epochs=3``).

    Returns:
        CompareResult with the cells, the summary and the plot path.

    Raises:
        ConfigError: invalid grid or fit options, or an unusable ``out``.
        DataError: unusable training or test data.
        ThawError: every run of the grid failed (the first failure's message is included).

    Example:
        >>> from thaw.data.sample import sample_data_dir
        >>> d = sample_data_dir()
        >>> r = compare(d / "train", test=d / "test", strategies=("linear", "lp-ft"), fractions=(0.5, 1.0),
        ...             img_size=64, epochs=3)  # doctest: +SKIP
        >>> print(r.format_table())  # doctest: +SKIP
    """
    from thaw.api import fit

    if test is None or not str(test):
        raise ConfigError(
            "compare needs test data (--test DIR): the grid compares runs on one fixed test set, while each run's "
            "validation images come from its own subset"
        )
    strategies, fractions, seeds = tuple(strategies), tuple(fractions), tuple(seeds)
    _check_grid(strategies, fractions, seeds)
    reserved = sorted(set(fit_options) & set(_RESERVED))
    if reserved:
        raise ConfigError(
            f"compare() sets {', '.join(reserved)} itself for every run: use its own arguments "
            "(train, test, strategies, seeds, out) instead"
        )
    # Validate the fit options once, before any training (a typo should not surface after the first run).
    for s in strategies:
        FitConfig.from_dict({"train": str(train), "test": str(test), **fit_options, "strategy": s})
    say = progress or logger.info

    train_scan = scan(train)
    classes = train_scan.classes
    scan(test, classes)  # fail now on a missing test folder or unknown classes, not in every run
    usable = [s for s in train_scan.samples if _manifest_safe(s.path, classes[s.label])]
    excluded = [s.path for s in train_scan.samples if not _manifest_safe(s.path, classes[s.label])]
    if excluded:
        logger.warning(
            "%d training file(s) have names a CSV manifest cannot carry (not UTF-8, or leading/trailing spaces) and "
            "are left out of the comparison, first: %r; rename them to include them",
            len(excluded),
            excluded[0],
        )
    if not usable:
        raise DataError(f"no training images of {train} can be listed in a manifest: rename the files (UTF-8 names)")
    labels = [s.label for s in usable]

    out_dir = _prepare_out(
        Path(out) if out is not None else Path("runs") / f"compare-{datetime.now().strftime('%Y%m%d-%H%M%S')}",
        overwrite,
    )
    runs = [*strategies, *([SCRATCH] if scratch else [])]
    options = {
        "train": str(train),
        "test": str(test),
        "strategies": list(strategies),
        "fractions": list(fractions),
        "seeds": list(seeds),
        "scratch": scratch,
        "fit_options": dict(fit_options),
    }
    record = {
        "command": command
        or _command(str(train), str(test), strategies, fractions, seeds, scratch, out_dir, fit_options),
        "options": options,
        "classes": classes,
        "excluded": excluded,
    }
    cells: list[CompareCell] = []
    failures: list[ThawError] = []
    total = len(seeds) * len(fractions) * len(runs)

    def write() -> None:
        write_json(
            out_dir / "compare.json", {**record, "cells": [c.to_dict() for c in cells], "summary": summarize(cells)}
        )

    for seed in seeds:
        for fraction in fractions:
            idx = list(range(len(usable))) if fraction >= 1.0 else subsample_per_class(labels, fraction, seed)
            subset = [usable[i] for i in idx]
            manifest = out_dir / "data" / f"train-f{_key(fraction)}-s{seed}.csv"
            _write_manifest(manifest, subset, classes)
            counts = [sum(1 for s in subset if s.label == c) for c in range(len(classes))]
            per_class = _mean([n for n in counts if n > 0])
            for name in runs:
                run_dir = out_dir / "runs" / f"{name}-f{_key(fraction)}-s{seed}"
                tag = f"[{len(cells) + 1}/{total}] {name} fraction {_key(fraction)} seed {seed}"
                say(f"{tag}: {len(subset)} images ({per_class:.3g} per class)")
                opts: dict[str, Any] = dict(fit_options)
                if name == SCRATCH:
                    opts.update(strategy="full", random_init=True, weights=None, pretrained=False)
                else:
                    opts["strategy"] = name

                def fit_progress(line: str, _tag: str = tag) -> None:
                    logger.debug("%s: %s", _tag, line)

                started = time.monotonic()
                cell = CompareCell(name, float(fraction), seed, per_class, len(subset), None, None, 0.0, str(run_dir))
                try:
                    result = fit(
                        manifest,
                        test=str(test),
                        out=str(run_dir),
                        seed=seed,
                        overwrite=True,
                        progress=fit_progress,
                        **opts,
                    )
                except ThawError as exc:
                    failures.append(exc)
                    cell = replace(cell, wall_seconds=time.monotonic() - started, error=str(exc))
                    logger.warning("%s failed: %s", tag, exc)
                    if progress is not None:
                        progress(f"{tag}: failed: {exc}")
                else:
                    cell = replace(
                        cell,
                        test_accuracy=result.test_accuracy,
                        best_val_accuracy=result.best_val_accuracy,
                        wall_seconds=time.monotonic() - started,
                    )
                    say(f"{tag}: test accuracy {result.test_accuracy or 0.0:.4f} in {cell.wall_seconds:.1f} s")
                cells.append(cell)
                write()

    if len(failures) == len(cells):
        raise ThawError(f"every run of the comparison failed ({len(cells)}); the first: {failures[0]}") from failures[0]
    plot = plot_compare(cells, out_dir / "compare.png", title=f"{len(classes)} classes, {len(seeds)} seed(s)")
    comparison = CompareResult(out=out_dir, cells=cells, summary=summarize(cells), plot=plot, excluded=excluded)
    say(f"comparison written to {out_dir / 'compare.json'}")
    return comparison
