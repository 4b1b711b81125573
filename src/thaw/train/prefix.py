"""Frozen-prefix activation cache: run the frozen bottom of a network once, train the top on its outputs.

When a phase trains only groups above some point (``last-k``, a surgical phase of upper groups), every epoch pushes
the same images through the same frozen layers. This module finds a cut module ("boundary") whose output holds
everything the trainable part needs, stores that output once per image, and then runs the model with the frozen
modules replaced by stand-ins, so that each step costs only the suffix.

It is generic over architectures, by tracing rather than by per-family code: a forward pass with hooks records the
order in which modules finish. The boundary is the outermost module that contains only frozen groups and finishes
last; every module that finished before it (and is not one of its ancestors) is "replaced": during training its
``forward`` returns zeros of its recorded shape (cheap, expanded), and the boundary's returns the cached batch.
Parameter-free glue between the modules (pooling, positional embeddings, residual adds inside the suffix) still runs,
so the model's own ``forward`` stays in charge. Whether that is exact for a given model is not assumed: the plan is
verified on real images (suffix-on-cache logits against the full model's) and refused, with the reason, when it
differs; the runner then trains the uncached way. timm offers ``forward_intermediates`` to stop early but nothing to
start from the middle, which is why the stand-ins are written here.

Storage: activations are float32 tensors in memory up to a size limit; past it they live in a memory-mapped file
under the run directory. The key of a stored cache covers the frozen weights, the preprocessing (normalisation,
memory format, augmentation view) and the image tensor itself, so a stale cache is never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "PrefixPlan",
    "plan_prefix",
    "SuffixForward",
    "ActivationStore",
    "prefix_activations",
    "cache_key",
    "digest",
    "mode_sensitive",
]

log = logging.getLogger(__name__)

#: largest |suffix(cache) - model(x)| accepted, relative to the logits' scale (float32 reassociation is ~1e-6)
VERIFY_TOLERANCE = 1e-4


class _Stop(Exception):
    """Raised by the boundary's hook once its output is captured: the suffix need not run to build the cache."""


@dataclass(frozen=True)
class PrefixPlan:
    """Where to cut the model: ``boundary``'s output is cached; ``replaced`` modules do not run while training."""

    boundary: str
    replaced: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Per-image output shape of each replaced module (stand-ins return zeros of it)."""
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    act_shape: tuple[int, ...] = ()
    """Per-image shape of the cached activation."""
    verified_diff: float = math.nan
    """Max |logit difference| found when the plan was verified."""

    @property
    def bytes_per_image(self) -> int:
        return 4 * math.prod(self.act_shape)


@dataclass
class _Trace:
    name: str
    enter: int
    exit: int = -1
    calls: int = 0
    shape: tuple[int, ...] | None = None
    dtype: torch.dtype | None = None


def _trace(model: nn.Module, x: torch.Tensor) -> dict[str, _Trace]:
    """Run ``model(x)`` once in eval mode and record, per module, when it was entered and left and what it returned."""
    clock = [0]
    traces: dict[str, _Trace] = {}
    handles = []

    def pre(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: Any) -> None:
            clock[0] += 1
            t = traces.setdefault(name, _Trace(name, clock[0]))
            t.calls += 1

        return hook

    def post(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            clock[0] += 1
            t = traces[name]
            t.exit = clock[0]
            if isinstance(out, torch.Tensor):
                t.shape, t.dtype = tuple(out.shape), out.dtype

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(pre(name)))
            handles.append(module.register_forward_hook(post(name)))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return traces


def _is_ancestor(a: str, b: str) -> bool:
    return b.startswith(a + ".")


_STOCHASTIC = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def mode_sensitive(module: nn.Module) -> str | None:
    """Why ``module`` in its current mode would compute differently from eval mode, or None."""
    for name, m in module.named_modules():
        if not m.training:
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            return f"BatchNorm {name or type(m).__name__} is in train mode (its statistics would move)"
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return f"dropout {name or type(m).__name__} is active"
        drop_prob = getattr(m, "drop_prob", 0.0)  # timm's DropPath / stochastic depth
        if isinstance(drop_prob, float) and drop_prob > 0:
            return f"stochastic depth {name or type(m).__name__} is active"
    return None


def plan_prefix(
    model: nn.Module, module_group: dict[str, int], first_trainable: int, example: torch.Tensor
) -> PrefixPlan | str:
    """Find the cut below group ``first_trainable`` and check it reproduces the model's logits on ``example``.

    Args:
        model: the model (its modes are restored afterwards).
        module_group: module name -> layer-group index (``thaw.models.groups.module_groups``).
        first_trainable: lowest trainable group index; groups below it form the frozen prefix.
        example: a few normalised input images.

    Returns:
        The plan, or a sentence saying why no exact cut exists (the caller trains uncached).
    """
    if first_trainable <= 0:
        return "the first layer group trains: there is no frozen prefix"
    was_training = {n: m.training for n, m in model.named_modules()}
    model.eval()
    try:
        traces = _trace(model, example)
        frozen = {n for n, g in module_group.items() if g < first_trainable and n}
        if not frozen:
            return "no module belongs to the frozen groups"
        assigned = {n: g for n, g in module_group.items() if n}

        def all_frozen(name: str) -> bool:
            inside = [g for n, g in assigned.items() if n == name or _is_ancestor(name, n)]
            return bool(inside) and max(inside) < first_trainable

        candidates = [traces[n] for n in frozen if n in traces and traces[n].exit > 0]
        if not candidates:
            return "the frozen modules did not run in a forward pass"
        boundary = max(candidates, key=lambda t: t.exit).name
        # climb to the outermost ancestor that still holds nothing but frozen groups (a whole block with its skip)
        parts = boundary.split(".")
        for depth in range(1, len(parts)):
            anc = ".".join(parts[:depth])
            if anc in traces and all_frozen(anc):
                boundary = anc
                break
        b = traces[boundary]
        if b.shape is None or b.calls != 1:
            return f"the cut module {boundary} returns no single tensor or runs more than once"
        replaced = [
            t for t in traces.values() if t.exit <= b.exit and t.exit > 0 and not _is_ancestor(t.name, boundary)
        ]
        names = {t.name for t in replaced}
        maximal = sorted(
            (t for t in replaced if not any(_is_ancestor(o, t.name) for o in names)), key=lambda t: t.enter
        )
        for t in maximal:
            if t.calls != 1 or t.shape is None or t.dtype is None:
                return f"module {t.name} of the frozen prefix runs more than once or returns no single tensor"
            if any(g >= first_trainable for n, g in assigned.items() if n == t.name or _is_ancestor(t.name, n)):
                return f"module {t.name} runs before the cut but belongs to a trainable group"
        plan = PrefixPlan(
            boundary=boundary,
            replaced=tuple(t.name for t in maximal),
            shapes={t.name: t.shape[1:] for t in maximal if t.shape is not None},
            dtypes={t.name: t.dtype for t in maximal if t.dtype is not None},
            act_shape=b.shape[1:],
        )
        with torch.inference_mode():
            full = model(example).float()
            acts = prefix_activations(model, plan, [example])
            with SuffixForward(model, plan) as suffix:
                cut = suffix(acts).float()
        if cut.shape != full.shape:
            return f"cutting at {boundary} changes the output shape {tuple(full.shape)} -> {tuple(cut.shape)}"
        diff = float((cut - full).abs().max())
        scale = float(full.abs().max()) + 1.0
        if not diff <= VERIFY_TOLERANCE * scale:
            return f"cutting at {boundary} is not exact for this model (max |logit diff| {diff:.2e})"
        return PrefixPlan(**{**plan.__dict__, "verified_diff": diff})
    except Exception as exc:  # noqa: BLE001
        # a model whose forward does not survive the stand-ins (shape asserts, odd signatures, anything) is simply not
        # cacheable: the uncached path is always correct, so say why and train that way rather than fail the run
        return f"the model's forward does not run from a cut ({type(exc).__name__}: {str(exc)[:200]})"
    finally:
        for n, m in model.named_modules():
            m.training = was_training[n]


class SuffixForward:
    """Context manager: while active, ``self(acts)`` runs the model from the cached boundary activations.

    It sets instance-level ``forward`` overrides on the replaced modules (the state dict, parameters and hooks of the
    model are untouched) and removes them on exit. ``runner`` is what to call: the model, or its DDP wrapper.
    """

    def __init__(
        self, model: nn.Module, plan: PrefixPlan, runner: Callable[[torch.Tensor], torch.Tensor] | None = None
    ):
        self.model, self.plan = model, plan
        self.runner = runner or model
        self._current: torch.Tensor | None = None

    def _stand_in(self, name: str) -> Callable[..., torch.Tensor]:
        if name == self.plan.boundary:

            def cached(*_args: Any, **_kwargs: Any) -> torch.Tensor:
                assert self._current is not None
                return self._current

            return cached
        shape, dtype = self.plan.shapes[name], self.plan.dtypes[name]

        def zeros(*_args: Any, **_kwargs: Any) -> torch.Tensor:
            assert self._current is not None
            cur = self._current
            return torch.zeros((), dtype=dtype, device=cur.device).expand(cur.shape[0], *shape)

        return zeros

    def __enter__(self) -> SuffixForward:
        for name in self.plan.replaced:
            self.model.get_submodule(name).forward = self._stand_in(name)  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.plan.replaced:
            module = self.model.get_submodule(name)
            if "forward" in module.__dict__:
                del module.__dict__["forward"]
        self._current = None

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        self._current = acts
        try:
            # the model's input is only seen by the replaced modules; handing it the activations keeps the batch size
            return self.runner(acts)
        finally:
            self._current = None


def prefix_activations(
    model: nn.Module, plan: PrefixPlan, batches: Iterable[torch.Tensor], out: torch.Tensor | None = None
) -> torch.Tensor:
    """The boundary's output for every image of ``batches`` (the model stops at the boundary), as float32.

    Writes into ``out`` (e.g. a memory-mapped tensor) when given, else returns a new tensor.
    """
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inp: Any, output: torch.Tensor) -> None:
        captured.append(output.float())
        raise _Stop

    handle = model.get_submodule(plan.boundary).register_forward_hook(hook)
    parts: list[torch.Tensor] = []
    offset = 0
    try:
        with torch.inference_mode():
            for x in batches:
                with contextlib.suppress(_Stop):
                    model(x)
                act = captured.pop()
                if out is not None:
                    out[offset : offset + act.shape[0]] = act.cpu()
                else:
                    parts.append(act.cpu().contiguous())
                offset += act.shape[0]
    finally:
        handle.remove()
    return out if out is not None else torch.cat(parts)


def digest(images: torch.Tensor) -> str:
    """Content digest of an image tensor (the "image list" part of a cache key)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str((tuple(images.shape), images.dtype)).encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(model: nn.Module, plan: PrefixPlan, images_digest: str, transform: dict[str, Any]) -> str:
    """A digest of what the cached activations depend on: frozen weights and buffers, preprocessing, images."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"boundary": plan.boundary, "replaced": plan.replaced, **transform}, default=str).encode())
    for name in plan.replaced:
        for key, tensor in sorted(model.get_submodule(name).state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    h.update(images_digest.encode())
    return h.hexdigest()


class ActivationStore:
    """Cached activations by key: in memory up to ``max_bytes`` in all, then memory-mapped files in ``directory``.

    A file is only reused when its sidecar says it was completed, so an interrupted build is rebuilt, not read.
    """

    def __init__(self, directory: Path | None, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._memory: dict[str, torch.Tensor] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.spilled: list[str] = []

    def _dir(self) -> Path:
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            return self.directory
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="thaw-cache-")
        return Path(self._tmp.name)

    def in_memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._memory.values())

    def get(
        self, key: str, shape: tuple[int, ...], build: Callable[[torch.Tensor | None], torch.Tensor]
    ) -> torch.Tensor:
        """The tensor under ``key``; on a miss ``build(out)`` makes it (``out``: a preallocated mmap, or None)."""
        if key in self._memory:
            return self._memory[key]
        nbytes = 4 * math.prod(shape)
        if self.in_memory_bytes() + nbytes <= self.max_bytes:
            self._memory[key] = build(None)
            return self._memory[key]
        root = self._dir()
        data, meta = root / f"{key}.f32", root / f"{key}.json"
        if meta.exists() and data.exists():
            try:
                info = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                info = {}
            if info.get("complete") and tuple(info.get("shape", ())) == tuple(shape):
                arr = np.memmap(data, dtype=np.float32, mode="r+", shape=shape)
                return torch.from_numpy(arr)
        arr = np.memmap(data, dtype=np.float32, mode="w+", shape=shape)
        out = torch.from_numpy(arr)
        build(out)
        arr.flush()
        meta.write_text(json.dumps({"shape": list(shape), "complete": True}), encoding="utf-8")
        self.spilled.append(str(data))
        log.info("activation cache %s (%.0f MiB) spilled to %s", key[:8], nbytes / 2**20, data)
        return out

    def clear_memory(self) -> None:
        self._memory.clear()

    def close(self) -> None:
        self._memory.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def batched(x: torch.Tensor, size: int, transform: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[torch.Tensor]:
    """Consecutive batches of ``x``, transformed (no shuffling: row i of the cache is image i)."""
    for s in range(0, x.shape[0], size):
        yield transform(x[s : s + size])
