from __future__ import annotations

import importlib

import thaw
import thaw.api
import thaw.inference


def test_public_api_is_explicit_and_importable() -> None:
    assert thaw.__all__ == [
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
    # each lazy name is the object its module defines (inference lives in thaw.inference, re-exported by thaw.api)
    for name in thaw.__all__[1:]:
        assert getattr(thaw, name) is getattr(importlib.import_module(thaw._LAZY[name]), name)
    assert thaw.predict is thaw.inference.predict and thaw.Run is thaw.inference.Run
    assert thaw.fit is thaw.api.fit and isinstance(thaw.__version__, str)
    assert set(thaw.api.__all__) == {
        "fit",
        "evaluate",
        "predict",
        "load_run",
        "FitResult",
        "EvalResult",
        "Prediction",
        "Run",
    }
    assert issubclass(thaw.DataError, thaw.ThawError)
    assert sorted(dir(thaw)) == sorted(thaw.__all__)
