"""Use a finished run: read it back, evaluate its model on labelled data, classify image files.

``thaw.api`` re-exports ``load_run``, ``evaluate``, ``predict`` and their result types; ``onnx_run`` shares
``collect_images`` and ``Prediction`` so ``thaw predict --onnx`` finds and reports the same files.

Example:
    >>> from thaw.inference import predict
    >>> preds, skipped = predict("runs/cats", ["photos/"], top_k=3)  # doctest: +SKIP
    >>> preds[0].top[0]  # doctest: +SKIP
    ('cat', 0.97)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thaw.config import FitConfig
from thaw.data.cache import DecodedImages, decode_all
from thaw.data.sources import find_images, scan
from thaw.data.transforms import Preprocess, normalize
from thaw.data.types import Sample, Skipped
from thaw.errors import CheckpointError, ConfigError, DataError
from thaw.export import load_timm_dir
from thaw.jsonio import write_json
from thaw.rundir import RunDir

__all__ = [
    "EvalResult",
    "Prediction",
    "Run",
    "collect_images",
    "evaluate",
    "infer_probs",
    "load_for_inference",
    "load_run",
    "predict",
]


@dataclass
class EvalResult:
    """What ``evaluate`` returns; ``path`` is the eval JSON it wrote (confusion matrix included)."""

    accuracy: float
    macro_f1: float
    metrics: dict[str, Any]
    skipped: list[Skipped]
    path: Path | None


@dataclass
class Prediction:
    """The top classes of one image file."""

    path: str
    top: list[tuple[str, float]]
    """(label, probability), most probable first."""


@dataclass
class Run:
    """A finished (or interrupted) run directory, read back."""

    run_dir: Path
    config: FitConfig
    summary: dict[str, Any]
    classes: list[str] = field(default_factory=list)

    def load_model(self) -> tuple[torch.nn.Module, list[str], dict[str, Any]]:
        """The fine-tuned model (eval mode), its label names and preprocessing config."""
        return load_timm_dir(RunDir(self.run_dir).model_dir)


def load_run(run_dir: str | os.PathLike[str]) -> Run:
    """Read a run directory written by ``fit``.

    Raises:
        CheckpointError: not a run directory, or it has no exported model yet.
    """
    rd = RunDir(run_dir)
    cfg = rd.read_config()
    summary = rd.read_summary()
    if not rd.has_model():
        raise CheckpointError(
            f"{rd.path} has no exported model: the run did not finish; continue it with `thaw fit --resume {rd.path}`"
        )
    return Run(run_dir=rd.path, config=cfg, summary=summary, classes=list(summary.get("classes", [])))


def load_for_inference(run_dir: str | os.PathLike[str]) -> tuple[torch.nn.Module, list[str], Preprocess]:
    """The model (eval mode), label names and eval preprocessing of a run directory or a bare model folder.

    Raises:
        CheckpointError: neither a finished run directory nor an exported model folder.
    """
    rd = RunDir(run_dir)
    if rd.has_model():
        model_dir = rd.model_dir
    elif (rd.path / "config.json").exists():
        model_dir = rd.path  # a bare exported model folder
    else:
        load_run(rd.path)  # raises the helpful error
        model_dir = rd.model_dir
    model, labels, data_config = load_timm_dir(model_dir)
    return model, labels, Preprocess.from_data_config(data_config)


def infer_probs(model: torch.nn.Module, data: DecodedImages, pre: Preprocess, batch_size: int = 128) -> np.ndarray:
    """Softmax probabilities ``(N, classes)`` of ``model`` on decoded images, in batches, without gradients."""
    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(data), batch_size):
            x = normalize(data.images[s : s + batch_size], pre.mean, pre.std, channels_last=False)
            out.append(torch.softmax(model(x).float(), dim=1))
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def evaluate(
    run_dir: str | os.PathLike[str], data: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None
) -> EvalResult:
    """Evaluate a run's model on labelled data (folder or CSV); writes eval.json (confusion matrix included).

    Args:
        run_dir: a run directory from ``fit`` (or an exported model folder).
        data: labelled images whose class names match the run's.
        out: where to write the JSON; default ``RUN_DIR/eval-<data name>.json``.

    Raises:
        ThawError: missing run, unusable data, unknown class names.
    """
    rd = Path(run_dir)
    model, labels, pre = load_for_inference(rd)
    sc = scan(data, labels)
    decoded = decode_all(sc.samples, pre)
    if len(decoded) == 0:
        raise DataError(f"no readable images in {data}: nothing to evaluate")
    probs = infer_probs(model, decoded, pre)
    from thaw.report.metrics import compute_metrics

    metrics = compute_metrics(decoded.labels.numpy(), probs, labels)
    skipped = [*sc.skipped, *decoded.skipped]
    out_path = Path(out) if out else rd / f"eval-{Path(data).name or 'data'}.json"
    write_json(
        out_path,
        {
            "split": "external",
            "data": str(data),
            **metrics,
            "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
        },
    )
    return EvalResult(float(metrics["accuracy"]), float(metrics["macro_f1"]), metrics, skipped, out_path)


def collect_images(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[str], list[Skipped]]:
    """The image files named by ``paths``: files as given, folders walked as ``thaw fit`` walks a class folder.

    Folders follow ``thaw.data.sources.find_images`` (linked folders followed, loops, hidden files and
    ``__MACOSX`` skipped, unsupported extensions reported); a path that does not exist is skipped as
    "file not found".

    Returns:
        (files in input order, skipped files with reasons).
    """
    files: list[str] = []
    skipped: list[Skipped] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found, passed_over = find_images(path)
            files.extend(s.path for s in found)
            skipped.extend(passed_over)
        elif path.exists():
            files.append(str(path))
        else:
            skipped.append(Skipped(str(path), "file not found"))
    return files, skipped


def predict(
    run_dir: str | os.PathLike[str], paths: Sequence[str | os.PathLike[str]], *, top_k: int = 3
) -> tuple[list[Prediction], list[Skipped]]:
    """Classify image files and folders with a run's model.

    Args:
        run_dir: a run directory from ``fit`` (or an exported model folder).
        paths: image files and folders (folders are walked like a class folder of ``thaw fit``).
        top_k: how many (label, probability) pairs per image.

    Returns:
        (predictions in input order, skipped files with reasons).

    Raises:
        ConfigError: ``top_k`` below 1.
        CheckpointError: not a finished run directory or model folder.
    """
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1 (got {top_k})")
    model, labels, pre = load_for_inference(Path(run_dir))
    files, skipped = collect_images(paths)
    decoded = decode_all([Sample(f, 0) for f in files], pre)
    skipped.extend(decoded.skipped)
    if len(decoded) == 0:
        return [], skipped
    probs = infer_probs(model, decoded, pre)
    k = min(top_k, len(labels))
    preds = []
    for path, p in zip(decoded.paths, probs, strict=True):
        idx = np.argsort(-p)[:k]
        preds.append(Prediction(path, [(labels[i], float(p[i])) for i in idx]))
    return preds, skipped
