"""Classification metrics for an evaluated split, as JSON-ready dictionaries.

Accuracy, precision/recall/F1 and the confusion matrix come from scikit-learn; calibration (ECE and the
reliability bins) and the mean negative log-likelihood are computed here.

Example:
    >>> m = compute_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), ["cat", "dog"])
    >>> m["accuracy"]
    1.0
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from thaw.errors import DataError
from thaw.textfmt import count, fixed, table

__all__ = ["compute_metrics", "expected_calibration_error", "format_metrics_table"]

logger = logging.getLogger(__name__)

#: Probabilities are clipped to this before taking logs, so a confidently wrong prediction costs a finite loss.
_EPS = 1e-12


def expected_calibration_error(
    correct: np.ndarray, confidence: np.ndarray, n_bins: int = 15
) -> tuple[float, dict[str, list[Any]]]:
    """Expected calibration error over equal-width confidence bins, and the bins themselves.

    scikit-learn has no ECE (``sklearn.calibration.calibration_curve`` is binary-only and drops empty bins),
    so it is written here: the top-1 confidence is binned into ``n_bins`` equal-width bins on [0, 1], and ECE is
    the count-weighted mean of ``|accuracy - mean confidence|`` over the bins.

    Args:
        correct: Boolean array (N,), whether the top-1 prediction was right.
        confidence: Float array (N,), the probability of the predicted class.
        n_bins: Number of equal-width bins.

    Returns:
        ``(ece, reliability)`` where reliability holds ``bin_edges`` (n_bins + 1 floats) and, per bin,
        ``accuracy`` and ``confidence`` (None for an empty bin) and ``count``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 falls into the first bin.
    idx = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    conf_sum = np.bincount(idx, weights=confidence.astype(np.float64), minlength=n_bins)
    nonempty = counts > 0
    bin_acc = np.where(nonempty, acc_sum / np.maximum(counts, 1), 0.0)
    bin_conf = np.where(nonempty, conf_sum / np.maximum(counts, 1), 0.0)
    total = int(counts.sum())
    ece = float(np.sum(counts * np.abs(bin_acc - bin_conf)) / total) if total else 0.0
    reliability: dict[str, list[Any]] = {
        "bin_edges": [float(e) for e in edges],
        "accuracy": [float(a) if n else None for a, n in zip(bin_acc, counts, strict=True)],
        "confidence": [float(c) if n else None for c, n in zip(bin_conf, counts, strict=True)],
        "count": [int(n) for n in counts],
    }
    return ece, reliability


def compute_metrics(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], n_bins: int = 15) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1, confusion matrix, calibration and NLL of predictions.

    Args:
        labels: True class indices, shape (N,).
        probs: Predicted class probabilities, shape (N, C), rows summing to 1 (softmax outputs).
        classes: The C class names, in label order.
        n_bins: Number of equal-width confidence bins for ECE and the reliability diagram.

    Returns:
        A JSON-ready dict with ``accuracy``, ``macro_f1``, ``num_images``, ``per_class`` (list of
        {``class``, ``precision``, ``recall``, ``f1``, ``support``}), ``confusion_matrix`` (C x C, rows are true
        classes), ``classes``, ``ece``, ``reliability`` and ``nll`` (mean negative log-likelihood).

    Raises:
        DataError: There are no predictions, or the shapes of labels, probs and classes disagree.
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = len(classes)
    if labels.ndim != 1 or probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise DataError(
            f"cannot compute metrics: expected labels of shape (N,) and probs of shape (N, C), got "
            f"{labels.shape} and {probs.shape}; pass one probability row per label"
        )
    if labels.shape[0] == 0:
        raise DataError("cannot compute metrics on zero images: the evaluation split is empty")
    if probs.shape[1] != num_classes:
        raise DataError(
            f"the predictions have {probs.shape[1]} columns but there are {num_classes} class names; "
            "evaluate with the model trained on these classes"
        )
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"labels must lie in [0, {num_classes - 1}], got values from {labels.min()} to {labels.max()}")

    preds = probs.argmax(axis=1)
    label_ids = list(range(num_classes))
    precision, recall, f1, support = precision_recall_fscore_support(labels, preds, labels=label_ids, zero_division=0)
    macro_f1 = f1_score(labels, preds, labels=label_ids, average="macro", zero_division=0)
    cm = confusion_matrix(labels, preds, labels=label_ids)

    confidence = probs[np.arange(len(preds)), preds]
    ece, reliability = expected_calibration_error(preds == labels, confidence, n_bins)
    # Written by hand rather than sklearn.metrics.log_loss: that one renormalises rows and warns when float32
    # softmax outputs do not sum to exactly 1, and warnings are errors in this project's tests.
    p_true = np.clip(probs[np.arange(len(labels)), labels], _EPS, 1.0)
    nll = float(-np.log(p_true).mean())

    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(macro_f1),
        "num_images": int(labels.shape[0]),
        "per_class": [
            {
                "class": str(name),
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        ],
        "confusion_matrix": cm.astype(int).tolist(),
        "classes": [str(c) for c in classes],
        "ece": ece,
        "reliability": reliability,
        "nll": nll,
    }


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """Render metrics from :func:`compute_metrics` as aligned plain text (for the CLI and logs).

    Args:
        metrics: The dict returned by :func:`compute_metrics` (or an ``eval.json``).

    Returns:
        A multi-line string: a summary line, then one row per class.
    """
    lines = [
        f"accuracy {fixed(metrics['accuracy'], 4)}   macro-F1 {fixed(metrics['macro_f1'], 4)}   "
        f"ECE {fixed(metrics['ece'], 4)}   NLL {fixed(metrics.get('nll'), 4)}   "
        f"images {metrics.get('num_images', '?')}"
    ]
    rows = [
        [str(r["class"]), fixed(r["precision"], 4), fixed(r["recall"], 4), fixed(r["f1"], 4), count(r["support"])]
        for r in metrics.get("per_class", [])
    ]
    lines.append(table(["class", "precision", "recall", "f1", "support"], rows))
    return "\n".join(lines)
