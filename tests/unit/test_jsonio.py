"""Atomic file writes and strict JSON."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from thaw import jsonio
from thaw.jsonio import atomic_write_bytes, atomic_write_text, json_safe, write_json


def test_write_json_is_strict_and_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text("old")
    out = write_json(path, {"a": float("nan"), "b": np.float32(0.5), "c": (1, math.inf), "d": tmp_path, 3: "x"})
    assert out == path
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == {"a": None, "b": 0.5, "c": [1, None], "d": str(tmp_path), "3": "x"}
    assert "NaN" not in text and text.endswith("\n")
    assert sorted(os.listdir(tmp_path)) == ["summary.json"]  # no temporary file left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert json_safe({"k": [np.int64(3)]}) == {"k": [3]}


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "report.html"
    atomic_write_text(path, "<p>old</p>")

    def fail(_src: object, _dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jsonio.os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(path, b"<p>new</p>")
    assert path.read_text() == "<p>old</p>"
    assert sorted(os.listdir(tmp_path)) == ["report.html"]  # the temporary file is removed


def test_atomic_write_text_encodes_utf8(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "m.csv", "path,label\r\nü.png,sea lion 🦭\r\n")
    assert (tmp_path / "m.csv").read_bytes() == "path,label\r\nü.png,sea lion 🦭\r\n".encode()
