"""Shared fixtures: tiny real image folders written into tmp_path, tiny timm models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image


def hub_cache_with(cache: Path, name: str, state_dict: dict[str, Any]) -> Path:
    """Put ``state_dict`` where a previous download of timm model ``name``'s pretrained weights leaves them: the
    Hugging Face cache layout under ``cache`` (``refs/main`` names the snapshot holding ``model.safetensors``)."""
    from safetensors.torch import save_file
    from timm.models import get_pretrained_cfg

    repo = cache / ("models--" + get_pretrained_cfg(name).hf_hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(snapshot / "model.safetensors"))
    return cache


def write_image_folder(root: Path, classes: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """Class folders of small PNG/JPEG images whose colour depends on the class (learnable)."""
    rng = np.random.default_rng(seed)
    for ci, (name, count) in enumerate(classes.items()):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            base = np.zeros((size, size, 3), dtype=np.float32)
            base[..., ci % 3] = 160 + 40 * (ci // 3)
            img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
            ext = ".png" if i % 2 == 0 else ".jpg"
            Image.fromarray(img).save(d / f"{name}_{i}{ext}")
    return root


@pytest.fixture
def tiny_folders(tmp_path: Path) -> dict[str, Path]:
    """train/val/test folders with 3 classes."""
    classes = {"red": 12, "green": 12, "blue": 12}
    return {
        "train": write_image_folder(tmp_path / "train", classes, seed=0),
        "val": write_image_folder(tmp_path / "val", {k: 4 for k in classes}, seed=1),
        "test": write_image_folder(tmp_path / "test", {k: 4 for k in classes}, seed=2),
    }
