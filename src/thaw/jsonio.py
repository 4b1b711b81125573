"""Files thaw writes: strict JSON (NaN/inf become null) and atomic replacement of a whole file.

Every file a reader may open while thaw runs (summary.json, compare.json, report.html, a CSV manifest) goes
through ``atomic_write_bytes``: a temporary file in the same folder, flushed to disk, renamed over the target.
A reader, or a run killed at any moment, sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_text", "json_safe", "write_json"]


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps`` writes as strict JSON: NaN/inf -> null, paths -> str, numpy scalars ->
    Python numbers."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically (temporary file in the same folder, fsync, ``os.replace``).

    The temporary file is hidden (``.NAME.*.tmp``) and removed on any failure; the result is readable by all
    (mode 0644), as a file written with ``open`` under the usual umask.

    Args:
        path: The file to write; its folder must exist.
        data: The complete new content.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        OSError: the folder cannot be written (the old file, if any, is left as it was).
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; run files are meant to be read and shared
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """``atomic_write_bytes`` of ``text`` encoded (UTF-8 by default)."""
    return atomic_write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented strict JSON (see ``json_safe``), atomically.

    Example:
        >>> write_json("runs/x/summary.json", {"best_val_accuracy": float("nan")})  # doctest: +SKIP
    """
    return atomic_write_text(path, json.dumps(json_safe(data), indent=2, ensure_ascii=False) + "\n")
