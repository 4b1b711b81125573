"""ONNX for a finished run: export ``RUN/model.onnx`` checked on the run's own images, and predict with it.

``export_run_onnx`` turns the timm model folder of a run into an ONNX file and checks onnxruntime against PyTorch
on real images of the run (not random noise), so the check covers the inputs the model will see. ``predict_onnx``
classifies images with onnxruntime alone: labels and preprocessing come from the file's metadata, images are decoded
and resized by thaw's decoder and normalised in numpy, and no PyTorch model code runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thaw.data.cache import DecodedImages, decode_all
from thaw.data.transforms import Preprocess
from thaw.data.types import Sample, Skipped
from thaw.errors import CheckpointError, ConfigError, DataError
from thaw.inference import Prediction, collect_images
from thaw.jsonio import write_json
from thaw.rundir import RunDir

__all__ = ["export_run_onnx", "predict_onnx", "normalize_np", "ONNX_FILE"]

logger = logging.getLogger(__name__)

#: File name of the ONNX export inside a run directory.
ONNX_FILE = "model.onnx"

_BATCH = 64


def _prediction_paths(run_dir: Path) -> list[str]:
    """Image paths of the run's evaluation (predictions.jsonl), in file order."""
    # A damaged line or row is left out: the config's data is the fallback.
    return [str(row["path"]) for row in RunDir(run_dir).read_predictions() if "path" in row]


def _config_samples(run_dir: Path, classes: Sequence[str]) -> list[Sample]:
    """Samples of the run's test, validation or training data, from config.yaml (first source that scans)."""
    from thaw.data.sources import scan
    from thaw.errors import ThawError

    rd = RunDir(run_dir)
    if not rd.has_config():
        return []
    cfg = rd.read_config()
    for source in (cfg.test, cfg.val, cfg.train):
        if not source:
            continue
        try:
            return scan(source, classes).samples
        except ThawError as exc:  # moved or deleted since training: try the next source
            logger.debug("cannot use %s for the ONNX check: %s", source, exc)
    return []


def _sample_images(run_dir: Path, classes: Sequence[str], pre: Preprocess, num_images: int) -> DecodedImages:
    """Up to ``num_images`` decoded images of the run: its evaluated images first, else its configured data."""
    paths = [p for p in _prediction_paths(run_dir) if os.path.isfile(p)][:num_images]
    decoded = decode_all([Sample(p, 0) for p in paths], pre)
    if len(decoded) == 0:
        samples = _config_samples(run_dir, classes)[: max(num_images * 2, num_images + 8)]  # room for bad files
        decoded = decode_all(samples, pre)
    if len(decoded) == 0:
        raise DataError(
            f"no readable images of the run {run_dir} to check the ONNX export with: its predictions.jsonl and "
            "config.yaml point to images that are gone; restore the data folders (or run from the folder the run "
            "was trained in, when its paths are relative)"
        )
    return decoded.subset(list(range(min(num_images, len(decoded)))))


def export_run_onnx(run_dir: str | os.PathLike[str], *, num_images: int = 32) -> dict[str, Any]:
    """Export a run's model to ``RUN/model.onnx`` and verify it with onnxruntime on the run's images.

    The check images are the run's evaluated images (``predictions.jsonl``), or else its test/val/train data
    from ``config.yaml``, preprocessed exactly as at inference. ``thaw.export.export_onnx`` refuses the file (and
    deletes it) when any logit differs from PyTorch by more than 1e-4. The returned info is also written to
    ``RUN/onnx.json``.

    Args:
        run_dir: A run directory from ``fit`` (it needs its ``model/`` folder).
        num_images: How many real images to check parity on (at least 1).

    Returns:
        ``{"path", "max_abs_diff", "predictions_equal", "opset", "num_images"}``.

    Raises:
        ConfigError: ``num_images`` below 1.
        CheckpointError: not a finished run (no exported model folder).
        DataError: none of the run's images can be read any more.
        ThawError: onnx/onnxruntime missing, or the export fails or does not match PyTorch.

    Example:
        >>> info = export_run_onnx("runs/lite0-lp-ft")  # doctest: +SKIP
        >>> info["max_abs_diff"] <= 1e-4  # doctest: +SKIP
        True
    """
    from thaw.data.transforms import normalize
    from thaw.export import export_onnx, load_timm_dir

    if num_images < 1:
        raise ConfigError(f"the ONNX check needs at least 1 image (got num_images={num_images})")
    rd = Path(run_dir)
    run = RunDir(rd)
    if not run.has_model():
        raise CheckpointError(
            f"{rd} has no exported model folder (model/config.json): pass a finished run directory, or finish it "
            f"with `thaw fit --resume {rd}`"
        )
    model, labels, data_config = load_timm_dir(run.model_dir)
    pre = Preprocess.from_data_config(data_config)
    decoded = _sample_images(rd, labels, pre, num_images)
    sample = normalize(decoded.images, pre.mean, pre.std, channels_last=False)
    info = export_onnx(model, rd / ONNX_FILE, label_names=labels, data_config=data_config, sample_inputs=sample)
    info["num_images"] = len(decoded)
    write_json(rd / "onnx.json", info)
    logger.info("ONNX export verified on %d image(s): max |logit difference| %.2e", len(decoded), info["max_abs_diff"])
    return info


def _resolve_onnx(path: Path) -> Path:
    if path.is_dir():
        candidate = path / ONNX_FILE
        if candidate.is_file():
            return candidate
        raise CheckpointError(
            f"{path} has no {ONNX_FILE}: export it first with `thaw export {path} --onnx` "
            "(or thaw.onnx_run.export_run_onnx)"
        )
    if path.is_file():
        return path
    raise CheckpointError(f"{path} does not exist: pass a run directory holding {ONNX_FILE}, or an .onnx file")


def _softmax(logits: np.ndarray) -> np.ndarray:
    # scipy.special.softmax would do, but scipy is not a thaw dependency; this is the usual max-shifted form.
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def normalize_np(batch_uint8: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(x / 255 - mean) / std`` on a uint8 NCHW batch, as float32 (the same affine form as thaw's torch one)."""
    m = np.asarray(mean, dtype=np.float64).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float64).reshape(1, -1, 1, 1)
    scale = (1.0 / (255.0 * s)).astype(np.float32)
    offset = (-m / s).astype(np.float32)
    out: np.ndarray = batch_uint8.astype(np.float32) * scale + offset
    return out


def predict_onnx(
    run_dir_or_onnx_path: str | os.PathLike[str], paths: Sequence[str | os.PathLike[str]], *, top_k: int = 3
) -> tuple[list[Prediction], list[Skipped]]:
    """Classify image files and folders with an exported ONNX model (onnxruntime, no PyTorch model).

    Args:
        run_dir_or_onnx_path: A run directory holding ``model.onnx``, or an ``.onnx`` file from
            ``thaw.export.export_onnx`` (it carries the labels and preprocessing).
        paths: Image files and folders (folders are walked recursively).
        top_k: How many (label, probability) pairs per image.

    Returns:
        (predictions in input order, skipped files with reasons), as ``thaw.inference.predict``.

    Raises:
        ConfigError: ``top_k`` below 1.
        CheckpointError: no ONNX file at the path.
        ThawError: onnxruntime missing, or the file lacks thaw's metadata.

    Example:
        >>> preds, skipped = predict_onnx("runs/lite0-lp-ft", ["photos/"])  # doctest: +SKIP
        >>> preds[0].top[0]  # doctest: +SKIP
        ('cat', 0.97)
    """
    from thaw.export import OnnxClassifier

    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1 (got {top_k})")
    clf = OnnxClassifier.from_file(_resolve_onnx(Path(run_dir_or_onnx_path)))
    pre = Preprocess.from_data_config(clf.data_config)
    files, skipped = collect_images(paths)
    decoded = decode_all([Sample(f, 0) for f in files], pre)
    skipped.extend(decoded.skipped)
    if len(decoded) == 0:
        return [], skipped
    images = decoded.images.numpy()
    probs = np.concatenate(
        [
            _softmax(clf.predict_logits(normalize_np(images[s : s + _BATCH], pre.mean, pre.std)).astype(np.float64))
            for s in range(0, len(images), _BATCH)
        ]
    )
    k = min(top_k, len(clf.label_names))
    preds = []
    for path, p in zip(decoded.paths, probs, strict=True):
        idx = np.argsort(-p, kind="stable")[:k]
        preds.append(Prediction(path, [(clf.label_names[i], float(p[i])) for i in idx]))
    return preds, skipped
