"""The suite's task builders, runner and summary: split rules, real images on disk, rows written, oracle chosen."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from bench.summarize import acceptance, auto_table, backbones, exploration, load, report, table
from bench.tasks import OPENCV_DIGITS, SUITE, TASKS, TUXPAINT_STAMPS, counts, draw_pool, materialize
from PIL import Image

from bench import suite


def test_pool_split_is_seeded_stratified_and_disjoint() -> None:
    labels = np.repeat(np.arange(3), [10, 12, 9])
    a = draw_pool(labels, 0, train=3, val=2, test=None)
    assert [len(a[s]) for s in ("train", "val", "test")] == [9, 6, 31 - 15]
    assert set(a["train"]).isdisjoint(a["val"]) and set(a["val"]).isdisjoint(a["test"])
    assert set(a["train"]) | set(a["val"]) | set(a["test"]) == set(range(31))  # test = all the rest
    for split, per_class in (("train", 3), ("val", 2)):
        assert np.bincount(labels[a[split]], minlength=3).tolist() == [per_class] * 3
    # The rule: per class, a fresh default_rng(seed) permutes that class's indices.
    assert a["train"][:3] == np.random.default_rng(0).permutation(np.arange(10))[:3].tolist()
    assert draw_pool(labels, 0, 3, 2, None) == a and draw_pool(labels, 1, 3, 2, None) != a
    capped = draw_pool(labels, 0, 3, 2, 4)
    assert np.bincount(labels[capped["test"]]).tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="class 2 has 9 images"):
        draw_pool(labels, 0, train=5, val=4, test=1)


def test_registry_covers_the_protocol() -> None:
    assert len(SUITE) >= 6 and {"fashion10", "fashion100", "sample"} <= set(SUITE)
    assert TASKS["sample"].img_size == 64 and TASKS["fashion100"].img_size == 96
    assert any(TASKS[t].train < 20 for t in SUITE if t.startswith(("digits", "stamps")))
    assert not TASKS["digits"].flip and not TASKS["cvdigits"].flip and TASKS["stamps"].flip
    assert all(not TASKS[t].benchmark for t in ("tiny", "digits-tiny"))


def test_digits_task_holds_real_sklearn_digits(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    task_dir = materialize("digits", 0, tmp_path)
    c = counts(task_dir)
    assert c["train"] == {str(d): 10 for d in range(10)} and c["val"] == {str(d): 10 for d in range(10)}
    assert sum(c["test"].values()) == 1797 - 200
    manifest = json.loads((task_dir / "manifest.json").read_text())
    first = manifest["ids"]["train"][0]
    img = np.asarray(Image.open(task_dir / "train" / "0" / f"{first}.png"))
    expected = np.round(load_digits().images[int(first)] * 255 / 16).astype(np.uint8)
    assert img.shape == (8, 8) and (img == expected).all()  # the package's pixels, scaled, nothing generated
    stamp = (task_dir / "manifest.json").stat().st_mtime_ns
    assert materialize("digits", 0, tmp_path) == task_dir
    assert (task_dir / "manifest.json").stat().st_mtime_ns == stamp  # complete folders are not rewritten


def test_sample_task_is_the_embedded_split(tmp_path: Path) -> None:
    c = counts(materialize("sample", 2, tmp_path))
    assert [sum(c[s].values()) for s in ("train", "val", "test")] == [400, 200, 300]


@pytest.mark.skipif(not OPENCV_DIGITS.is_file(), reason="needs Debian's opencv-doc (apt-get install opencv-doc)")
def test_cvdigits_task_cuts_the_opencv_sheet(tmp_path: Path) -> None:
    task_dir = materialize("cvdigits", 0, tmp_path)
    c = counts(task_dir)
    assert [sum(c[s].values()) for s in ("train", "val", "test")] == [300, 100, 1000]
    name = sorted((task_dir / "train" / "7").glob("*.png"))[0]
    r, col = int(name.stem[1:3]), int(name.stem[4:6])
    assert r // 5 == 7  # five sheet rows per digit
    sheet = np.asarray(Image.open(OPENCV_DIGITS).convert("L"))
    assert (np.asarray(Image.open(name)) == sheet[20 * r : 20 * r + 20, 20 * col : 20 * col + 20]).all()


@pytest.mark.skipif(not TUXPAINT_STAMPS.is_dir(), reason="needs Debian's tuxpaint-stamps-default (apt-get install ...)")
def test_stamps_task_is_colour_photographs_on_white(tmp_path: Path) -> None:
    task_dir = materialize("stamps", 0, tmp_path)
    c = counts(task_dir)
    assert c["train"] == dict.fromkeys(("birds", "flowers", "fruit", "mammals", "vegetables"), 8)
    assert all(n >= 1 for n in c["test"].values())
    assert not any("cartoon" in p.name for p in task_dir.rglob("*.png"))
    img = np.asarray(Image.open(next((task_dir / "train" / "fruit").glob("*.png"))))
    assert img.ndim == 3 and img.shape[2] == 3  # RGB, alpha composited
    assert (img[0, 0] == 255).all() or (img[-1, -1] == 255).all()  # the cut-out's surroundings are white


def test_suite_dry_run_prints_the_user_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite.main(
        ["--tasks", "digits-tiny", "--seeds", "0", "--methods", "thaw_auto,thaw_full,tutorial", "--budget", "180"]
        + ["--root", str(tmp_path / "data"), "--out", str(tmp_path / "r.jsonl"), "--dry-run"]
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and not (tmp_path / "r.jsonl").exists()
    auto, full, tutorial = lines
    assert "--strategy auto --time-budget 180s --img-size 32 --seed 0 --out " in auto
    assert " fit " in auto and "--epochs" not in auto  # auto: nothing but what a user must say
    assert "--strategy full --epochs 1000 --time-budget 180s" in full
    assert tutorial.split()[1:5] == ["-m", "bench.suite", "one", "tutorial"] and "--no-flip" in tutorial


def test_suite_resume_runs_only_the_missing_cells(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.jsonl"
    rows = [
        {"task": "digits-tiny", "seed": 0, "method": "thaw_full", "status": "ok", "budget_seconds": 180.0},
        {"task": "digits-tiny", "seed": 0, "method": "tutorial", "status": "ok", "budget_seconds": 60.0},
        {"task": "digits-tiny", "seed": 0, "method": "thaw_auto", "status": "failed", "budget_seconds": 180.0},
        {"task": "digits-tiny", "seed": 1, "method": "thaw_auto", "status": "ok", "budget_seconds": 180.0},
    ]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert suite.done_cells(out, 180.0) == {("digits-tiny", 0, "thaw_full"), ("digits-tiny", 1, "thaw_auto")}
    argv = ["--tasks", "digits-tiny", "--seeds", "0,1", "--methods", "thaw_auto,thaw_full,tutorial", "--budget", "180"]
    argv += ["--root", str(tmp_path / "data"), "--out", str(out), "--dry-run"]
    suite.main(argv + ["--resume"])
    lines = capsys.readouterr().out.splitlines()
    # seed 0: the failed auto and the tutorial row at another budget run again; seed 1: all but auto.
    assert len(lines) == 4
    assert sum("--strategy auto" in line for line in lines) == 1
    assert sum("--strategy full" in line for line in lines) == 1
    assert sum(" one tutorial " in line for line in lines) == 2
    suite.main(argv)  # without --resume every cell is planned again
    assert len(capsys.readouterr().out.splitlines()) == 6


def test_suite_records_skipped_and_failed_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite, "thaw_fit_help", lambda: "usage: thaw fit ... (no such flag here)")
    # A thaw that exits 2 with a one-line error, as the CLI does for a rejected option.
    fake = [sys.executable, "-c", "import sys; print('thaw: error: bad option', file=sys.stderr); sys.exit(2)"]
    monkeypatch.setattr(suite, "thaw_command", lambda: fake)
    out = tmp_path / "r.jsonl"
    suite.main(
        ["--tasks", "digits-tiny", "--seeds", "0", "--methods", "thaw_auto_refit,thaw_linear", "--budget", "5"]
        + ["--root", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--out", str(out)]
    )
    skipped, failed = (json.loads(line) for line in out.read_text().splitlines())
    assert skipped["status"] == "skipped" and "--refit" in skipped["notes"]
    assert failed["status"] == "failed" and failed["returncode"] == 2 and "bad option" in failed["notes"]
    for row in (skipped, failed):
        assert row["task"] == "digits-tiny" and row["machine"]["cores"] >= 1 and row["command"].startswith("python")
    assert "failed: thaw: error: bad option" in report(load([out]))


@pytest.mark.slow
def test_suite_runs_thaw_cli_and_a_baseline_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    suite.main(
        ["--tasks", "digits-tiny", "--seeds", "0", "--methods", "thaw_linear,linear_probe", "--budget", "60"]
        + ["--root", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--out", str(out)]
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["method"] for r in rows] == ["thaw_linear", "linear_probe"]
    for r in rows:
        assert r["status"] == "ok", r.get("notes")
        assert 0.0 <= r["test_acc_best_val"] <= 1.0 and r["wall_seconds"] > 0
        assert r["budget_share"] == pytest.approx(r["wall_seconds"] / 60)
        assert {"cpu", "cores", "torch", "torch_threads"} <= r["machine"].keys()
    thaw_row = rows[0]
    assert thaw_row["run_command"].startswith("thaw fit ") or " -m thaw fit " in thaw_row["run_command"]
    assert thaw_row["summary"]["strategy"] == "linear" and thaw_row["steps"] > 0


def test_tutorial_loop_follows_the_protocol(tmp_path: Path) -> None:
    from bench.baselines import DecodedFolder, tutorial

    task_dir = materialize("digits-tiny", 0, tmp_path)
    ds = DecodedFolder(task_dir / "train", 32, (0.5,) * 3, (0.5,) * 3, train=True, flip=False)
    assert ds.images.shape == (30, 3, 32, 32) and ds.images.dtype.is_floating_point is False  # decoded once
    steps = [type(t).__name__ for t in ds.augment.transforms]  # type: ignore[union-attr]
    assert steps == ["RandomCrop"]  # pad-and-crop, no flip for digits
    flip = DecodedFolder(task_dir / "train", 32, (0.5,) * 3, (0.5,) * 3, train=True, flip=True)
    assert [type(t).__name__ for t in flip.augment.transforms] == ["RandomCrop", "RandomHorizontalFlip"]  # type: ignore[union-attr]
    res = tutorial(task_dir, budget=4, size=32, seed=0, flip=False)
    assert res["method"] == "tutorial" and res["task"] == "digits-tiny"
    assert res["epochs"] >= 1 and res["steps"] == res["epochs"] * 1  # 30 images, batch 32: one step per epoch
    for key in ("test_acc_best_val", "test_acc_last", "best_val_acc"):
        assert 0.0 <= res[key] <= 1.0
    assert res["budget_share"] == pytest.approx(res["wall_seconds"] / 4)
    json.dumps(res)


def _row(task: str, method: str, seed: int, acc: float, **extra: object) -> dict[str, object]:
    return {
        "task": task,
        "method": method,
        "seed": seed,
        "status": "ok",
        "test_acc_best_val": acc,
        "test_acc_last": None,
        "epochs": 10,
        "steps": 100,
        "wall_seconds": 170.0,
        "budget_seconds": 180.0,
        "train_images_per_second": 100.0,
        **extra,
    }


def test_summary_oracle_acceptance_and_exploration(tmp_path: Path) -> None:
    phases = [
        {"index": 0, "name": "linear-probe", "epochs": 20, "seconds": 10.0, "best_val_accuracy": 0.7},
        {"index": 1, "name": "full", "epochs": 8, "seconds": 150.0, "best_val_accuracy": 0.8},
    ]
    summary = {"phases": phases, "best_phase": 1, "decisions": [{"decision": "full", "reason": "r"}]}
    rows = [
        *(_row("t", "thaw_full", s, a) for s, a in ((0, 0.80), (1, 0.82), (2, 0.84))),
        *(_row("t", "thaw_linear", s, a) for s, a in ((0, 0.70), (1, 0.71), (2, 0.72))),
        *(_row("t", "tutorial", s, a) for s, a in ((0, 0.79), (1, 0.80), (2, 0.81))),
        *(_row("t", "thaw_auto", s, a, summary=summary) for s, a in ((0, 0.80), (1, 0.81), (2, 0.82))),
        {"task": "t", "method": "thaw_auto_refit", "seed": 0, "status": "skipped", "notes": "no --refit"},
    ]
    f = tmp_path / "r.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    loaded = load([f])
    lines = table(loaded).splitlines()
    assert lines[2].startswith("| t | **oracle (thaw_full)** | 0,1,2 | 0.820 ± 0.020 | 0.8000, 0.8200, 0.8400 |")
    assert lines[3].startswith("| t | thaw_full |")  # ties keep the oracle first, then by name
    assert "| t | thaw_linear | 0,1,2 | 0.710 ± 0.010 |" in table(loaded)
    assert "0.94 ± 0.00" in lines[2]  # budget share 170/180
    # auto 0.810 vs oracle 0.820 - 0.020/sqrt(3) = 0.808: passes; vs tutorial 0.800: passes; share 0.94 in range
    acc = acceptance(loaded).splitlines()[2]
    assert acc.startswith("| t | 0.810 | 0.808 (thaw_full) | yes | 0.800 | yes | 0.94–0.94 | yes |")
    explored, seconds, how = exploration(summary)
    assert seconds == 10.0 and "linear-probe 20ep 10s val 0.700" in explored and "selected" in how
    assert "| t | thaw_auto | 0 | 0.8000 | 0.94 | 0.06 |" in auto_table(loaded)
    # auto's own figure wins where it records one (a soup of several phases has no single selected phase)
    stop = {"decision": "stop", "reason": "r", "signals": {"exploration_seconds": 40.0}}
    soup = {**summary, "best_phase": 5, "decisions": [*summary["decisions"], stop]}
    assert exploration(soup)[1:] == (40.0, "the strategy's decisions (exploration_seconds)")
    assert "thaw_auto_refit seed 0: skipped: no --refit" in report(loaded)
    worse = [dict(r, test_acc_best_val=0.70) if r["method"] == "thaw_auto" else r for r in rows]
    f.write_text("\n".join(json.dumps(r) for r in worse) + "\n")
    assert "| **no** |" in acceptance(load([f]))


def test_backbone_rows_and_the_choice_summary(tmp_path: Path) -> None:
    """Issue 13's rows: named by ``--methods backbones``, not in ``all``; the summary checks the chooser against the
    best single backbone in hindsight and counts, per seed, whether it picked the backbone that scored best."""
    assert suite.parse_methods("backbones") == ["thaw_auto", "thaw_auto_lite1", "thaw_auto_lite2", "thaw_auto_models"]
    assert suite.parse_methods("all,backbones").count("thaw_auto") == 1
    assert "thaw_auto_models" not in suite.parse_methods("all")
    argv = suite.thaw_argv(suite.METHODS["thaw_auto_models"], tmp_path, 180, 64, 0, tmp_path / "o")
    assert "--models efficientnet_lite0,efficientnet_lite1,efficientnet_lite2" in " ".join(argv)
    singles = {
        "thaw_auto": (0.80, 0.81, 0.82),
        "thaw_auto_lite1": (0.83, 0.84, 0.80),
        "thaw_auto_lite2": (0.82, 0.83, 0.84),
    }
    chose = (("efficientnet_lite1", 0.83), ("efficientnet_lite1", 0.82), ("efficientnet_lite0", 0.80))
    rows = [_row("t", m, s, a) for m, accs in singles.items() for s, a in enumerate(accs)]
    rows += [_row("t", "thaw_auto_models", s, a, summary={"model": m}) for s, (m, a) in enumerate(chose)]
    f = tmp_path / "r.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    line = backbones(load([f])).splitlines()[2]
    # lite2 is best in hindsight (0.830 ± 0.010, SE 0.00577): bar 0.824; the chooser's 0.817 is under it.
    # Seed 0: lite1 best, chosen (given up 0); seed 1: lite1 and lite2 tie at 0.84 (the first wins: lite1),
    # chosen (0.84 - 0.82); seed 2: lite2 best, lite0 chosen (0.84 - 0.80).
    assert line.startswith(
        "| t | 0.810 ± 0.010 | 0.823 ± 0.021 | 0.830 ± 0.010 | 0.817 ± 0.015 | 0.824 (efficientnet_lite2)"
    )
    assert line.endswith("| **no** | 0: lite1, 1: lite1, 2: lite0 | 2/3 | +0.020 |")
    assert "### Backbone choice (issue 13)" in report(load([f]))
