from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import thaw.report.plots
from thaw.report.metrics import compute_metrics
from thaw.report.plots import (
    group_order,
    plot_confusion,
    plot_curves,
    plot_heatmap,
    plot_reliability,
    plot_timeline,
)

from .conftest import CLASSES, GROUPS, PHASES, metrics_rows

PHASE_COLORS = [(0x4C, 0x72, 0xB0), (0xDD, 0x84, 0x52), (0x55, 0xA8, 0x68)]
FROZEN = (0xEE, 0xF1, 0xF5)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def count_color(arr: np.ndarray, rgb: tuple[int, int, int]) -> int:
    return int(np.all(arr == np.array(rgb, dtype=np.uint8), axis=-1).sum())


def summary() -> dict[str, Any]:
    return {"groups": [{"name": g, "num_params": n} for g, n in GROUPS], "phases": PHASES}


def test_curves_written_and_none_without_values(tmp_path: Path) -> None:
    out = plot_curves(metrics_rows(), tmp_path / "sub" / "curves.png", phase_names={0: "linear probe"})
    assert out == tmp_path / "sub" / "curves.png"
    arr = pixels(out)
    assert arr.shape[1] > 600 and arr.std() > 10
    assert plot_curves([], tmp_path / "none.png") is None
    assert plot_curves([{"epoch": 1, "phase": 0}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    # An old run with only validation accuracy still plots.
    assert plot_curves([{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.6}], tmp_path / "v.png")


def test_timeline_colours_each_phase_and_leaves_frozen_cells_pale(tmp_path: Path) -> None:
    out = plot_timeline(summary(), metrics_rows(), tmp_path / "timeline.png")
    assert out is not None
    arr = pixels(out)
    for color in [*PHASE_COLORS, FROZEN]:
        assert count_color(arr, color) > 100, color
    # the full phase (3 epochs x 5 groups) covers more area than the linear probe (3 epochs x 1 group)
    assert count_color(arr, PHASE_COLORS[2]) > 3 * count_color(arr, PHASE_COLORS[0])


def test_timeline_from_summary_phases_alone(tmp_path: Path) -> None:
    out = plot_timeline(summary(), [], tmp_path / "timeline.png")
    assert out is not None and count_color(pixels(out), PHASE_COLORS[1]) > 100
    assert plot_timeline(None, [], tmp_path / "none.png") is None
    assert plot_timeline({"phases": []}, [], tmp_path / "none.png") is None


def test_group_order_prefers_summary_groups_then_first_appearance() -> None:
    assert group_order(summary(), metrics_rows()) == [g for g, _ in GROUPS]
    rows = [{"epoch": 1, "trainable_groups": ["head"]}, {"epoch": 2, "trainable_groups": ["s2", "head"]}]
    assert group_order(None, rows) == ["head", "s2"]


def test_heatmaps_for_drift_and_grad_norm(tmp_path: Path) -> None:
    rows = metrics_rows()
    for key in ("group_drift", "grad_norm"):
        out = plot_heatmap(rows, key, tmp_path / f"{key}.png", groups=[g for g, _ in GROUPS])
        assert out is not None and pixels(out).std() > 10
    assert plot_heatmap(rows, "missing_key", tmp_path / "none.png") is None
    assert plot_heatmap([{"epoch": 1, "grad_norm": {"head": float("nan")}}], "grad_norm", tmp_path / "n.png") is None


def test_confusion_and_reliability(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=50)
    m = compute_metrics(rng.integers(0, 3, 50), probs, CLASSES)
    labels = np.arange(30) % 3
    perfect = compute_metrics(labels, np.eye(3)[labels], CLASSES)
    random_cm = plot_confusion(m, tmp_path / "cm.png")
    perfect_cm = plot_confusion(perfect, tmp_path / "perfect.png")
    assert random_cm == tmp_path / "cm.png" and perfect_cm == tmp_path / "perfect.png"
    # Blues at rate 1.0: the three diagonal cells of perfect predictions; random ones reach it only in the colour bar
    darkest = (0x08, 0x30, 0x6B)
    assert count_color(pixels(perfect_cm), darkest) > count_color(pixels(random_cm), darkest) + 1000
    rel = plot_reliability(m, tmp_path / "rel.png")
    assert rel == tmp_path / "rel.png" and pixels(rel).std() > 10
    assert plot_confusion({}, tmp_path / "none.png") is None
    assert plot_reliability({}, tmp_path / "none.png") is None
    # Many classes: no per-cell annotations, still a valid image.
    big = compute_metrics(rng.integers(0, 60, 300), rng.dirichlet(np.ones(60), size=300), [f"c{i}" for i in range(60)])
    big_cm = plot_confusion(big, tmp_path / "big.png")
    assert big_cm == tmp_path / "big.png" and pixels(big_cm).std() > 10


def test_plotting_does_not_touch_pyplot(tmp_path: Path) -> None:
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps(metrics_rows()), encoding="utf-8")
    code = (
        "import sys, json\n"
        "from thaw.report.plots import plot_curves\n"
        f"plot_curves(json.loads(open({str(rows_file)!r}).read()), {str(tmp_path / 'c.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    # The folder holding the thaw package under test, whether it is the source tree or an installed copy.
    package_root = Path(thaw.report.plots.__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package_root), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, env=env, timeout=120)
    assert (tmp_path / "c.png").is_file()


def test_repeated_epochs_after_resume_keep_the_last_row(tmp_path: Path) -> None:
    rows = metrics_rows()[:4]
    rows.append({**rows[3], "trainable_groups": ["head"], "phase": 0})  # epoch 4 rewritten after a resume
    out = plot_timeline(summary(), rows, tmp_path / "timeline.png")
    assert out is not None
    arr = pixels(out)
    assert count_color(arr, PHASE_COLORS[1]) == 0  # the replaced epoch-4 row (phase 1) is gone
    assert count_color(arr, PHASE_COLORS[0]) > 100
