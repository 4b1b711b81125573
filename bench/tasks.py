"""The benchmark suite's tasks: real image data from Debian and PyPI packages, written as image folders.

``python -m bench.tasks --tasks all --seeds 0,1,2 --root bench/data`` writes, for each task and seed,
``ROOT/<task>/seed<seed>/{train,val,test}/<class>/<id>.png`` and a ``manifest.json`` (written last: its presence
means the folder is complete, so a second call does nothing). ``python -m bench.tasks --list`` prints the registry.

Split rules (both seeded and stratified, one fresh ``numpy.random.default_rng(seed)`` per class, classes in label
order):

* ``fashion*``: bench/fashion.py's rule, unchanged so that older figures stay comparable: train/val drawn from the
  Fashion-MNIST train split, test = ``default_rng(12345).choice(10000, 2000)`` of t10k, the same for every seed.
* pool tasks (one pool of labelled images): the class's indices are permuted; the first ``train`` go to train, the
  next ``val`` to val, the next ``test`` (or all the rest) to test. The test set therefore changes with the seed.
* ``sample``: thaw's embedded demo split, copied as it ships (the seed changes only the run's seed).

No image is generated: every pixel comes from the package's files (RGBA cut-outs are composited on white, as thaw's
decoder does, so that every method sees the same RGB pixels; 0..16 digit counts are scaled to 0..255).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

SPLITS = ("train", "val", "test")
OPENCV_DIGITS = Path("/usr/share/doc/opencv-doc/examples/data/digits.png")
TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")


@dataclass(frozen=True)
class Pool:
    """A labelled pool of real images.

    Attributes:
        images: One uint8 array per image (H x W grayscale or H x W x 3 RGB).
        labels: Class index of each image.
        classes: Folder name of each class index.
        ids: File stem of each image (unique, stable across versions of this code: source index or file name).
    """

    images: list[NDArray[np.uint8]]
    labels: NDArray[np.int64]
    classes: tuple[str, ...]
    ids: list[str]


@dataclass(frozen=True)
class Task:
    """One benchmark task.

    Attributes:
        name: Folder name under the root.
        source: Where the pixels come from (package and path).
        licence: The data's licence.
        img_size: Input resolution every method uses (``--img-size``).
        flip: Whether a horizontal flip preserves the labels (the tutorial loop and fastai flip only then).
        train: Training images per class.
        val: Validation images per class.
        test: Test images per class for pool tasks (None: all the rest); for fashion, the t10k draw size.
        kind: ``fashion``, ``pool`` or ``sample``.
        load: Loads the pool (pool tasks only).
        install: What to install if the source is missing.
        notes: Anything else a reader of the figures should know.
        benchmark: False for smoke-test tasks that are not part of the suite.
    """

    name: str
    source: str
    licence: str
    img_size: int
    flip: bool
    train: int
    val: int
    test: int | None
    kind: str
    load: Callable[[], Pool] | None = None
    install: str = ""
    notes: str = ""
    benchmark: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------ sources
def load_sklearn_digits() -> Pool:
    """scikit-learn's bundled copy of the UCI optical handwritten digits (1797 images, 8x8, counts 0..16)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = [np.round(img * (255.0 / 16.0)).astype(np.uint8) for img in d.images]
    return Pool(
        images, d.target.astype(np.int64), tuple(str(i) for i in range(10)), [str(i) for i in range(len(images))]
    )


def load_opencv_digits(path: Path = OPENCV_DIGITS) -> Pool:
    """OpenCV's sample ``digits.png`` (2000 x 1000 px): 50 rows x 100 columns of 20 x 20 digits, 5 rows per class.

    The layout is the one OpenCV's own ``samples/python/digits.py`` reads (label = row // 5).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: apt-get install opencv-doc")
    sheet = np.asarray(Image.open(path).convert("L"))
    rows, cols = sheet.shape[0] // 20, sheet.shape[1] // 20
    images, labels, ids = [], [], []
    for r in range(rows):
        for c in range(cols):
            images.append(np.ascontiguousarray(sheet[20 * r : 20 * r + 20, 20 * c : 20 * c + 20]))
            labels.append(r // (rows // 10))
            ids.append(f"r{r:02d}c{c:02d}")
    return Pool(images, np.asarray(labels, dtype=np.int64), tuple(str(i) for i in range(10)), ids)


#: Tux Paint stamp folders (photographic cut-outs) per class; ``cartoon`` subfolders (drawings) are left out.
STAMP_CLASSES: dict[str, tuple[str, ...]] = {
    "birds": ("animals/birds",),
    "flowers": ("plants/flowers",),
    "fruit": ("food/fruit",),
    "mammals": ("animals/mammals",),
    "vegetables": ("food/vegetables",),
}


def flatten_on_white(im: Image.Image) -> NDArray[np.uint8]:
    """Any Pillow image as H x W x 3 uint8, alpha (also palette transparency) composited on white."""
    rgba = im.convert("RGBA")
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return np.asarray(out)


def load_tuxpaint_stamps(root: Path = TUXPAINT_STAMPS) -> Pool:
    """Photographic stamps of Debian's ``tuxpaint-stamps-default``, one class per folder group (recursively)."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is missing: apt-get install tuxpaint-stamps-default")
    images, labels, ids = [], [], []
    for label, (_name, folders) in enumerate(sorted(STAMP_CLASSES.items())):
        for folder in folders:
            for p in sorted((root / folder).rglob("*.png")):
                if "cartoon" in p.relative_to(root).parts:
                    continue
                with Image.open(p) as im:
                    images.append(flatten_on_white(im))
                labels.append(label)
                ids.append(str(p.relative_to(root / folder).with_suffix("")).replace("/", "__"))
    return Pool(images, np.asarray(labels, dtype=np.int64), tuple(sorted(STAMP_CLASSES)), ids)


# ------------------------------------------------------------------------------------------------------ registry
_FASHION_SOURCE = "Debian dataset-fashion-mnist, /usr/share/datasets/fashion-mnist/*.gz (IDX)"
_FASHION_LICENCE = "MIT (Zalando SE 2017)"
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "fashion10",
            _FASHION_SOURCE,
            _FASHION_LICENCE,
            96,
            True,
            10,
            10,
            2000,
            "fashion",
            install="apt-get install dataset-fashion-mnist",
        ),
        Task(
            "fashion100",
            _FASHION_SOURCE,
            _FASHION_LICENCE,
            96,
            True,
            100,
            50,
            2000,
            "fashion",
            install="apt-get install dataset-fashion-mnist",
        ),
        Task(
            "sample",
            "thaw's embedded demo data, thaw.data.sample.sample_data_dir() (Fashion-MNIST subset)",
            _FASHION_LICENCE,
            64,
            True,
            40,
            20,
            30,
            "sample",
            notes="fixed split as shipped (default_rng(2024), bench/make_sample_data.py); identical for every seed",
        ),
        Task(
            "digits",
            "scikit-learn (PyPI) sklearn.datasets.load_digits(): UCI optical recognition of handwritten digits, "
            "bundled in the wheel",
            "BSD-3-Clause (scikit-learn); data: UCI ML repository, CC BY 4.0 (Alpaydin & Kaynak 1998)",
            64,
            False,
            10,
            10,
            None,
            "pool",
            load=load_sklearn_digits,
            notes="8x8 px, 17 grey levels, white ink on black: far from ImageNet; fewer than 20 train images per class",
        ),
        Task(
            "cvdigits",
            "Debian opencv-doc, /usr/share/doc/opencv-doc/examples/data/digits.png (OpenCV sample data)",
            "Apache-2.0 AND BSD-3-Clause (OpenCV, per Debian's copyright file)",
            64,
            False,
            30,
            10,
            100,
            "pool",
            load=load_opencv_digits,
            install="apt-get install opencv-doc",
            notes="20x20 px handwritten digits, 500 per class in the sheet: far from ImageNet",
        ),
        Task(
            "stamps",
            "Debian tuxpaint-stamps-default, /usr/share/tuxpaint/stamps/{animals/birds,plants/flowers,food/fruit,"
            "animals/mammals/**,food/vegetables} (photographic PNG cut-outs, cartoon/ subfolders excluded)",
            "GPL-2+ (Tux Paint stamps, Bill Kendrick et al.)",
            96,
            True,
            8,
            4,
            None,
            "pool",
            load=load_tuxpaint_stamps,
            install="apt-get install tuxpaint-stamps-default",
            notes="natural colour photographs of objects on white, 18-54 per class; the test set is small "
            "(all the rest: ~110 images, 6 for vegetables), so one image is about one point",
        ),
        Task(
            "digits-tiny",
            "scikit-learn load_digits() (as digits)",
            "BSD-3-Clause / CC BY 4.0 (as digits)",
            32,
            False,
            3,
            2,
            5,
            "pool",
            load=load_sklearn_digits,
            notes="smoke tests only",
            benchmark=False,
        ),
        Task(
            "tiny",
            _FASHION_SOURCE,
            _FASHION_LICENCE,
            32,
            True,
            4,
            2,
            50,
            "fashion",
            notes="smoke tests only",
            benchmark=False,
        ),
    )
}
SUITE: tuple[str, ...] = tuple(name for name, t in TASKS.items() if t.benchmark)


# ------------------------------------------------------------------------------------------------------ splits
def draw_pool(labels: NDArray[np.int64], seed: int, train: int, val: int, test: int | None) -> dict[str, list[int]]:
    """Seeded, stratified split of a pool: per class, ``default_rng(seed)`` permutes the class's indices.

    The first ``train`` go to train, the next ``val`` to val, the next ``test`` (all the rest when None) to test.

    Raises:
        ValueError: a class has fewer than ``train + val + 1`` images (or ``train + val + test``).
    """
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for label in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == label)
        need = train + val + (test or 1)
        if len(members) < need:
            raise ValueError(f"class {label} has {len(members)} images, the split needs {need}")
        idx = np.random.default_rng(seed).permutation(members)
        out["train"] += idx[:train].tolist()
        out["val"] += idx[train : train + val].tolist()
        rest = idx[train + val :]
        out["test"] += (rest if test is None else rest[:test]).tolist()
    return out


def _write(image: NDArray[np.uint8], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, optimize=True)


def materialize(name: str, seed: int, root: Path) -> Path:
    """Write one task/seed as class folders of PNGs (skipped when its manifest exists); return the folder."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    task = TASKS[name]
    if task.kind == "fashion":
        from bench.fashion import materialize as fashion_materialize

        return fashion_materialize(name, seed, Path(root))
    task_dir = Path(root) / name / f"seed{seed}"
    marker = task_dir / "manifest.json"
    if marker.is_file():
        return task_dir
    if task_dir.exists():  # an interrupted earlier write: start over
        shutil.rmtree(task_dir)
    manifest: dict[str, Any] = {"task": name, "seed": seed, "source": task.source, "licence": task.licence}
    if task.kind == "sample":
        from thaw.data.sample import SAMPLE_CLASSES, sample_data_dir

        src = sample_data_dir()
        for split in SPLITS:
            shutil.copytree(src / split, task_dir / split)
        manifest["classes"] = list(SAMPLE_CLASSES)
        manifest["files"] = {
            s: sorted(str(p.relative_to(task_dir / s)) for p in (task_dir / s).rglob("*.png")) for s in SPLITS
        }
    else:
        assert task.load is not None
        pool = task.load()
        drawn = draw_pool(pool.labels, seed, task.train, task.val, task.test)
        for split, indices in drawn.items():
            for i in indices:
                _write(pool.images[i], task_dir / split / pool.classes[pool.labels[i]] / f"{pool.ids[i]}.png")
        manifest["classes"] = list(pool.classes)
        manifest["ids"] = {s: [pool.ids[i] for i in idx] for s, idx in drawn.items()}
    # Written last: its presence means every PNG above is on disk.
    marker.write_text(json.dumps(manifest), encoding="utf-8")
    return task_dir


def counts(task_dir: Path) -> dict[str, dict[str, int]]:
    """Images per class in each split of a task folder."""
    return {
        s: {c.name: sum(1 for _ in c.glob("*.png")) for c in sorted((task_dir / s).iterdir()) if c.is_dir()}
        for s in SPLITS
    }


def describe(names: Sequence[str], root: Path, seed: int = 0) -> str:
    """A Markdown table of tasks (materialising seed ``seed`` to count the images)."""
    lines = [
        "| task | px | flip | classes | train / val / test images (seed 0) | per class train+val | source | licence |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        t = TASKS[name]
        c = counts(materialize(name, seed, root))
        sizes = " / ".join(str(sum(c[s].values())) for s in SPLITS)
        lines.append(
            f"| {name} | {t.img_size} | {'yes' if t.flip else 'no'} | {len(c['train'])} | {sizes} | "
            f"{t.train}+{t.val} | {t.source} | {t.licence} |"
        )
    return "\n".join(lines)


def parse_names(spec: str) -> list[str]:
    """``all`` -> the suite's tasks; else a comma-separated list of registry names."""
    names = list(SUITE) if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}: choose from {', '.join(TASKS)}")
    return names


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description="Write the benchmark suite's tasks as image folders.")
    parser.add_argument("--tasks", default="all", help=f"comma-separated from {', '.join(TASKS)}, or all")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", type=Path, default=Path("bench/data"))
    parser.add_argument("--list", action="store_true", help="print the tasks as a Markdown table (seed 0)")
    args = parser.parse_args(argv)
    names = parse_names(args.tasks)
    if args.list:
        print(describe(names, args.root))
        return
    for name in names:
        for seed in (int(s) for s in args.seeds.split(",")):
            path = materialize(name, seed, args.root)
            print(f"{path}: {counts(path)}", file=sys.stderr)


if __name__ == "__main__":
    main()
