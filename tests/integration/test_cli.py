"""The CLI end to end, the way a user runs it: real images, real pretrained weights, small resolution."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

import thaw
from tests.conftest import write_image_folder
from thaw.cli import main
from thaw.config import default_batch_size
from thaw.data.sample import sample_data_dir
from thaw.strategy.auto import EARLY_MIN_EPOCHS, EXPLORE_SHARE, MAX_EXPLORE_SHARE, MIN_RUNG_STEPS

SRC = str(Path(thaw.__file__).resolve().parents[1])


def _tree(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "plots" not in p.parts}


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real fine-tuning run of the built-in Lite0 on the embedded sample data (64 px, last-k)."""
    data = sample_data_dir()
    out = tmp_path_factory.mktemp("runs") / "lite0"
    code = main(
        [
            "fit",
            str(data / "train"),
            "--val",
            str(data / "val"),
            "--test",
            str(data / "test"),
            "--model",
            "efficientnet_lite0",
            "--strategy",
            "last-k",
            "--k",
            "2",
            "--img-size",
            "64",
            "--epochs",
            "2",
            "--cache-views",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


def test_fit_writes_the_run_directory_contract(lite0_run: Path) -> None:
    tree = _tree(lite0_run)
    for required in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "audit.json",
        "eval.json",
        "predictions.jsonl",
        "model/config.json",
        "model/model.safetensors",
        "checkpoints/last/state.json",
        "checkpoints/last/model.safetensors",
        "report.html",
    ):
        assert required in tree, required
    assert not any(p.startswith("cache") for p in tree)  # the decode cache is removed at the end
    summary = json.loads((lite0_run / "summary.json").read_text())
    for key in (
        "strategy",
        "model",
        "classes",
        "phases",
        "best_val_accuracy",
        "test_accuracy",
        "wall_seconds",
        "train_images_per_second",
        "decisions",
    ):
        assert key in summary, key
    assert summary["strategy"] == "last-k" and summary["model"] == "efficientnet_lite0"
    # no --batch-size: chosen from the training images and recorded, so that --resume trains with the same
    config = yaml.safe_load((lite0_run / "config.yaml").read_text())
    assert config["batch_size"] == summary["batch_size"] == default_batch_size(summary["data"]["train"]) == 32
    assert summary["model_source"].startswith("builtin")
    (phase,) = summary["phases"]
    assert phase["trainable_groups"] == ["blocks.5", "blocks.6", "head"]
    # --cache-views 2: the frozen stem..blocks.4 ran once per view; the cut was verified on the real weights
    cache = phase["prefix_cache"]
    assert cache["used"] is True and cache["boundary"] == "blocks.4" and cache["views"] == 2
    assert cache["verified_max_logit_diff"] < 1e-3
    for key in ("index", "trainable_groups", "epochs", "best_val_accuracy", "reason"):
        assert key in phase
    assert len(summary["classes"]) == 10
    assert summary["test_accuracy"] > 0.3  # 10 classes: far above chance after 2 epochs at 64 px
    rows = [json.loads(line) for line in (lite0_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in (
        "epoch",
        "phase",
        "trainable_groups",
        "lr",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "seconds",
        "images_per_second",
    ):
        assert key in rows[0], key
    audit = json.loads((lite0_run / "audit.json").read_text())
    assert set(audit) >= {"classes", "skipped", "duplicates"}
    assert audit["classes"]["Trouser"]["train"] == 40


def test_exported_model_reloads_in_plain_timm_with_identical_logits(lite0_run: Path) -> None:
    reloaded = timm.create_model(f"local-dir:{lite0_run / 'model'}", pretrained=True).eval()
    model, labels, cfg = thaw.load_run(lite0_run).load_model()
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(x), model(x), rtol=0, atol=0)
    assert labels == json.loads((lite0_run / "summary.json").read_text())["classes"]
    assert reloaded.pretrained_cfg["input_size"][-1] == 64


def test_evaluate_and_predict(lite0_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    test_dir = sample_data_dir() / "test"
    assert main(["evaluate", str(lite0_run), str(test_dir), "--out", str(tmp_path / "eval.json")]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out.lower() and "Trouser" in out
    ev = json.loads((tmp_path / "eval.json").read_text())
    summary = json.loads((lite0_run / "summary.json").read_text())
    assert ev["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert len(ev["confusion_matrix"]) == 10

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    img = next((test_dir / "Trouser").iterdir())
    csv_path = tmp_path / "preds.csv"
    assert (
        main(
            [
                "predict",
                str(lite0_run),
                str(img),
                str(bad),
                str(test_dir / "Bag"),
                "--top-k",
                "3",
                "--csv",
                str(csv_path),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "skipped" in captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 + len(list((test_dir / "Bag").iterdir()))
    assert csv_path.read_text().splitlines()[0].startswith("path,label_1,probability_1")


def test_python_api_mirrors_the_cli(tiny_folders: dict[str, Path], tmp_path: Path) -> None:
    r = thaw.fit(
        tiny_folders["train"],
        test=str(tiny_folders["test"]),
        model="test_efficientnet",
        random_init=True,
        strategy="lp-ft",
        img_size=32,
        epochs=1,
        probe_epochs=2,
        out=str(tmp_path / "api"),
    )
    assert isinstance(r, thaw.FitResult)
    assert [p["name"] for p in r.summary["phases"]] == ["linear-probe", "fine-tune"]
    assert r.summary["phases"][0]["cached_features"] is True
    # the headline number is the accuracy of the run's own test predictions (12 images)
    rows = [json.loads(line) for line in (r.run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {row["split"] for row in rows} == {"test"}
    assert r.test_accuracy == pytest.approx(sum(row["label"] == row["pred"] for row in rows) / 12)
    assert r.linear_probe_test_accuracy == r.summary["linear_probe_test_accuracy"]
    assert r.linear_probe_test_accuracy is not None and round(r.linear_probe_test_accuracy * 12) / 12 == pytest.approx(
        r.linear_probe_test_accuracy
    )
    run = thaw.load_run(r.run_dir)
    assert run.summary["test_accuracy"] == r.test_accuracy
    assert run.classes == ["blue", "green", "red"] and run.config.strategy == "lp-ft"


def test_user_mistakes_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["fit", str(empty), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("thaw: error:") and "Traceback" not in err
    assert main(["fit", str(tmp_path / "missing"), "--strategy", "lastk"]) == 2
    assert "did you mean 'last-k'" in capsys.readouterr().err
    one = write_image_folder(tmp_path / "one", {"cats": 3})
    assert main(["fit", str(one), "--out", str(tmp_path / "r2")]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["layers", "efficientnet_lite1x"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nope"), str(one)]) == 2


def test_layers_prints_groups(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", "efficientnet_lite0"]) == 0
    out = capsys.readouterr().out
    assert "stem" in out and "blocks.6" in out and "head" in out


def _broken_folder(root: Path) -> dict[str, str]:
    """Train folder with the broken files users have; returns file name -> expected reason fragment."""
    write_image_folder(root, {"a": 8, "b": 8})
    d = root / "a"
    good = np.asarray(Image.open(next(d.glob("*.jpg"))).convert("RGB"))
    buf = d / "truncated.jpg"
    Image.fromarray(good).save(buf, quality=95)
    buf.write_bytes(buf.read_bytes()[: len(buf.read_bytes()) // 2])
    (d / "zero.jpg").write_bytes(b"")
    (d / "text.png").write_text("hello, I am not a picture\n")
    Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).save(root / "b" / "deep16.png")
    Image.fromarray(good).convert("CMYK").save(root / "b" / "cmyk.jpg")
    pal = Image.fromarray(good).convert("P")
    pal.info["transparency"] = 0
    pal.save(root / "b" / "palette.png", transparency=0)
    return {"truncated.jpg": "truncat", "zero.jpg": "empty", "text.png": "not an image"}


def test_fit_on_broken_files_finishes_and_lists_each_skip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = _broken_folder(tmp_path / "train")
    out = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                str(tmp_path / "train"),
                "--model",
                "test_efficientnet",
                "--random-init",
                "--img-size",
                "32",
                "--strategy",
                "linear",
                "--probe-epochs",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    audit = json.loads((out / "audit.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in audit["skipped"]}
    assert set(skipped) == set(expected)
    for name, fragment in expected.items():
        assert fragment in skipped[name].lower(), (name, skipped[name])
        assert name in err
    # the decodable odd formats were used, not skipped
    assert audit["classes"]["b"]["train"] == 11
    assert (
        main(
            [
                "fit",
                str(tmp_path / "train"),
                "--strict",
                "--model",
                "test_efficientnet",
                "--random-init",
                "--out",
                str(tmp_path / "strict"),
            ]
        )
        == 2
    )


def _fit_cmd(train: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "thaw",
        "fit",
        str(train),
        "--model",
        "test_resnet",
        "--random-init",
        "--img-size",
        "48",
        "--strategy",
        "full",
        "--epochs",
        "3",
        "--patience",
        "0",
        "--batch-size",
        "16",
        "--augment",
        "light",
        "--out",
        str(out),
    ]


def _compare_runs(ref: Path, run: Path) -> None:
    a = json.loads((ref / "summary.json").read_text())
    b = json.loads((run / "summary.json").read_text())
    assert b["best_val_accuracy"] == pytest.approx(a["best_val_accuracy"], abs=1e-6)
    assert b["test_accuracy"] == a["test_accuracy"]
    assert b["phases"][0]["best_val_loss"] == pytest.approx(a["phases"][0]["best_val_loss"], rel=1e-5)
    ra = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rb] == [r["epoch"] for r in ra]
    for x, y in zip(ra, rb, strict=True):
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-5)
        assert y["val_loss"] == pytest.approx(x["val_loss"], rel=1e-5)


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    root = tmp_path_factory.mktemp("kill")
    train = write_image_folder(root / "train", {"a": 90, "b": 90, "c": 90}, size=48)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "2"}
    ref = root / "ref"
    subprocess.run(_fit_cmd(train, ref), check=True, env=env, capture_output=True)
    return train, env, ref


def _resume(run: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "thaw", "fit", "--resume", str(run)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_kill_during_epoch_two_then_resume_equals_uninterrupted(
    kill_setup: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    train, env, ref = kill_setup
    run = tmp_path / "killed"
    proc = subprocess.Popen(_fit_cmd(train, run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run / "checkpoints" / "last" / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # epoch 1 checkpointed: epoch 2 is running
        if state.exists():
            break
        time.sleep(0.01)
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists()
    _resume(run, env)
    _compare_runs(ref, run)


@pytest.mark.slow
def test_sigkill_at_three_random_moments_then_resume(
    kill_setup: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    train, env, ref = kill_setup
    run = tmp_path / "killed3"
    rng = random.Random(1234)
    cmd = _fit_cmd(train, run)
    for _ in range(3):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not (run / "config.yaml").exists():
            time.sleep(0.01)  # before config.yaml there is no run to resume: a plain re-run is the remedy
        time.sleep(rng.uniform(0.0, 3.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        cmd = [sys.executable, "-m", "thaw", "fit", "--resume", str(run)]
    _resume(run, env)
    _compare_runs(ref, run)


def test_sigterm_checkpoints_and_says_how_to_resume(
    kill_setup: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    train, env, _ref = kill_setup
    run = tmp_path / "term"
    proc = subprocess.Popen(_fit_cmd(train, run), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = run / "checkpoints" / "last" / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not state.exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"thaw fit --resume {run}" in err and "Traceback" not in err


def test_cli_runs_as_a_subprocess(tiny_folders: dict[str, Path], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "thaw", "--version"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("thaw ")
    out = tmp_path / "sub"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "thaw",
            "fit",
            str(tiny_folders["train"]),
            "--model",
            "test_vit",
            "--random-init",
            "--img-size",
            "32",
            "--strategy",
            "gradual",
            "--gradual-epochs",
            "1",
            "--epochs",
            "1",
            "--probe-epochs",
            "1",
            "--out",
            str(out),
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["phases"][-1]["trainable_groups"][0] == "stem"
    shutil.rmtree(out)


def test_export_onnx_and_predict_with_onnxruntime(lite0_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(lite0_run), "--onnx"]) == 0
    out = capsys.readouterr().out
    assert "predictions equal: True" in out
    info = json.loads((lite0_run / "onnx.json").read_text())
    assert info["max_abs_diff"] <= 1e-4 and info["num_images"] == 32
    folder = sample_data_dir() / "test" / "Sandal"
    assert main(["predict", str(lite0_run), str(folder), "--onnx", "--top-k", "1"]) == 0
    onnx_lines = capsys.readouterr().out.splitlines()
    assert main(["predict", str(lite0_run), str(folder), "--top-k", "1"]) == 0
    torch_lines = capsys.readouterr().out.splitlines()
    assert [ln.rsplit(" ", 1)[0] for ln in onnx_lines] == [ln.rsplit(" ", 1)[0] for ln in torch_lines]


def test_advise_cli_writes_tables_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "advise.json"
    assert (
        main(["advise", str(sample_data_dir() / "train"), "--max-images", "200", "--img-size", "64", "--out", str(out)])
        == 0
    )
    text = capsys.readouterr().out
    assert "efficientnet_lite0" in text and "thaw fit" in text
    data = json.loads(out.read_text())
    assert data["plan"]["strategy"] and data["plan"]["decisions"]
    model = data["models"][0]
    assert model["name"] == "efficientnet_lite0" and model["error"] is None
    # the headline LogME is the final (pre-logits) stage's, measured on the requested 200-image sample
    assert isinstance(model["logme"], float) and model["logme"] == model["stages"][-1]["logme"]
    assert data["dataset"]["num_classes"] == 10 and model["img_size"] == 64


def test_compare_cli(tiny_folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                str(tiny_folders["train"]),
                "--test",
                str(tiny_folders["test"]),
                "--strategies",
                "linear,full",
                "--fractions",
                "0.5,1",
                "--model",
                "test_efficientnet",
                "--random-init",
                "--img-size",
                "32",
                "--epochs",
                "1",
                "--probe-epochs",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads((out / "compare.json").read_text())
    assert {(c["strategy"], c["fraction"]) for c in data["cells"]} == {
        ("linear", 0.5),
        ("linear", 1.0),
        ("full", 0.5),
        ("full", 1.0),
    }
    assert (out / "compare.png").exists()
    assert "linear" in capsys.readouterr().out


def test_auto_strategy_explains_every_decision(tiny_folders: dict[str, Path], tmp_path: Path) -> None:
    r = thaw.fit(
        tiny_folders["train"],
        test=str(tiny_folders["test"]),
        model="test_efficientnet",
        random_init=True,
        strategy="auto",
        img_size=32,
        probe_epochs=2,
        time_budget=20,
        out=str(tmp_path / "auto"),
    )
    decisions, phases = r.summary["decisions"], r.summary["phases"]
    assert decisions[0]["decision"] == "run linear-probe"
    assert decisions[-1]["decision"] == "stop" and decisions[-1]["reason"]
    assert len(decisions) == len(phases) + 1
    roles = [d["signals"].get("role") for d in decisions[1:-1]]
    assert roles and roles[-1] == "final" and set(roles[:-1]) <= {"candidate"}
    assert 0 < decisions[-1]["signals"]["exploration_share"] < 1


@pytest.mark.slow
def test_auto_on_real_data_races_then_spends_its_budget_on_the_winner(tmp_path: Path) -> None:
    """`thaw fit --time-budget 120s` (auto is the default strategy) on the embedded sample with the built-in Lite0
    (64 px). ``--epochs 30``, which auto does not read, is said in the log and the summary, not silently dropped."""
    data = sample_data_dir()
    out = tmp_path / "auto"
    argv = ["fit", str(data / "train"), "--val", str(data / "val"), "--test", str(data / "test")]
    budget = 120
    argv += ["--img-size", "64", "--time-budget", f"{budget}s", "--out", str(out), "--epochs", "30"]
    # batch 16 (25 steps an epoch) and 120 s: a rung of ~16 s holds about 250 steps of full on a quiet machine and
    # still MIN_RUNG_STEPS at half that speed (at 90 s one full check ran at 3.0 s an epoch against 1.6 alone, the
    # rung held 75 steps and the race was skipped; batch 8 is no way out: 4-5 s an epoch on this CPU)
    argv += ["--batch-size", "16"]
    started = time.monotonic()
    assert main(argv) == 0
    wall = time.monotonic() - started
    summary = json.loads((out / "summary.json").read_text())
    phases, decisions = summary["phases"], summary["decisions"]
    assert summary["strategy"] == "auto"
    assert any(w.startswith("--epochs 30 has no effect with --strategy auto") for w in summary["warnings"])
    # the budget is spent, not exceeded (12 s of the budget are kept back for the export and report, which take less
    # on a quiet machine, so the floor here is lower than the suite's 90 %)
    assert 0.7 * budget <= wall <= 1.05 * budget + 10, wall
    assert summary["validation_held_out"] and summary["test_accuracy"] > 0.5
    if [p["name"] for p in phases] == ["linear-probe", "auto-full"]:
        # a machine slowed by its neighbours (one seen at 1.4 s for an epoch that took 0.7 s twenty minutes later)
        # prices a rung under the race floor: then the floor must be what stopped the race, and it must say so
        signals = decisions[1]["signals"]
        assert signals["rung_steps"] < MIN_RUNG_STEPS and "no race" in decisions[1]["reason"]
        pytest.skip(f"no race on this machine now: a rung would hold {signals['rung_steps']} steps of full")
    assert [p["name"] for p in phases[:3]] == ["linear-probe", "race-partial", "race-full"]
    final = phases[3]
    race = decisions[3]["signals"]["race"]
    recipe = decisions[3]["signals"]["recipe"]
    winner = next(i for i in (1, 2) if phases[i]["name"] == f"race-{recipe}")
    if final["signals"]["role"] == "final":
        # the winner continues from the weights its rung selected
        assert final["name"] == f"auto-{recipe}" and final["start"] == f"phase:{winner}"
    else:
        # or, when its rung had fitted early (a warm process runs more epochs in a rung), the rung is repeated from
        # the probe's weights and souped
        assert final["signals"]["role"] == "repeat" and final["signals"]["rung_epochs"] >= EARLY_MIN_EPOCHS
        assert final["name"] == f"auto-{recipe}-repeat1" and final["start"] == "phase:0"
        assert any(d["decision"] in ("soup adopted", "soup vetoed") for d in decisions)
    (loser,) = race.values()
    assert loser["verdict"].startswith("dropped") and "accuracy_diff_lower_bound" in loser
    # the probe's numbers on mirror images decided whether fine-tuning flips, and every later phase follows it
    flip = decisions[1]["signals"]["flip"]
    assert 0 <= flip["mirrored_val_accuracy"] <= 1 and "accuracy_diff_lower_bound" in flip
    assert {p["augment"] for p in phases[1:]} == {"light" if flip["flip"] else "crop"}
    # the rungs cost the same and together take the explore share of what was left after the probe (lengthened up
    # to MAX_EXPLORE_SHARE when that meets the race floor)
    rungs = [p["planned_seconds"] for p in phases[1:3]]
    assert rungs[0] == rungs[1] and 0.25 * budget * EXPLORE_SHARE / 2 < rungs[0] < budget * MAX_EXPLORE_SHARE / 2
    assert final["epochs"] >= 2 and final["stopped"] in ("completed", "time-budget")  # the clock ends it, not patience


def test_auto_without_room_for_a_race_trains_every_group_from_a_fresh_head(tmp_path: Path) -> None:
    """A budget whose rungs could not hold MIN_RUNG_STEPS of full: no race; the probe, then every group from the
    pretrained weights and a fresh head for the rest of the budget, and the decision says why with its numbers.
    30 s: after the probe and the 12 s reserve a rung is a few seconds, a few epochs of 13 steps even on a fast
    machine, and the final run still has time for its epochs on a slow one."""
    data = sample_data_dir()
    out = tmp_path / "auto"
    argv = ["fit", str(data / "train"), "--val", str(data / "val"), "--strategy", "auto", "--img-size", "64"]
    assert main([*argv, "--time-budget", "30s", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [p["name"] for p in summary["phases"]] == ["linear-probe", "auto-full"]
    full = summary["phases"][1]
    assert full["start"] == "pretrained" and full["epochs"] >= 1
    signals = summary["decisions"][1]["signals"]
    assert signals["rung_steps"] < MIN_RUNG_STEPS and "fresh head" in summary["decisions"][1]["reason"]
    assert summary["best_phase"] in (0, 1)  # the probe stays the result if validation prefers it


@pytest.mark.slow
def test_auto_with_models_chooses_the_backbone_within_the_budget_and_resume_keeps_the_choice(tmp_path: Path) -> None:
    """`thaw fit --strategy auto --models lite0,lite1` on the embedded sample (64 px, built-in weights)."""
    data = sample_data_dir()
    out = tmp_path / "models"
    argv = ["fit", str(data / "train"), "--val", str(data / "val"), "--strategy", "auto", "--img-size", "64"]
    argv += ["--models", "efficientnet_lite0,efficientnet_lite1", "--time-budget", "60s", "--out", str(out)]
    started = time.monotonic()
    assert main(argv) == 0
    wall = time.monotonic() - started
    summary = json.loads((out / "summary.json").read_text())
    advice = json.loads((out / "advise.json").read_text())
    chosen = advice["plan"]["model"]
    assert chosen in ("efficientnet_lite0", "efficientnet_lite1")
    # the choice is recorded with its numbers, trained, exported and written to config.yaml
    first = summary["decisions"][0]
    assert first["decision"] == f"choose backbone {chosen}" and first["reason"].startswith("auto --models: ")
    assert [r["model"] for r in first["signals"]["ranking"]][0] == chosen and len(first["signals"]["ranking"]) == 2
    assert summary["decisions"][1]["decision"] == "run linear-probe"
    assert summary["model"] == chosen and json.loads((out / "model" / "config.json").read_text())["architecture"]
    assert f"model: {chosen}" in (out / "config.yaml").read_text()
    # measuring the candidates counts against the budget
    assert wall <= 1.05 * 60 + 10, wall
    # a run that already chose reads its choice back: drop the checkpoint and results, resume, nothing re-measured
    for name in ("checkpoints", "summary.json", "model"):
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    before = (out / "advise.json").read_text()
    assert main(["fit", "--resume", str(out), "--time-budget", "20s"]) == 0
    assert (out / "advise.json").read_text() == before
    assert json.loads((out / "summary.json").read_text())["model"] == chosen


def test_tensorboard_log(tiny_folders: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is an optional extra: pip install 'thaw[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert (
        main(
            [
                "fit",
                str(tiny_folders["train"]),
                "--model",
                "test_efficientnet",
                "--random-init",
                "--img-size",
                "32",
                "--strategy",
                "linear",
                "--probe-epochs",
                "2",
                "--log",
                "tensorboard",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val/accuracy")] == [1, 2]
    assert "group_drift/head" in acc.Tags()["scalars"]


def test_unwritable_out_is_a_clear_error(
    tiny_folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert (
        main(
            [
                "fit",
                str(tiny_folders["train"]),
                "--model",
                "test_efficientnet",
                "--random-init",
                "--out",
                str(blocker / "run"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "cannot write to run directory" in err and "Traceback" not in err


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_report_of_a_real_run_renders_in_chromium(lite0_run: Path, tmp_path: Path) -> None:
    """The report of a real fine-tuning run (not a fixture) opens in headless Chromium with every figure decoded."""
    from tests.integration.test_report_chromium import chromium

    report = lite0_run / "report.html"
    html = report.read_text(encoding="utf-8")
    dom = chromium(tmp_path / "profile", "--dump-dom", report.resolve().as_uri()).stdout
    assert 'data-images-ok="true"' in dom
    assert f'data-images-count="{html.count("<img ")}"' in dom and html.count("<img ") >= 6
    shot = tmp_path / "real-report.png"
    chromium(tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,3000", report.resolve().as_uri())
    assert shot.stat().st_size > 20_000
    shutil.copyfile(shot, Path(os.environ.get("THAW_TEST_ARTIFACTS", "/tmp")) / "thaw-real-report.png")


def test_fit_from_a_csv_manifest(tiny_folders: dict[str, Path], tmp_path: Path) -> None:
    rows = ["path,label"]
    for p in sorted(tiny_folders["train"].rglob("*.*")):
        rows.append(f"{p.relative_to(tiny_folders['train'].parent)},{p.parent.name} class")
    manifest = tiny_folders["train"].parent / "train.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    r = thaw.fit(
        manifest,
        model="test_efficientnet",
        random_init=True,
        img_size=32,
        strategy="linear",
        probe_epochs=1,
        out=str(tmp_path / "csv"),
    )
    assert r.summary["classes"] == ["blue class", "green class", "red class"]
    assert r.summary["data"]["train"] + r.summary["data"]["val"] == 36
