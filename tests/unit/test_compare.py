"""thaw compare: the data-efficiency grid on tiny image folders and a tiny timm model."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import write_image_folder
from thaw.compare import SCRATCH, CompareCell, CompareResult, compare, compare_figure, summarize
from thaw.errors import ConfigError, DataError, ThawError

TINY: dict[str, Any] = {
    "model": "test_efficientnet",
    "random_init": True,
    "img_size": 32,
    "epochs": 1,
    "probe_epochs": 1,
}
CLASSES = {"red": 12, "green": 12, "blue": 12}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {
        "train": write_image_folder(root / "train", CLASSES, seed=0),
        "test": write_image_folder(root / "test", {k: 4 for k in CLASSES}, seed=2),
    }


@pytest.fixture(scope="module")
def grid(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> CompareResult:
    lines: list[str] = []
    result = compare(
        data["train"],
        test=data["test"],
        strategies=("linear", "last-k"),
        fractions=(0.5, 1.0),
        seeds=(0,),
        scratch=True,
        out=tmp_path_factory.mktemp("grid") / "cmp",
        progress=lines.append,
        **TINY,
    )
    assert any("[1/6] linear fraction 0.5 seed 0" in line for line in lines)
    return result


def test_compare_json_structure(grid: CompareResult) -> None:
    record = json.loads((grid.out / "compare.json").read_text())
    assert set(record) >= {"cells", "summary", "command", "options"}
    assert record["command"].startswith("thaw compare ")
    assert record["options"]["fit_options"]["img_size"] == 32
    cells = record["cells"]
    assert [(c["strategy"], c["fraction"]) for c in cells] == [
        ("linear", 0.5),
        ("last-k", 0.5),
        (SCRATCH, 0.5),
        ("linear", 1.0),
        ("last-k", 1.0),
        (SCRATCH, 1.0),
    ]
    for c in cells:
        assert c["error"] is None and c["seed"] == 0
        assert c["wall_seconds"] > 0
        summary = json.loads((Path(c["run_dir"]) / "summary.json").read_text())
        assert summary["test_accuracy"] == c["test_accuracy"]
        assert summary["best_val_accuracy"] == c["best_val_accuracy"]
        # the cell's accuracy is the run's own count over the 12 test images it predicted
        rows = [json.loads(line) for line in (Path(c["run_dir"]) / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == 12 and {r["split"] for r in rows} == {"test"}
        assert c["test_accuracy"] == pytest.approx(sum(r["label"] == r["pred"] for r in rows) / 12)
        assert summary["data"]["train"] + summary["data"]["val"] == c["train_images"]
    # subset sizes per fraction: round(12 * 0.5) = 6 and 12 images of each of the 3 classes
    assert [(c["images_per_class"], c["train_images"]) for c in cells[:3]] == [(6.0, 18)] * 3
    assert [(c["images_per_class"], c["train_images"]) for c in cells[3:]] == [(12.0, 36)] * 3
    assert set(record["summary"]) == {"linear", "last-k", SCRATCH}
    entry = record["summary"]["linear"]["0.5"]
    assert entry["n"] == 1 and entry["std"] is None and entry["mean"] == cells[0]["test_accuracy"]


def test_strategies_share_the_subset_and_split(grid: CompareResult) -> None:
    with open(grid.out / "data" / "train-f0.5-s0.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 18 and {r["label"] for r in rows} == set(CLASSES)
    assert all(Path(r["path"]).is_absolute() for r in rows)
    half = [c for c in grid.cells if c.fraction == 0.5]
    evaluated = [
        sorted(json.loads(line)["path"] for line in (Path(c.run_dir) / "predictions.jsonl").read_text().splitlines())
        for c in half
    ]
    assert evaluated[0] == evaluated[1] == evaluated[2]  # the same test set for every run
    audits = [json.loads((Path(c.run_dir) / "audit.json").read_text())["split"] for c in half]
    assert audits[0] == audits[1] == audits[2]  # the same train/val split of the subset
    scratch_cfg = (Path(half[2].run_dir) / "config.yaml").read_text()
    assert "strategy: full" in scratch_cfg and "random_init: true" in scratch_cfg


def test_plot_has_one_line_per_strategy(grid: CompareResult) -> None:
    assert grid.plot is not None and grid.plot.is_file() and grid.plot.stat().st_size > 1000
    ax = compare_figure(grid.cells).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"linear", "last-k", SCRATCH}
    assert lines[SCRATCH].get_linestyle() == "--" and lines["linear"].get_linestyle() == "-"
    assert np.asarray(lines["linear"].get_xdata()).tolist() == [6.0, 12.0]
    assert ax.get_xscale() == "log"


def test_format_table(grid: CompareResult) -> None:
    table = grid.format_table().splitlines()
    assert table[0].split()[0] == "strategy" and "0.5" in table[0] and "(6/class)" in table[0]
    assert [row.split()[0] for row in table[2:]] == ["linear", "last-k", SCRATCH]
    linear = grid.cells[0].test_accuracy
    assert linear is not None and f"{linear:.3f}" in table[2]


def test_summary_and_table_over_seeds() -> None:
    def cell(strategy: str, seed: int, acc: float | None, fraction: float = 0.5) -> CompareCell:
        n = round(12 * fraction)
        return CompareCell(strategy, fraction, seed, n, 3 * n, acc, acc, 1.0, "x", None if acc is not None else "boom")

    cells = [cell("linear", 0, 0.5), cell("linear", 1, 0.7), cell("full", 0, None), cell("full", 1, None)]
    cells += [cell("linear", 0, 0.8, 1.0), cell("linear", 1, 0.8, 1.0)]
    summary = summarize(cells)
    assert summary["linear"]["0.5"]["mean"] == pytest.approx(0.6)
    assert summary["linear"]["0.5"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert summary["linear"]["0.5"]["min"] == 0.5 and summary["linear"]["0.5"]["max"] == 0.7
    assert summary["full"]["0.5"]["n"] == 0 and summary["full"]["0.5"]["mean"] is None
    table = CompareResult(Path("."), cells, summary).format_table()
    assert "0.600 ± 0.141" in table and "failed" in table
    ax = compare_figure(cells).axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["linear"]  # a strategy with no result draws nothing
    assert np.asarray(ax.get_lines()[0].get_ydata()).tolist() == pytest.approx([0.6, 0.8])  # the mean over seeds
    (band,) = ax.collections  # min..max over seeds
    ys = np.asarray(band.get_paths()[0].vertices)[:, 1]
    assert min(ys) == pytest.approx(0.5) and max(ys) == pytest.approx(0.8)


def test_failed_cells_are_recorded_and_the_grid_goes_on(data: dict[str, Path], tmp_path: Path) -> None:
    # fraction 0.05 keeps one image per class: no validation image can be held out, so fit raises DataError
    result = compare(
        data["train"], test=data["test"], strategies=("linear",), fractions=(0.05, 1.0), out=tmp_path / "c", **TINY
    )
    failed, ok = result.cells
    assert failed.test_accuracy is None and failed.error and "validation" in failed.error
    assert failed.images_per_class == 1.0
    assert ok.error is None and ok.train_images == 36
    assert ok.test_accuracy == json.loads((Path(ok.run_dir) / "summary.json").read_text())["test_accuracy"]
    record = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert record["cells"][0]["error"] == failed.error
    with pytest.raises(ThawError, match="every run of the comparison failed"):
        compare(data["train"], test=data["test"], strategies=("linear",), fractions=(0.05,), out=tmp_path / "d", **TINY)


def test_mistakes_fail_before_training(data: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'lp-ft'"):
        compare(data["train"], test=data["test"], strategies=("lp_ft",), out=tmp_path / "a", **TINY)
    with pytest.raises(ConfigError, match=r"fraction 1\.5 is not in \(0, 1\]"):
        compare(data["train"], test=data["test"], fractions=(1.5,), out=tmp_path / "a", **TINY)
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        compare(data["train"], test=data["test"], out=tmp_path / "a", epoch=3)
    with pytest.raises(ConfigError, match="sets seed itself"):
        compare(data["train"], test=data["test"], out=tmp_path / "a", seed=1)
    with pytest.raises(ConfigError, match="needs test data"):
        compare(data["train"], test=None, out=tmp_path / "a", **TINY)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="does not exist"):
        compare(data["train"], test=tmp_path / "missing", out=tmp_path / "a", **TINY)
    assert not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--overwrite"):
        compare(data["train"], test=data["test"], strategies=("linear",), fractions=(1.0,), out=tmp_path / "b", **TINY)
    compare(
        data["train"],
        test=data["test"],
        strategies=("linear",),
        fractions=(1.0,),
        out=tmp_path / "b",
        overwrite=True,
        **TINY,
    )
    assert (tmp_path / "b" / "notes.txt").read_text() == "mine"  # overwrite removes only compare's own outputs
    assert (tmp_path / "b" / "compare.json").is_file()
