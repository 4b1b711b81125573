"""Fixtures for the data package: small image folders and a corpus of awkward and broken files."""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def save_image(path: Path, size: tuple[int, int] = (24, 16), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    """Write a small solid-colour image; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_huge_png(path: Path, width: int, height: int) -> None:
    """A valid 1-bit grayscale PNG of any size, written row by row (30000x30000 is about 100 KB on disk)."""
    path.write_bytes(_huge_png_bytes(width, height))


@functools.lru_cache(maxsize=4)
def _huge_png_bytes(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@dataclass
class Corpus:
    """The bad-input corpus: a train folder, a val folder, and a CSV manifest, with the expectations."""

    train: Path
    val: Path
    manifest: Path
    #: File name -> expected outcome: "ok" or a substring of the skip reason.
    expected: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def make_folder(tmp_path: Path) -> Callable[..., Path]:
    """Write ``{class: n_images}`` as a class-per-subfolder PNG folder under tmp_path/name."""

    def make(counts: dict[str, int], name: str = "data", size: tuple[int, int] = (20, 20)) -> Path:
        root = tmp_path / name
        for c, (cls, n) in enumerate(counts.items()):
            for i in range(n):
                save_image(root / cls / f"{i}.png", size, (40 * c % 256, 7 * i % 256, 100))
        return root

    return make


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    """Every awkward file the decoder and scanner must survive, split over two classes."""
    train = tmp_path / "train"
    good, odd = train / "good", train / "ünïcode label with spaces"
    expected: dict[str, str] = {}

    def ok(path: Path) -> None:
        expected[path.name] = "ok"

    # Plain images in both classes, in each supported container.
    for i in range(3):
        ok(save_image(good / f"plain{i}.jpg", color=(10 * i, 100, 200)))
    ok(save_image(good / "pic.tiff"))
    ok(save_image(good / "pic.bmp"))
    Image.new("RGB", (20, 20), (1, 2, 3)).save(good / "pic.webp", lossless=True)
    ok(good / "pic.webp")
    ok(save_image(odd / "tiny.png", size=(1, 1)))

    # Broken files.
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (good / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    expected["truncated.jpg"] = "truncated"
    (good / "empty.jpg").write_bytes(b"")
    expected["empty.jpg"] = "empty file"
    (good / "notes.jpg").write_text("this is a text file, not a photo\n" * 5)
    expected["notes.jpg"] = "looks like text/HTML"
    (good / "page.png").write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    expected["page.png"] = "looks like text/HTML"
    write_huge_png(good / "bomb.png", 30000, 30000)
    expected["bomb.png"] = "decompression-bomb limit"

    # Unusual but valid modes.
    values = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(odd / "gray16.png")
    ok(odd / "gray16.png")
    Image.new("CMYK", (20, 20), (0, 0, 0, 0)).save(odd / "cmyk.jpg")
    ok(odd / "cmyk.jpg")
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(0, (0, 0, 10, 20))
    pal.save(odd / "palette_transparent.png", transparency=0)
    ok(odd / "palette_transparent.png")
    Image.new("LA", (20, 20), (50, 0)).save(odd / "la.png")
    ok(odd / "la.png")
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(odd / "rgba.png")
    ok(odd / "rgba.png")
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(odd / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    ok(odd / "anim.gif")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20), (0, 200, 0)).save(odd / "rotated.jpg", exif=exif)
    ok(odd / "rotated.jpg")
    # A file whose name is not UTF-8 (Latin-1 "café.png"), written through a bytes path.
    save_image(Path(os.fsdecode(os.fsencode(str(odd)) + b"/caf\xe9.png")))
    expected["caf\\xe9.png"] = "ok"

    # Scanner cases.
    (good / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    expected[".DS_Store"] = "hidden file"
    save_image(good / "._plain0.jpg")
    expected["._plain0.jpg"] = "hidden file"
    (good / "readme.txt").write_text("about these images")
    expected["readme.txt"] = "unsupported extension '.txt'"
    ok(save_image(good / "folder.jpg" / "inside.png"))  # a directory named like an image
    (good / "loop").symlink_to(good, target_is_directory=True)
    expected["loop"] = "symlink loop"
    (good / "self.jpg").symlink_to(good / "self.jpg")
    expected["self.jpg"] = "symlink loop"
    (good / "dangling.jpg").symlink_to(good / "missing.jpg")
    expected["dangling.jpg"] = "broken symlink"
    save_image(train / "stray.png")
    expected["stray.png"] = "not inside a class folder"
    (train / ".git").mkdir()
    (train / ".git" / "HEAD").write_text("ref: refs/heads/main\n")  # ignored, not counted

    # Validation: one plain image per class, one of them a byte-identical copy of a train image.
    val = tmp_path / "val"
    (val / "good").mkdir(parents=True)
    (val / "good" / "copy.jpg").write_bytes((good / "plain0.jpg").read_bytes())
    save_image(val / odd.name / "v.png", color=(0, 0, 90))

    # Manifest: relative and absolute paths, a unicode label with spaces, a missing file, an empty label.
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "path,label,notes\n"
        "train/good/plain0.jpg,good,first\n"
        f"{(good / 'plain1.jpg').resolve()},good,absolute\n"
        "train/ünïcode label with spaces/tiny.png,sea lion 🦭,unicode\n"
        "train/good/does_not_exist.jpg,good,missing\n"
        "train/good/plain2.jpg,,no label\n",
        encoding="utf-8",
    )
    return Corpus(train=train, val=val, manifest=manifest, expected=expected)
