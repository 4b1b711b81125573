"""Atomic, resumable checkpoints made of safetensors and JSON only (no pickles).

Layout of ``checkpoints/last/``::

    model.safetensors        current weights
    best.safetensors         best weights of the current phase
    overall.safetensors      best weights of the whole run so far
    optimizer.safetensors    optimizer state tensors (flattened)
    state.json               phase/epoch counters, history, early-stopping state, optimizer and scheduler scalars,
                             RNG states

The directory is written under a temporary name, fsynced, and swapped in with renames, so a SIGKILL at any moment
leaves either the previous or the new checkpoint complete (``last.prev`` is used if the swap was cut short).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from thaw.errors import CheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "optimizer_to_flat", "optimizer_from_flat", "rng_state", "set_rng"]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Not thaw.jsonio.atomic_write_bytes: that replaces one file, while a checkpoint is several files that must change
# together (weights, optimizer state and state.json of the same epoch). They are written plainly into a fresh
# directory and the directory as a whole is swapped in below, with ``last.prev`` as the fallback.
def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def save_checkpoint(
    ckpt_dir: Path, tensors: Mapping[str, Mapping[str, torch.Tensor]], state: Mapping[str, Any]
) -> None:
    """Write ``tensors`` (file stem -> name -> tensor) and ``state`` to ``ckpt_dir`` atomically.

    Raises:
        CheckpointError: the directory cannot be written (permissions, full disk); the previous checkpoint is kept.
    """
    parent = ckpt_dir.parent
    tmp = parent / (ckpt_dir.name + ".tmp")
    prev = parent / (ckpt_dir.name + ".prev")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for stem, tdict in tensors.items():
            # safetensors refuses shared/non-contiguous storage: store plain contiguous copies
            plain = {k: v.detach().contiguous().cpu().clone() for k, v in tdict.items()}
            save_file(plain, str(tmp / f"{stem}.safetensors"))
            with open(tmp / f"{stem}.safetensors", "rb+") as fh:
                os.fsync(fh.fileno())
        _write_file(tmp / "state.json", json.dumps(state, indent=1).encode("utf-8"))
        _fsync_dir(tmp)
        if ckpt_dir.exists():
            if prev.exists():
                shutil.rmtree(prev)
            os.replace(ckpt_dir, prev)
        os.replace(tmp, ckpt_dir)
        _fsync_dir(parent)
        if prev.exists():
            shutil.rmtree(prev)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not ckpt_dir.exists() and prev.exists():
            os.replace(prev, ckpt_dir)
        raise CheckpointError(
            f"cannot write checkpoint to {ckpt_dir}: {exc.strerror or exc}; free disk space or choose another --out "
            "(the previous checkpoint, if any, is intact)"
        ) from exc


def load_checkpoint(ckpt_dir: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read a checkpoint written by ``save_checkpoint`` (falls back to ``.prev`` after an interrupted swap).

    Raises:
        CheckpointError: missing or unreadable checkpoint.
    """
    if not (ckpt_dir / "state.json").exists():
        prev = ckpt_dir.parent / (ckpt_dir.name + ".prev")
        if (prev / "state.json").exists():
            ckpt_dir = prev
        else:
            raise CheckpointError(f"no checkpoint at {ckpt_dir}: the run has not finished an epoch yet; start it again")
    try:
        state = json.loads((ckpt_dir / "state.json").read_text(encoding="utf-8"))
        tensors = {p.stem: load_file(str(p)) for p in sorted(ckpt_dir.glob("*.safetensors"))}
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"checkpoint at {ckpt_dir} is unreadable ({exc}); start the run again") from exc
    return tensors, state


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON-able scalars."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    """Inverse of ``optimizer_to_flat``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, st in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> dict[str, Any]:
    """Torch RNG states as JSON (base64); thaw draws all its randomness from torch."""
    out: dict[str, Any] = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii")}
    if torch.cuda.is_available():
        out["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode("ascii") for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(
            [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in state["cuda"]]
        )
