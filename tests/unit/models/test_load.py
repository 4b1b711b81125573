"""load_model: weights files, model folders, random init, the Hub path and its offline failure."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.conftest import hub_cache_with
from thaw.errors import ModelError
from thaw.export import export_timm_dir
from thaw.models.load import LoadedModel, load_model

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False).eval()


def _logits(loaded: LoadedModel) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(X)


def test_unknown_name_suggests_close_ones() -> None:
    with pytest.raises(ModelError, match="did you mean .resnet18."):
        load_model("resnet181", 3)


def test_safetensors_file_same_classes_keeps_head(tmp_path: Path, reference: torch.nn.Module) -> None:
    path = tmp_path / "w.safetensors"
    save_file(reference.state_dict(), str(path))
    loaded = load_model("test_resnet", 1000, weights=path)
    assert loaded.source == f"file:{path}" and loaded.name == "test_resnet"
    assert not loaded.model.training
    with torch.no_grad():
        torch.testing.assert_close(_logits(loaded), reference(X))


def test_pth_wrapped_and_prefixed_new_head(tmp_path: Path, reference: torch.nn.Module) -> None:
    path = tmp_path / "w.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    loaded = load_model("test_resnet", 4, weights=path)
    assert loaded.model.get_classifier().out_features == 4
    assert _logits(loaded).shape == (2, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.forward_features(X), reference.forward_features(X))


def test_model_state_dict_key_and_ckpt_suffix(tmp_path: Path, reference: torch.nn.Module) -> None:
    path = tmp_path / "w.ckpt"
    torch.save({"model_state_dict": reference.state_dict()}, path)
    with torch.no_grad():
        torch.testing.assert_close(_logits(load_model("test_resnet", 1000, weights=path)), reference(X))


def test_missing_keys_are_listed(tmp_path: Path, reference: torch.nn.Module) -> None:
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("layer4")}
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelError, match=r"missing tensors \(layer4\."):
        load_model("test_resnet", 3, weights=path)


def test_wrong_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "eff.safetensors"
    save_file(timm.create_model("test_efficientnet").state_dict(), str(path))
    with pytest.raises(ModelError, match="does not fit test_resnet"):
        load_model("test_resnet", 3, weights=path)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # unpickling would create the marker file
        return (os.makedirs, (self.marker,))


def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": _Evil(str(marker))}}, path)
    with pytest.raises(ModelError, match="refused for safety") as info:
        load_model("test_resnet", 3, weights=path)
    assert "safetensors.torch.save_file" in str(info.value)
    assert not marker.exists()


def test_unsupported_suffix_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ModelError, match="use .safetensors"):
        load_model("test_resnet", 3, weights=tmp_path / "w.npz")
    with pytest.raises(ModelError, match="weights not found"):
        load_model("test_resnet", 3, weights=tmp_path / "nope.safetensors")


def test_timm_folder(tmp_path: Path, reference: torch.nn.Module) -> None:
    cfg = {
        "input_size": (3, 72, 72),
        "interpolation": "bilinear",
        "mean": (0.1, 0.2, 0.3),
        "std": (0.4, 0.5, 0.6),
        "crop_pct": 0.95,
    }
    model = timm.create_model("test_resnet", num_classes=3).eval()
    export_timm_dir(model, tmp_path / "m", label_names=["a", "b", "c"], data_config=cfg)
    loaded = load_model("test_resnet", 3, weights=tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(_logits(loaded), model(X))
    assert loaded.source.startswith("dir:")
    for key, value in cfg.items():
        assert loaded.data_config[key] == value
    with pytest.raises(ModelError, match="pass --model test_resnet"):
        load_model("test_efficientnet", 3, weights=tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="without config.json"):
        load_model("test_resnet", 3, weights=tmp_path / "empty")


def test_random_init() -> None:
    loaded = load_model("test_resnet", 3, random_init=True, drop_rate=0.2)
    assert loaded.source == "random-init" and _logits(loaded).shape == (2, 3)
    assert load_model("test_resnet", 3, pretrained=False).source == "random-init"
    with pytest.raises(ModelError, match="exclude each other"):
        load_model("test_resnet", 3, random_init=True, weights="w.safetensors")


def _hub_answers() -> bool:
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=5)
    except Exception:  # any network failure means: not reachable from here
        return False
    return True


def test_hub_failure_is_fast_and_actionable() -> None:
    """Real path: this machine has no route to the Hub (skip where it has)."""
    if _hub_answers():
        pytest.skip("the Hugging Face Hub is reachable here; the offline failure cannot be observed")
    start = time.monotonic()
    with pytest.raises(ModelError) as info:
        load_model("resnet18", 3)
    assert time.monotonic() - start < 30
    msg = str(info.value)
    assert msg.startswith("cannot download pretrained weights for resnet18 (")
    assert "--weights FILE" in msg and "efficientnet_lite0" in msg and "--random-init" in msg


def test_hub_error_while_reachable_is_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    class Answers:  # a session whose HEAD request to the Hub succeeds
        def head(self, *args, **kwargs):
            return None

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_session", lambda: Answers())

    def boom(*args, **kwargs):
        raise OSError("repository not found")

    monkeypatch.setattr(timm, "create_model", boom)
    with pytest.raises(ModelError, match=r"test_resnet \(OSError: repository not found\)"):
        load_model("test_resnet", 3)


def test_offline_uses_hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, reference, caplog) -> None:
    from huggingface_hub import constants

    hub_cache_with(tmp_path / "hub", "test_resnet", reference.state_dict())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with caplog.at_level(logging.INFO, logger="thaw.models.load"):
        loaded = load_model("test_resnet", 1000)
    assert "using cached weights" in caplog.text
    assert loaded.source.startswith("hub:")
    with torch.no_grad():
        torch.testing.assert_close(_logits(loaded), reference(X))
