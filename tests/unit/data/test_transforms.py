"""Preprocess (vs timm's eval transform), augmentation presets, normalize."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data.config import resolve_model_data_config
from timm.data.transforms_factory import create_transform

from thaw.data.transforms import AUGMENT_PRESETS, Preprocess, make_augment, normalize
from thaw.errors import ConfigError


def photo(width: int = 97, height: int = 61) -> Image.Image:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], axis=-1)
    noisy = smooth + rng.integers(-20, 20, smooth.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    "cfg",
    [
        {
            "input_size": (3, 32, 32),
            "interpolation": "bicubic",
            "crop_pct": 0.95,
            "mean": (0.5,) * 3,
            "std": (0.25,) * 3,
        },
        {"input_size": (3, 40, 40), "interpolation": "bilinear", "crop_pct": 0.875},
        {"input_size": (3, 24, 24), "interpolation": "lanczos", "crop_pct": 1.0},
    ],
)
def test_matches_timm_eval_transform(cfg: dict[str, Any]) -> None:
    pre = Preprocess.from_data_config(cfg)
    img = photo()
    ours = normalize(pre(img)[None], pre.mean, pre.std, channels_last=False)[0]
    theirs = create_transform(
        input_size=cfg["input_size"],
        crop_pct=pre.crop_pct,
        interpolation=pre.interpolation,
        mean=pre.mean,
        std=pre.std,
        is_training=False,
    )(img)
    assert ours.shape == theirs.shape == (3, pre.size, pre.size)
    # identical geometry; only uint8 rounding of the resized pixels differs (half a level over std)
    torch.testing.assert_close(ours, theirs, atol=0.5 / 255 / min(pre.std) + 1e-5, rtol=0)


def test_from_real_timm_config_and_override() -> None:
    cfg = resolve_model_data_config(timm.create_model("test_efficientnet", pretrained=False))
    pre = Preprocess.from_data_config(cfg)
    assert (pre.size, pre.crop_pct, pre.interpolation) == (160, 0.95, "bicubic")
    small = Preprocess.from_data_config(cfg, img_size=64)
    assert small.size == 64 and small.resize_size == 67  # floor(64 / 0.95), as timm does
    out = small(photo())
    assert out.dtype == torch.uint8 and out.shape == (3, 64, 64)
    meta = json.loads(json.dumps(small.to_dict()))
    assert meta["size"] == 64 and meta["mean"] == list(cfg["mean"]) and meta["interpolation"] == "bicubic"


def test_bad_preprocess_values() -> None:
    with pytest.raises(ConfigError, match="did you mean 'bicubic'"):
        Preprocess(32, 0.9, "bicubc", (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ConfigError, match="crop_pct"):
        Preprocess(32, 0.0, "bilinear", (0.5,) * 3, (0.5,) * 3)


def test_tiny_and_wide_images() -> None:
    pre = Preprocess(16, 0.875, "bilinear", (0.5,) * 3, (0.5,) * 3)
    assert (
        pre(Image.new("RGB", (1, 1), (7, 8, 9))).tolist()
        == torch.tensor([7, 8, 9]).view(3, 1, 1).expand(3, 16, 16).tolist()
    )
    assert pre(Image.new("RGB", (500, 3))).shape == (3, 16, 16)


@pytest.mark.parametrize("preset", ["crop", "light", "strong"])
def test_augment_presets_keep_uint8_shape(preset: str) -> None:
    torch.manual_seed(0)
    augment = make_augment(preset, 24)
    assert augment is not None
    x = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8)
    outs = [augment(x) for _ in range(30)]
    assert all(o.dtype == torch.uint8 and o.shape == (3, 24, 24) for o in outs)
    assert any(not torch.equal(o, x) for o in outs)


def test_crop_never_mirrors_and_light_does() -> None:
    torch.manual_seed(0)
    x = torch.zeros((3, 32, 32), dtype=torch.uint8)
    x[:, :, :8] = 255  # a bright left edge: a mirror image has it on the right

    def right_heavy(preset: str) -> int:
        augment = make_augment(preset, 32)
        assert augment is not None
        outs = [augment(x) for _ in range(40)]
        return sum(int(o[:, :, 16:].float().mean() > o[:, :, :16].float().mean()) for o in outs)

    assert right_heavy("crop") == 0
    assert right_heavy("light") > 5


def test_augment_none_and_unknown() -> None:
    assert make_augment("none", 24) is None
    assert AUGMENT_PRESETS == ("none", "crop", "light", "strong")
    with pytest.raises(ConfigError, match="did you mean 'strong'"):
        make_augment("stong", 24)


def test_normalize_numerics_and_layout() -> None:
    batch = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = normalize(batch, mean, std)
    expected = (batch.double() / 255 - torch.tensor(mean).double().view(1, 3, 1, 1)) / torch.tensor(std).double().view(
        1, 3, 1, 1
    )
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    plain = normalize(batch, mean, std, channels_last=False, dtype=torch.float64)
    assert plain.is_contiguous() and plain.dtype == torch.float64
    torch.testing.assert_close(plain, expected)
    with pytest.raises(ValueError, match="NCHW"):
        normalize(batch[0], mean, std)
