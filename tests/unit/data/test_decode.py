"""decode_image: every odd file becomes an 8-bit RGB image or a DecodeError with a reason."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from thaw.data.decode import MAX_IMAGE_PIXELS, DecodeError, decode_image, display_path

from .conftest import Corpus, save_image, write_huge_png


def pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


def reason_of(path: Path | str, **kwargs: int) -> str:
    with pytest.raises(DecodeError) as info:
        decode_image(path, **kwargs)
    return str(info.value.reason)


def test_sixteen_bit_gray_is_scaled_not_clipped(corpus: Corpus) -> None:
    arr = pixels(decode_image(corpus.train / "ünïcode label with spaces" / "gray16.png"))
    # written: [[0, 32768], [65535, 1000]]; a plain convert would clip 32768 and 1000 to 255
    assert arr[0, 0].tolist() == [0, 0, 0]
    assert arr[1, 0].tolist() == [255, 255, 255]
    assert abs(int(arr[0, 1, 0]) - 128) <= 1
    assert arr[1, 1, 0] == 4  # 1000 / 257 = 3.9


def test_float_and_32bit_images(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)).save(tmp_path / "f.tiff")
    assert pixels(decode_image(tmp_path / "f.tiff"))[:, :, 0].tolist() == [[0, 128], [255, 64]]
    Image.fromarray(np.array([[-10.0, 0.0], [10.0, 0.0]], dtype=np.float32)).save(tmp_path / "g.tiff")
    assert pixels(decode_image(tmp_path / "g.tiff"))[:, :, 0].tolist() == [[0, 128], [255, 128]]
    Image.fromarray(np.array([[0, 65535]], dtype=np.int32), mode="I").save(tmp_path / "i.tiff")
    assert pixels(decode_image(tmp_path / "i.tiff"))[:, :, 0].tolist() == [[0, 255]]


def test_alpha_is_composited_on_white(corpus: Corpus) -> None:
    odd = corpus.train / "ünïcode label with spaces"
    assert (pixels(decode_image(odd / "rgba.png")) == 255).all()  # fully transparent red -> white
    pal = pixels(decode_image(odd / "palette_transparent.png"))
    assert pal[0, 0].tolist() == [255, 255, 255]  # transparent index -> white
    assert pal[0, 15].tolist() == [255, 0, 0]
    assert pixels(decode_image(odd / "la.png"))[0, 0].tolist() == [255, 255, 255]  # alpha 0


def test_partial_alpha_blends(tmp_path: Path) -> None:
    Image.new("RGBA", (4, 4), (0, 0, 0, 128)).save(tmp_path / "half.png")
    value = pixels(decode_image(tmp_path / "half.png"))[0, 0, 0]
    assert 120 <= value <= 135


def test_cmyk_gif_exif_and_tiny(corpus: Corpus) -> None:
    odd = corpus.train / "ünïcode label with spaces"
    assert pixels(decode_image(odd / "cmyk.jpg")).min() >= 250  # CMYK (0,0,0,0) is white
    gif = pixels(decode_image(odd / "anim.gif"))
    assert gif[0, 0].tolist() == [255, 0, 0]  # first frame, not the blue second one
    rotated = decode_image(odd / "rotated.jpg")
    assert rotated.size == (20, 40)  # stored 40x20 with orientation 6
    assert decode_image(odd / "tiny.png").size == (1, 1)


@pytest.mark.parametrize("name", ["pic.tiff", "pic.bmp", "pic.webp", "plain0.jpg"])
def test_containers(corpus: Corpus, name: str) -> None:
    assert decode_image(corpus.train / "good" / name).mode == "RGB"


def test_broken_files_have_reasons(corpus: Corpus) -> None:
    good = corpus.train / "good"
    assert reason_of(good / "truncated.jpg") == "truncated image file"
    assert reason_of(good / "empty.jpg") == "empty file (0 bytes)"
    assert reason_of(good / "notes.jpg") == "not an image (looks like text/HTML)"
    assert reason_of(good / "page.png") == "not an image (looks like text/HTML)"
    assert reason_of(good / "missing.jpg") == "file not found"
    assert "directory" in reason_of(good / "folder.jpg")
    assert "symlink" in reason_of(good / "self.jpg") or "cannot read" in reason_of(good / "self.jpg")


def test_truncated_is_not_loaded_leniently() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_unsupported_and_unknown_binary_formats(tmp_path: Path) -> None:
    Image.new("RGB", (16, 16)).save(tmp_path / "icon.png", format="ICO")
    assert reason_of(tmp_path / "icon.png").startswith("unsupported image format ICO")
    (tmp_path / "noise.jpg").write_bytes(bytes(range(256)) * 4)
    assert reason_of(tmp_path / "noise.jpg").startswith("not a recognised image format")


def test_decompression_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    write_huge_png(tmp_path / "bomb.png", 30000, 30000)
    pil_limit = Image.MAX_IMAGE_PIXELS
    start = time.perf_counter()
    reason = reason_of(tmp_path / "bomb.png")
    assert time.perf_counter() - start < 1.0  # decoding 900 Mpx would take seconds and 0.9-2.7 GB
    assert reason == "image has 900 Mpx, over the 89 Mpx decompression-bomb limit"
    assert Image.MAX_IMAGE_PIXELS == pil_limit == MAX_IMAGE_PIXELS


def test_pixel_budget_is_a_parameter(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png", size=(200, 100))
    assert reason_of(tmp_path / "a.png", max_pixels=10_000) == (
        "image is 200x100 (0.02 Mpx), over the 0.01 Mpx decompression-bomb limit"
    )
    assert decode_image(tmp_path / "a.png", max_pixels=20_000).size == (200, 100)
    # Between Pillow's warning and error thresholds: no warning escapes (pytest turns warnings into errors).
    write_huge_png(tmp_path / "big.png", 10000, 10000)
    assert "10000x10000 (100 Mpx)" in reason_of(tmp_path / "big.png")


def test_non_utf8_name(tmp_path: Path) -> None:
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.png"
    with open(raw, "wb") as f:
        Image.new("RGB", (3, 3), (9, 9, 9)).save(f, format="PNG")
    path = os.fsdecode(raw)
    assert decode_image(path).size == (3, 3)
    shown = display_path(path)
    assert shown.endswith("caf\\xe9.png")
    json.dumps(shown, ensure_ascii=False).encode("utf-8")


def test_display_path_leaves_normal_text_alone() -> None:
    assert display_path("data/ünïcode label/🦭.jpg") == "data/ünïcode label/🦭.jpg"
    assert display_path("a\nb.jpg") == "a\\nb.jpg"
