"""Write thaw's embedded demo dataset: a small Fashion-MNIST subset as class folders of PNGs.

Reproducible: ``python -m bench.make_sample_data`` rewrites ``src/thaw/data/sample/fashion`` byte for byte
(same numpy generator, same Pillow settings). Source: Debian's ``dataset-fashion-mnist`` IDX files.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from thaw.data.sample import SAMPLE_CLASSES

IDX_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Official Fashion-MNIST class names, spelled so they are safe as folder names (thaw ships the same list).
CLASS_NAMES: tuple[str, ...] = SAMPLE_CLASSES
SIZES = {"train": 40, "val": 20, "test": 30}
SEED = 2024
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "thaw" / "data" / "sample" / "fashion"

LICENSE_TEXT = """\
Fashion-MNIST subset embedded in thaw as demo data.

Fashion-MNIST: Han Xiao, Kashif Rasul, Roland Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
Benchmarking Machine Learning Algorithms", arXiv:1708.07747, 2017. Zalando Research,
https://github.com/zalandoresearch/fashion-mnist. Obtained via Debian's dataset-fashion-mnist package.

The MIT License (MIT)

Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

README_TEXT = f"""\
thaw demo data: a small subset of Fashion-MNIST (see LICENSE.txt), 28x28 grayscale PNGs in class folders.

  train/<class>/<idx>.png   {SIZES["train"]} per class, from the Fashion-MNIST train split
  val/<class>/<idx>.png     {SIZES["val"]} per class, from the Fashion-MNIST train split (disjoint from train)
  test/<class>/<idx>.png    {SIZES["test"]} per class, from the Fashion-MNIST t10k split

<idx> is the image's index in its source IDX file. Drawn with numpy.random.default_rng({SEED}): for each
class in label order, a permutation of that class's train-split indices gives the first {SIZES["train"]} to
train and the next {SIZES["val"]} to val; then, for each class in label order, {SIZES["test"]} t10k indices
of that class are chosen without replacement. Written with Pillow (optimize=True) by
bench/make_sample_data.py in the thaw repository.
"""


def read_idx(path: Path) -> NDArray[np.uint8]:
    """Read a gzipped IDX file (images or labels) into a uint8 array.

    Args:
        path: The ``*-idx?-ubyte.gz`` file.

    Returns:
        Array of shape ``(n,)`` for labels or ``(n, rows, cols)`` for images.
    """
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def load_split(split: str, idx_dir: Path = IDX_DIR) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """Load one Fashion-MNIST split.

    Args:
        split: ``"train"`` (60k) or ``"t10k"`` (10k).
        idx_dir: Folder with the gzipped IDX files.

    Returns:
        ``(images, labels)`` with shapes ``(n, 28, 28)`` and ``(n,)``.
    """
    images = read_idx(idx_dir / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(idx_dir / f"{split}-labels-idx1-ubyte.gz")
    return images, labels


def write_png(image: NDArray[np.uint8], path: Path) -> None:
    """Write one grayscale image as an optimized PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A 2-D uint8 array becomes a mode "L" image (the mode= argument is deprecated in Pillow 11.3+).
    Image.fromarray(image).save(path, optimize=True)


def make_sample(out: Path = DEFAULT_OUT, idx_dir: Path = IDX_DIR) -> None:
    """Write the demo dataset to ``out`` (replacing what was there).

    Args:
        out: Destination folder (gets train/, val/, test/, LICENSE.txt, README.txt).
        idx_dir: Folder with the Fashion-MNIST IDX files.
    """
    train_x, train_y = load_split("train", idx_dir)
    test_x, test_y = load_split("t10k", idx_dir)
    rng = np.random.default_rng(SEED)
    for split in SIZES:
        if (out / split).exists():
            shutil.rmtree(out / split)
    n_tr, n_va, n_te = SIZES["train"], SIZES["val"], SIZES["test"]
    for label, name in enumerate(CLASS_NAMES):
        idx = rng.permutation(np.flatnonzero(train_y == label))
        for i in idx[:n_tr]:
            write_png(train_x[i], out / "train" / name / f"{i}.png")
        for i in idx[n_tr : n_tr + n_va]:
            write_png(train_x[i], out / "val" / name / f"{i}.png")
    for label, name in enumerate(CLASS_NAMES):
        idx = rng.choice(np.flatnonzero(test_y == label), n_te, replace=False)
        for i in idx:
            write_png(test_x[i], out / "test" / name / f"{i}.png")
    (out / "LICENSE.txt").write_text(LICENSE_TEXT, encoding="utf-8")
    (out / "README.txt").write_text(README_TEXT, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m bench.make_sample_data [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    make_sample(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
