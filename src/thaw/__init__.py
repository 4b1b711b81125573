"""thaw: fine-tune pretrained image classifiers, deciding from measurements which layers to thaw.

Example:
    >>> import thaw
    >>> result = thaw.fit("data/train", test="data/test", strategy="lp-ft", img_size=96)  # doctest: +SKIP
    >>> result.test_accuracy  # doctest: +SKIP

The public names are imported lazily (PEP 562), so ``import thaw.errors`` or ``python -m thaw --help`` does not
pay for importing torch, timm and matplotlib up front.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from thaw.api import EvalResult as EvalResult
    from thaw.api import FitResult as FitResult
    from thaw.api import Prediction as Prediction
    from thaw.api import Run as Run
    from thaw.api import evaluate as evaluate
    from thaw.api import fit as fit
    from thaw.api import load_run as load_run
    from thaw.api import predict as predict
    from thaw.config import FitConfig as FitConfig
    from thaw.errors import CheckpointError as CheckpointError
    from thaw.errors import ConfigError as ConfigError
    from thaw.errors import DataError as DataError
    from thaw.errors import ModelError as ModelError
    from thaw.errors import ThawError as ThawError

_LAZY = {
    "fit": "thaw.api",
    "evaluate": "thaw.api",
    "predict": "thaw.api",
    "load_run": "thaw.api",
    "FitResult": "thaw.api",
    "EvalResult": "thaw.api",
    "Prediction": "thaw.api",
    "Run": "thaw.api",
    "FitConfig": "thaw.config",
    "ThawError": "thaw.errors",
    "ConfigError": "thaw.errors",
    "DataError": "thaw.errors",
    "ModelError": "thaw.errors",
    "CheckpointError": "thaw.errors",
}

__all__ = [
    "__version__",
    "fit",
    "evaluate",
    "predict",
    "load_run",
    "FitResult",
    "EvalResult",
    "Prediction",
    "Run",
    "FitConfig",
    "ThawError",
    "ConfigError",
    "DataError",
    "ModelError",
    "CheckpointError",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'thaw' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
