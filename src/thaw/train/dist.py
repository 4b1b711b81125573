"""Multi-process training under torchrun: process group set-up and the few collectives thaw needs.

``torchrun --nproc_per_node N -m thaw fit ...`` sets RANK/WORLD_SIZE/LOCAL_RANK; thaw then joins a process group
(nccl on CUDA, gloo on CPU), shards each epoch with a DistributedSampler, wraps the model in DDP afresh at every
phase boundary (so newly thawed groups are synchronised), reduces training metrics across ranks, and lets rank 0
alone write files and print. Decisions that depend on the clock (time budget) are taken on rank 0 and broadcast,
so ranks never disagree about when a phase ends.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

__all__ = [
    "DistInfo",
    "init_from_env",
    "shutdown",
    "env_rank",
    "all_reduce_sum",
    "broadcast_float",
    "broadcast_string",
    "gather_strings",
    "weights_digest",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_OWNED = {"group": False}


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment; a single process gets DistInfo()."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch_dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        torch_dist.init_process_group(backend=backend)
        _OWNED["group"] = True
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def shutdown() -> None:
    """Leave the process group if thaw created it (a caller's own group is left alone)."""
    if _OWNED["group"] and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
        _OWNED["group"] = False


def env_rank() -> int:
    """This process's rank from torchrun's environment (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum floats over ranks (identity in a single process)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


def broadcast_float(value: float, info: DistInfo, device: torch.device) -> float:
    """Rank 0's value on every rank."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch_dist.broadcast(t, src=0)
    return float(t.item())


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def gather_strings(value: str, info: DistInfo) -> list[str]:
    """Every rank's string, in rank order (only meaningful on rank 0; others get their own value alone)."""
    if not info.enabled:
        return [value]
    out: list[object] = [None] * info.world_size
    torch_dist.all_gather_object(out, value)
    return [str(v) for v in out]


def broadcast_string(value: str, info: DistInfo) -> str:
    """Rank 0's string on every rank (e.g. the run directory name, which contains a timestamp)."""
    if not info.enabled:
        return value
    box: list[object] = [value]
    torch_dist.broadcast_object_list(box, src=0)
    return str(box[0])
