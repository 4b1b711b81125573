"""A realistic fake run directory, written exactly as the run-directory contract (docs/architecture.md) says."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from thaw.report.metrics import compute_metrics

CLASSES = ["cat", "dog", "fox & <hen>"]
GROUPS = [("stem", 464), ("stages.0", 5_200), ("stages.1", 41_000), ("stages.2", 350_000), ("head", 3_843)]
PHASES: list[dict[str, Any]] = [
    {"index": 0, "name": "linear probe", "trainable_groups": ["head"], "epochs": 3, "lr": 1e-2},
    {"index": 1, "name": "last-2", "trainable_groups": ["stages.2", "head"], "epochs": 3, "lr": 1e-3},
    {"index": 2, "name": "full", "trainable_groups": [g for g, _ in GROUPS], "epochs": 3, "lr": 3e-4},
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def metrics_rows() -> list[dict[str, Any]]:
    """Nine epochs over three phases; drift and gradient norms are recorded from phase 1 on."""
    rows = []
    epoch = 0
    for phase in PHASES:
        for _ in range(phase["epochs"]):
            epoch += 1
            row: dict[str, Any] = {
                "epoch": epoch,
                "phase": phase["index"],
                "trainable_groups": phase["trainable_groups"],
                "lr": phase["lr"],
                "train_loss": 1.2 * math.exp(-0.3 * epoch),
                "train_accuracy": 1 - 0.6 * math.exp(-0.35 * epoch),
                "val_loss": 1.25 * math.exp(-0.25 * epoch) + 0.05,
                "val_accuracy": 1 - 0.62 * math.exp(-0.3 * epoch),
                "seconds": 2.5,
                "images_per_second": 120.0,
            }
            if phase["index"] > 0:
                row["group_drift"] = {g: 0.001 * epoch * (i + 1) for i, g in enumerate(phase["trainable_groups"])}
                row["grad_norm"] = {g: 0.5 / (i + 1) for i, g in enumerate(phase["trainable_groups"])}
                row["gap_warning"] = epoch == 9
            rows.append(row)
    return rows


def make_images(root: Path) -> dict[str, Path]:
    """Real image files: small PNGs (28 px grey, like Fashion-MNIST) and one larger JPEG photo."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = {}
    for i in range(30):
        p = root / f"img_{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), mode="L").save(p)
        paths[p.name] = p
    p = root / "photo.jpg"
    Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8), mode="RGB").save(p, quality=90)
    paths[p.name] = p
    return paths


def predictions(image_dir: Path, split: str) -> list[dict[str, Any]]:
    """40 predictions: 28 wrong ones with distinct confidences (one image missing on disk), 12 right ones."""
    rows = []
    for i in range(40):
        label = i % 3
        wrong = i < 28
        pred = (label + 1) % 3 if wrong else label
        conf = 0.40 + 0.02 * i if wrong else 0.9  # wrong ones: 0.40 .. 0.94, distinct
        probs = [(1 - conf) / 2] * 3
        probs[pred] = conf
        if i < 27:
            path = image_dir / f"img_{i:02d}.png"
        elif i == 27:
            path = image_dir / "photo.jpg"
        else:
            path = image_dir / f"img_{i - 28:02d}.png"
        rows.append({"path": str(path), "split": split, "label": label, "pred": pred, "probs": probs})
    # The second most confidently wrong prediction points to a file that no longer exists.
    rows[26]["path"] = str(image_dir / "deleted_since.png")
    return rows


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Path]:
    """Build a run directory; ``test=False`` writes one evaluated on val, without a test set."""

    def build(name: str = "demo", test: bool = True) -> Path:
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        images = tmp_path / "images"
        if not images.exists():
            make_images(images)
        split = "test" if test else "val"
        preds = predictions(images, split)
        phases = [
            dict(p, best_val_accuracy=0.7 + 0.1 * p["index"], reason=f"scheduled by strategy <{p['name']}>")
            for p in PHASES
        ]
        data = {"train": 120, "val": 30, "test": 40 if test else None}
        summary = {
            "strategy": "auto",
            "model": "test_efficientnet",
            "model_source": "timm (pretrained=False)",
            "img_size": 64,
            "classes": CLASSES,
            "groups": [{"name": g, "num_params": n} for g, n in GROUPS],
            "phases": phases,
            "best_val_accuracy": 0.9,
            "test_accuracy": 0.3 if test else None,
            "wall_seconds": 754.2,
            "train_images_per_second": 118.5,
            "decisions": [
                {
                    "phase": 1,
                    "decision": "thaw stages.2",
                    "reason": "val accuracy plateaued & gradient signal highest in stages.2",
                    "signals": {"logme_stages.2": 1.234, "val_gain": 0.004},
                }
            ],
            "warnings": ["class 'fox & <hen>' has only 40 training images"],
            "data": data,
        }
        audit = {
            "classes": {
                c: {"train": 40, "val": 10, **({"test": 13 + (i == 0)} if test else {})} for i, c in enumerate(CLASSES)
            },
            "skipped": [
                {"path": "/data/train/cat/broken.jpg", "reason": "truncated JPEG", "split": "train"},
                {"path": "/data/train/dog/notes.txt", "reason": "unsupported extension .txt", "split": "train"},
            ],
            "duplicates": [
                {
                    "hash": "a1b2c3d4e5f6a7b8c9d0",
                    "paths": ["/data/train/cat/1.png", "/data/val/cat/9.png"],
                    "splits": ["train", "val"],
                }
            ],
            "cross_split_duplicates": 1,
            "imbalance": 1.08,
        }
        (run / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        (run / "audit.json").write_text(json.dumps(audit, indent=2), encoding="utf-8")
        write_jsonl(run / "metrics.jsonl", metrics_rows())
        write_jsonl(run / "predictions.jsonl", preds)
        if test:
            metrics = compute_metrics(
                np.array([p["label"] for p in preds]), np.array([p["probs"] for p in preds]), CLASSES
            )
            (run / "eval.json").write_text(json.dumps({**metrics, "split": split, "data": data}), encoding="utf-8")
        return run

    return build
