"""Export a trained classifier: a timm-compatible model folder and ONNX verified with onnxruntime.

The model folder is what ``timm.models.save_for_hf`` writes (``config.json`` + ``model.safetensors``), so
anyone can reload it without thaw::

    model = timm.create_model("local-dir:runs/x/model", pretrained=True)
    cfg = timm.data.resolve_model_data_config(model)   # thaw's preprocessing
    labels = model.pretrained_cfg["label_names"]
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from thaw.errors import CheckpointError, ThawError

__all__ = ["export_timm_dir", "load_timm_dir", "export_onnx", "OnnxClassifier", "ONNX_OPSET"]

logger = logging.getLogger(__name__)

#: ONNX opset written by ``export_onnx``: supported by every onnxruntime >= 1.17 (thaw's lower bound).
ONNX_OPSET = 17

_DATA_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def _pretrained_cfg(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "pretrained_cfg", None)
    return dict(cfg) if isinstance(cfg, Mapping) else {}


def _clean_data_config(data_config: Mapping[str, Any]) -> dict[str, Any]:
    """Reduce a data config to timm's preprocessing keys, with JSON-friendly values.

    Accepts timm's ``resolve_model_data_config`` keys and also thaw's ``Preprocess.to_dict()`` (``size``), where
    ``size`` wins over ``input_size`` because it is the resolution the model was trained at.
    """
    out: dict[str, Any] = {}
    input_size = data_config.get("input_size")
    if data_config.get("size") is not None:
        size = int(data_config["size"])
        chans = int(input_size[0]) if input_size is not None else 3
        input_size = (chans, size, size)
    if input_size is None:
        raise ThawError("data_config needs 'input_size' (C, H, W) or 'size' to describe the model's preprocessing")
    out["input_size"] = tuple(int(v) for v in input_size)
    out["interpolation"] = str(data_config.get("interpolation") or "bilinear")
    out["mean"] = tuple(float(v) for v in data_config.get("mean", (0.485, 0.456, 0.406)))
    out["std"] = tuple(float(v) for v in data_config.get("std", (0.229, 0.224, 0.225)))
    out["crop_pct"] = float(data_config.get("crop_pct") or 0.875)
    out["crop_mode"] = str(data_config.get("crop_mode") or "center")
    return out


def export_timm_dir(
    model: nn.Module,
    out_dir: Path,
    *,
    label_names: Sequence[str],
    data_config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a timm model folder (``config.json`` + ``model.safetensors``) that reloads without thaw.

    Args:
        model: a timm model (it must carry ``pretrained_cfg``, as every model from ``timm.create_model`` does).
        out_dir: folder to create or overwrite.
        label_names: class names in classifier order; their number must equal the model's ``num_classes``.
        data_config: preprocessing (timm data config keys, or thaw's ``Preprocess.to_dict()``), stored in the
            pretrained config so ``timm.data.resolve_model_data_config`` on the reloaded model returns it.
        extra: more JSON-serializable top-level entries for ``config.json`` (e.g. ``{"thaw": {...}}``).

    Returns:
        ``out_dir``.

    Raises:
        ThawError: the model is not a timm model, or the labels do not match its classifier.

    Example:
        >>> export_timm_dir(model, Path("runs/x/model"), label_names=["cat", "dog"], data_config=cfg)
        >>> timm.create_model("local-dir:runs/x/model", pretrained=True)  # doctest: +SKIP
    """
    from timm.models import save_for_hf

    if not isinstance(getattr(model, "pretrained_cfg", None), Mapping):
        raise ThawError(
            f"cannot export {type(model).__name__} as a timm model folder: it is not a timm model "
            "(no pretrained_cfg); build it with timm.create_model"
        )
    num_classes = int(getattr(model, "num_classes", -1))
    if len(label_names) != num_classes:
        raise ThawError(f"{len(label_names)} label names given for a model with {num_classes} outputs")
    clean = _clean_data_config(data_config)
    model_config: dict[str, Any] = {
        "num_classes": num_classes,
        "label_names": [str(n) for n in label_names],
        # timm folds these into config.json's pretrained_cfg, which resolve_model_data_config reads back.
        "pretrained_cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in clean.items()},
    }
    if extra:
        clash = set(extra) & {"architecture", "num_classes", "num_features", "label_names", "pretrained_cfg"}
        if clash:
            raise ThawError(f"extra config entries would overwrite timm's own keys: {', '.join(sorted(clash))}")
        model_config.update(extra)
    out_dir = Path(out_dir)
    # data_config also drives timm's own input-size bookkeeping (test_input_size, pool_size) for the export.
    save_for_hf(model, str(out_dir), model_config=model_config, safe_serialization=True, data_config=dict(clean))
    logger.info("exported %s to %s", _pretrained_cfg(model).get("architecture", "model"), out_dir)
    return out_dir


def load_timm_dir(path: Path) -> tuple[nn.Module, list[str], dict[str, Any]]:
    """Load a folder written by ``export_timm_dir`` (or any timm ``save_for_hf`` folder).

    Args:
        path: folder holding ``config.json`` and ``model.safetensors``.

    Returns:
        The model in eval mode, its label names (``class_<i>`` when the folder has none), and its data config
        (``timm.data.resolve_model_data_config`` of the reloaded model).

    Raises:
        CheckpointError: the folder is missing, incomplete, or its weights do not fit its config.
    """
    import timm
    from timm.data.config import resolve_model_data_config

    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not an exported model folder: it has no config.json")
    if not (path / "model.safetensors").is_file() and not (path / "pytorch_model.bin").is_file():
        raise CheckpointError(f"{path} has config.json but no model.safetensors; export the model again")
    try:
        model = timm.create_model("local-dir:" + str(path.resolve()), pretrained=True)
    except (RuntimeError, ValueError, KeyError, OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot load the model folder {path}: {e}") from e
    model.eval()
    num_classes = int(getattr(model, "num_classes", 0))
    labels = _pretrained_cfg(model).get("label_names")
    label_list = [str(n) for n in labels] if labels else [f"class_{i}" for i in range(num_classes)]
    if len(label_list) != num_classes:
        raise CheckpointError(f"{path}: config.json has {len(label_list)} label names for {num_classes} outputs")
    resolved: dict[str, Any] = resolve_model_data_config(model)  # type: ignore[no-untyped-call]
    data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in resolved.items()}
    return model, label_list, data_config


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ThawError(
            f"ONNX export needs onnx and onnxruntime ({e.name} is missing): pip install 'thaw[onnx]'"
        ) from e
    return onnx, onnxruntime


def _onnx_metadata(label_names: Sequence[str], data_config: Mapping[str, Any]) -> dict[str, str]:
    clean = _clean_data_config(data_config)
    return {
        "label_names": json.dumps([str(n) for n in label_names], ensure_ascii=False),
        "mean": json.dumps(list(clean["mean"])),
        "std": json.dumps(list(clean["std"])),
        "size": json.dumps(list(clean["input_size"][1:])),
        "interpolation": clean["interpolation"],
        "crop_pct": json.dumps(clean["crop_pct"]),
        "input": "float32 NCHW, RGB scaled to 0..1 then normalized with mean/std",
        "producer": "thaw",
    }


def export_onnx(
    model: nn.Module,
    out_path: Path,
    *,
    label_names: Sequence[str],
    data_config: Mapping[str, Any],
    sample_inputs: torch.Tensor,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export to ONNX (dynamic batch), then check onnxruntime against PyTorch on ``sample_inputs``.

    The file carries its preprocessing and labels as metadata (``label_names`` as JSON, ``mean``, ``std``,
    ``size``, ``interpolation``, ``crop_pct``), read back by ``OnnxClassifier.from_file``.

    Args:
        model: the classifier (moved to CPU float32 for export; the caller's model is not modified).
        out_path: the ``.onnx`` file to write.
        label_names: class names in output order.
        data_config: preprocessing (timm data config keys or thaw's ``Preprocess.to_dict()``).
        sample_inputs: normalized float NCHW batch used for the parity check.
        atol: largest allowed absolute logit difference between PyTorch and onnxruntime.

    Returns:
        ``{"path", "max_abs_diff", "predictions_equal", "opset"}``.

    Raises:
        ThawError: onnx/onnxruntime missing, the export fails, or the outputs differ by more than ``atol``.
    """
    import copy

    onnx, ort = _require_onnx()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if sample_inputs.ndim != 4 or sample_inputs.shape[0] < 1:
        raise ThawError(f"sample_inputs must be a non-empty NCHW batch, got shape {tuple(sample_inputs.shape)}")
    cpu_model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    sample = sample_inputs.detach().to("cpu", torch.float32).contiguous()
    try:
        # dynamo=False: the TorchScript-based exporter needs no extra packages (the dynamo one needs onnxscript,
        # which thaw[onnx] does not install) and handles the timm CNNs/ViTs thaw trains. Its deprecation notice and
        # tracer warnings are recorded and logged rather than raised: the onnxruntime parity check below, on a
        # larger batch than the traced one, is what tells whether the export is right.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.onnx.export(
                cpu_model,
                (sample[:1],),
                str(out_path),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        for w in caught:
            logger.debug("ONNX export: %s", str(w.message).splitlines()[0])
    except Exception as e:  # the exporter raises many unrelated types; all mean "this model did not export"
        raise ThawError(f"ONNX export of {type(model).__name__} failed: {e}") from e
    proto = onnx.load(str(out_path))
    for key, value in _onnx_metadata(label_names, data_config).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out_path))

    with torch.no_grad():
        expected = cpu_model(sample).numpy()
    session = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: sample.numpy()})[0]
    max_abs_diff = float(np.max(np.abs(got - expected)))
    predictions_equal = bool(np.array_equal(got.argmax(axis=1), expected.argmax(axis=1)))
    if not max_abs_diff <= atol:
        out_path.unlink()  # a file that computes something else must not be left for someone to deploy
        raise ThawError(
            f"ONNX export {out_path} does not match PyTorch: max |logit difference| {max_abs_diff:.3g} > {atol:g}; "
            "the model uses an operation that onnxruntime computes differently; keep the timm model folder instead"
        )
    logger.info("ONNX export %s verified: max |logit difference| %.2e", out_path, max_abs_diff)
    return {
        "path": str(out_path),
        "max_abs_diff": max_abs_diff,
        "predictions_equal": predictions_equal,
        "opset": ONNX_OPSET,
    }


class OnnxClassifier:
    """An exported ONNX classifier with its labels and preprocessing, run by onnxruntime.

    Example:
        >>> clf = OnnxClassifier.from_file("runs/x/model.onnx")  # doctest: +SKIP
        >>> logits = clf.predict_logits(batch)  # normalized float32 NCHW  # doctest: +SKIP
    """

    def __init__(self, session: Any, label_names: list[str], data_config: dict[str, Any]) -> None:
        self.session = session
        self.label_names = label_names
        self.data_config = data_config
        self._input_name = str(session.get_inputs()[0].name)

    @classmethod
    def from_file(cls, path: str | Path) -> OnnxClassifier:
        """Open an ONNX file written by ``export_onnx`` and read its metadata.

        Raises:
            ThawError: onnxruntime missing, the file is unreadable, or it lacks thaw's metadata.
        """
        _, ort = _require_onnx()
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors for unreadable files
            raise ThawError(f"cannot open ONNX model {path}: {e}") from e
        meta = dict(session.get_modelmeta().custom_metadata_map)
        try:
            labels = [str(n) for n in json.loads(meta["label_names"])]
            size = json.loads(meta["size"])
            data_config = {
                "input_size": (3, int(size[0]), int(size[1])),
                "mean": tuple(float(v) for v in json.loads(meta["mean"])),
                "std": tuple(float(v) for v in json.loads(meta["std"])),
                "interpolation": meta.get("interpolation", "bilinear"),
                "crop_pct": float(json.loads(meta.get("crop_pct", "0.875"))),
            }
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise ThawError(f"{path} lacks thaw's metadata ({e}); export it with thaw.export.export_onnx") from e
        return cls(session, labels, data_config)

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a normalized float NCHW batch, shape (N, num_classes)."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 4:
            raise ThawError(f"expected an NCHW batch, got shape {x.shape}")
        out: np.ndarray = self.session.run(None, {self._input_name: x})[0]
        return out
