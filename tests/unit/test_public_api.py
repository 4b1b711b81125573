from __future__ import annotations

import thaw


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
    for name in thaw.__all__:
        assert getattr(thaw, name) is not None
    assert issubclass(thaw.DataError, thaw.ThawError)
    assert sorted(dir(thaw)) == sorted(thaw.__all__)
