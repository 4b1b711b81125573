"""auto's backbone choice with Hub models (issue 13, item 4): any timm name whose pretrained weights can be had takes
part, loaded through the real Hub path. No network here: the weights sit in a Hugging Face cache as a previous
download leaves them, and the Hub is offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from tests.conftest import hub_cache_with
from thaw.cli import main
from thaw.data.sample import sample_data_dir


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A Hub cache holding test_efficientnet's and test_resnet's weights (test_vit's are missing), offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    for seed, name in enumerate(("test_efficientnet", "test_resnet")):
        torch.manual_seed(seed)
        hub_cache_with(cache, name, timm.create_model(name, pretrained=False).state_dict())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.slow
def test_auto_chooses_among_hub_models_and_reports_one_it_cannot_load(offline_hub: Path, tmp_path: Path) -> None:
    data = sample_data_dir()
    out = tmp_path / "hub-run"
    argv = ["fit", str(data / "train"), "--val", str(data / "val"), "--test", str(data / "test")]
    argv += ["--strategy", "auto", "--models", "test_efficientnet,test_resnet,test_vit", "--img-size", "32"]
    assert main([*argv, "--time-budget", "40s", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    choice = summary["decisions"][0]
    chosen = choice["signals"]["chosen"]
    # both cached models were measured and ranked; the one without weights is reported with its reason, not fatal
    assert sorted(r["model"] for r in choice["signals"]["ranking"]) == ["test_efficientnet", "test_resnet"]
    assert "test_vit" in choice["signals"]["errors"] and "test_vit" in choice["signals"]["errors"]["test_vit"]
    assert choice["decision"] == f"choose backbone {chosen}"
    # the winner was fine-tuned from the cached Hub weights and exported
    assert summary["model"] == chosen and summary["model_source"].startswith("hub:")
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architecture"] == chosen
    reloaded = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True).eval()
    assert reloaded.num_classes == len(summary["classes"])
