"""Benchmark tasks as image folders, drawn exactly as /work/shared/BENCHMARKS.md (docs/benchmarks.md) says.

``python -m bench.fashion --task fashion100 --seed 0 --root bench/data`` writes
``bench/data/fashion100/seed0/{train,val,test}/<class>/<idx>.png`` (idx = index in the source IDX file).

Tasks:
  fashion100  100 train + 50 val per class, from the Fashion-MNIST train split, ``default_rng(seed)`` per class
  fashion10    10 train + 10 val per class, same drawing
  tiny          4 train +  2 val per class and 50 test images (for smoke tests only, not a benchmark)
Test set (fashion100/fashion10): ``default_rng(12345).choice(10000, 2000, replace=False)`` of t10k.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from bench.make_sample_data import CLASS_NAMES, IDX_DIR, load_split, write_png

SPLITS = ("train", "val", "test")
TEST_SEED = 12345


@dataclass(frozen=True)
class TaskSpec:
    """Sizes of one benchmark task."""

    train_per_class: int
    val_per_class: int
    test_images: int


TASKS: dict[str, TaskSpec] = {
    "fashion100": TaskSpec(100, 50, 2000),
    "fashion10": TaskSpec(10, 10, 2000),
    "tiny": TaskSpec(4, 2, 50),
}


def draw_indices(
    task: str, seed: int, train_y: NDArray[np.uint8], test_y: NDArray[np.uint8]
) -> dict[str, list[tuple[int, int]]]:
    """Draw the (source index, label) pairs of each split.

    Train and val: for each class, ``default_rng(seed)`` (a fresh generator per class, as the protocol says)
    permutes that class's train-split indices; the first ``train_per_class`` go to train, the next
    ``val_per_class`` to val, so the two never overlap. Test: ``default_rng(12345).choice(10000, n, replace=False)``
    over t10k, independent of ``seed``.

    Args:
        task: A key of ``TASKS``.
        seed: Benchmark seed (0, 1, 2).
        train_y: Labels of the Fashion-MNIST train split.
        test_y: Labels of the t10k split.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` with ``(index, label)`` pairs.
    """
    spec = TASKS[task]
    out: dict[str, list[tuple[int, int]]] = {s: [] for s in SPLITS}
    for label in range(len(CLASS_NAMES)):
        rng = np.random.default_rng(seed)
        idx = rng.permutation(np.flatnonzero(train_y == label))
        out["train"] += [(int(i), label) for i in idx[: spec.train_per_class]]
        stop = spec.train_per_class + spec.val_per_class
        out["val"] += [(int(i), label) for i in idx[spec.train_per_class : stop]]
    test_idx = np.random.default_rng(TEST_SEED).choice(len(test_y), spec.test_images, replace=False)
    out["test"] = [(int(i), int(test_y[i])) for i in test_idx]
    return out


def materialize(task: str, seed: int, root: Path, idx_dir: Path = IDX_DIR) -> Path:
    """Write one task/seed as class folders of PNGs; skip if already complete.

    Args:
        task: ``fashion100``, ``fashion10`` or ``tiny``.
        seed: Seed of the train/val draw.
        root: Folder under which ``<task>/seed<seed>/`` is written.
        idx_dir: Folder with the Fashion-MNIST IDX files.

    Returns:
        The task folder ``root/<task>/seed<seed>`` (holding train/, val/, test/).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    task_dir = Path(root) / task / f"seed{seed}"
    marker = task_dir / "manifest.json"
    if marker.is_file():
        return task_dir
    train_x, train_y = load_split("train", idx_dir)
    test_x, test_y = load_split("t10k", idx_dir)
    drawn = draw_indices(task, seed, train_y, test_y)
    for split, pairs in drawn.items():
        images = test_x if split == "test" else train_x
        for i, label in pairs:
            write_png(images[i], task_dir / split / CLASS_NAMES[label] / f"{i}.png")
    # Written last: its presence means every PNG above is on disk (an interrupted run is redone).
    manifest = {"task": task, "seed": seed, "classes": list(CLASS_NAMES), "indices": drawn}
    marker.write_text(json.dumps(manifest), encoding="utf-8")
    return task_dir


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description="Write a Fashion-MNIST benchmark task as image folders.")
    parser.add_argument("--task", choices=sorted(TASKS), default="fashion100")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=Path("bench/data"))
    args = parser.parse_args(argv)
    path = materialize(args.task, args.seed, args.root)
    print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
