"""Deterministic preprocessing (to uint8), augmentation presets, and fast batch normalisation.

Images are decoded and preprocessed once into uint8 tensors (``thaw.data.cache``); augmentation runs on
those uint8 tensors, and normalisation to float happens per batch on the training device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image
from timm.data import DEFAULT_CROP_PCT
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

# AUGMENT_PRESETS is re-exported: the names live in config (which imports no torch); the presets are built here.
from thaw.config import AUGMENT_PRESETS
from thaw.errors import ConfigError
from thaw.names import did_you_mean

__all__ = ["AUGMENT_PRESETS", "Preprocess", "make_augment", "normalize"]


_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


@dataclass(frozen=True)
class Preprocess:
    """Eval-time geometry of a model: resize the shorter side, center crop, to a uint8 tensor.

    Matches ``timm.data.create_transform(**data_config, is_training=False)`` in "center" crop mode, up to
    the rounding of uint8 versus float; mean/std are kept for ``normalize`` and the exported metadata.

    Attributes:
        size: Side of the square output, in pixels.
        crop_pct: Share of the resized image kept by the center crop (timm's ``crop_pct``).
        interpolation: Resize filter: nearest, bilinear, bicubic, box, hamming or lanczos.
        mean: Per-channel mean (0..1 scale) used by ``normalize``.
        std: Per-channel standard deviation (0..1 scale) used by ``normalize``.
    """

    size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"image size must be a positive number of pixels, got {self.size}")
        if not self.crop_pct > 0:
            raise ConfigError(f"crop_pct must be above 0, got {self.crop_pct}: timm models use 0.875 to 1.0")
        if self.interpolation not in _INTERPOLATIONS:
            raise ConfigError(
                f"unknown interpolation '{self.interpolation}'{did_you_mean(self.interpolation, _INTERPOLATIONS)}"
                f": use one of {', '.join(_INTERPOLATIONS)}"
            )

    @classmethod
    def from_data_config(cls, cfg: Mapping[str, Any], img_size: int | None = None) -> Preprocess:
        """Build from a timm data config (``timm.data.resolve_model_data_config(model)``).

        Args:
            cfg: Mapping with ``input_size`` (C, H, W), and optionally ``crop_pct``, ``interpolation``,
                ``mean``, ``std``.
            img_size: Output side overriding ``input_size`` (e.g. a smaller resolution for speed).

        Returns:
            The preprocessing. A non-square ``input_size`` uses its height.

        Example:
            >>> cfg = timm.data.resolve_model_data_config(model)
            >>> pre = Preprocess.from_data_config(cfg, img_size=160)
        """
        size = int(img_size) if img_size is not None else int(cfg["input_size"][-2])
        interpolation = str(cfg.get("interpolation") or "bilinear")
        if interpolation == "random":  # a training-time choice in timm; eval uses bilinear
            interpolation = "bilinear"
        mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
        std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
        if len(mean) != 3 or len(std) != 3:
            raise ConfigError(f"mean and std need 3 values (RGB), got mean={mean} std={std}")
        return cls(
            size=size,
            crop_pct=float(cfg.get("crop_pct") or DEFAULT_CROP_PCT),
            interpolation=interpolation,
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
        )

    @property
    def resize_size(self) -> int:
        """Length of the shorter side after resizing, before the crop (floored, as timm does)."""
        return math.floor(self.size / self.crop_pct)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Resize, center crop and convert an RGB image to a uint8 tensor of shape (3, size, size)."""
        mode = InterpolationMode(self.interpolation)  # the enum's values are timm's names
        resized = F.resize(img, [self.resize_size], interpolation=mode, antialias=True)
        cropped = F.center_crop(resized, [self.size, self.size])
        tensor: torch.Tensor = F.pil_to_tensor(cropped)
        return tensor

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (for run metadata and ONNX export)."""
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["resize_size"] = self.resize_size
        return data


def make_augment(preset: str, size: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Training augmentation on uint8 (3, S, S) tensors; returns a uint8 (3, size, size) tensor.

    Presets: ``none`` (no augmentation, returns None), ``crop`` (random resized crop, scale 0.6-1: for data whose
    mirror image is another class, e.g. digits and text), ``light`` (crop and horizontal flip), ``strong`` (light +
    TrivialAugmentWide + random erasing with p=0.25).

    Args:
        preset: One of ``AUGMENT_PRESETS``.
        size: Output side in pixels.

    Returns:
        A callable transform, or None for ``none``.

    Raises:
        ConfigError: Unknown preset.
    """
    if preset not in AUGMENT_PRESETS:
        raise ConfigError(
            f"unknown augmentation preset '{preset}'{did_you_mean(preset, AUGMENT_PRESETS)}: "
            f"use one of {', '.join(AUGMENT_PRESETS)}"
        )
    if preset == "none":
        return None
    steps: list[Callable[..., Any]] = [v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True)]
    if preset != "crop":
        steps.append(v2.RandomHorizontalFlip())
    if preset == "strong":
        # RandomErasing fills with 0 by default, which keeps the uint8 dtype.
        steps += [v2.TrivialAugmentWide(), v2.RandomErasing(p=0.25)]
    augment: Callable[[torch.Tensor], torch.Tensor] = v2.Compose(steps)
    return augment


@functools.lru_cache(maxsize=16)
def _affine(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    # (x / 255 - mean) / std == x * scale + offset, computed once per (mean, std, device, dtype).
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * s)).to(device=device, dtype=dtype).view(1, -1, 1, 1)
    offset = (-m / s).to(device=device, dtype=dtype).view(1, -1, 1, 1)
    return scale, offset


def normalize(
    batch_uint8: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    channels_last: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Turn a uint8 NCHW batch into normalised floats: ``(x / 255 - mean) / std``.

    One fused multiply-add on the whole batch (``torch.addcmul``) with cached per-channel constants.

    Args:
        batch_uint8: Tensor of shape (N, C, H, W), dtype uint8, on any device.
        mean: Per-channel mean on the 0..1 scale.
        std: Per-channel standard deviation on the 0..1 scale.
        channels_last: Return the batch in ``torch.channels_last`` memory format (faster convolutions).
        dtype: Floating dtype of the result.

    Returns:
        The normalised batch, same shape, on the same device.
    """
    if batch_uint8.dim() != 4:
        raise ValueError(f"normalize expects an NCHW batch, got shape {tuple(batch_uint8.shape)}")
    scale, offset = _affine(tuple(float(v) for v in mean), tuple(float(v) for v in std), batch_uint8.device, dtype)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = batch_uint8.to(dtype=dtype, memory_format=memory_format)
    return torch.addcmul(offset, x, scale).contiguous(memory_format=memory_format)
