"""The runner applies a Phase to the model and trains it: the only place that flips ``requires_grad``.

At each phase boundary it sets which parameters train and which modules run in eval mode, builds a fresh optimizer
and scheduler over exactly the trainable parameters, and trains epoch by epoch with validation, early stopping,
best-weights tracking, a wall-clock budget, and an atomic checkpoint after every epoch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from thaw.config import FitConfig
from thaw.data.cache import DecodedImages, ImageDataset
from thaw.data.transforms import make_augment, normalize
from thaw.models.groups import LayerGroup, module_groups
from thaw.strategy.base import Phase, PhaseResult, min_gain
from thaw.train import checkpoint as ckpt
from thaw.train.dist import DistInfo, all_reduce_sum, broadcast_float
from thaw.train.loop import (
    EpochStats,
    NonFiniteLossError,
    WarmupCosine,
    autocast,
    evaluate,
    tensor_batches,
    train_epoch,
)
from thaw.train.prefix import (
    ActivationStore,
    PrefixPlan,
    SuffixForward,
    batched,
    cache_key,
    digest,
    mode_sensitive,
    plan_prefix,
    prefix_activations,
)

__all__ = ["Runner", "EpochState", "phase_result_from_dict", "resolve_device", "resolve_amp"]

log = logging.getLogger(__name__)

#: train accuracy minus validation accuracy that, with validation stalled, counts as overfitting
GAP_WARNING = 0.15

MetricsSink = Callable[[dict[str, Any]], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """autocast dtype for ``--amp``; fp16 without a GradScaler is unsafe, so fp16 is only used on CUDA."""
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    # auto: bf16 on CUDA devices that support it; off on CPU. Measured on a 2-core Xeon with AVX512-BF16 (Lite0 96 px,
    # docs/benchmarks.md): bf16 autocast halved training throughput (126 -> 63 img/s), slowed evaluation (704 -> 588)
    # and the embedded-sample lp-ft run reached test 0.803 instead of 0.813
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


@dataclass
class EpochState:
    """Where a phase stands between epochs (what --resume needs beyond the tensors)."""

    phase_index: int
    epochs_done: int = 0
    best_own_accuracy: float = -math.inf
    best_own_loss: float = math.inf
    best_own_epoch: int = 0
    bad_epochs: int = 0
    total_steps: int = 0
    seconds: float = 0.0
    images: int = 0
    last_train_loss: float = math.nan
    last_train_accuracy: float = math.nan
    improved_overall_epoch: int = 0
    lr_factor: float = 1.0
    """Lowered to 0.1 after a non-finite loss (the phase retries once from the last good weights)."""
    min_val_loss: float = math.inf
    last_val_accuracy: float = math.nan
    last_val_loss: float = math.nan


def phase_result_from_dict(d: dict[str, Any]) -> PhaseResult:
    phase = Phase(
        **{
            **d["phase"],
            "trainable": tuple(d["phase"]["trainable"]),
            "lr_scales": {int(k): v for k, v in d["phase"]["lr_scales"].items()},
        }
    )
    return PhaseResult(**{**d, "phase": phase})


@dataclass
class Runner:
    """Trains ``model`` phase by phase on decoded images; holds the best weights seen so far."""

    model: nn.Module
    groups: Sequence[LayerGroup]
    train_data: DecodedImages
    val_data: DecodedImages
    config: FitConfig
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    run_dir: Path | None = None
    sink: MetricsSink | None = None
    progress: Callable[[str], None] | None = None
    deadline: float | None = None
    """time.monotonic() value after which no new epoch starts."""
    on_step: Callable[[str, int, int, float, float, float], None] | None = None
    """Progress display hook: (phase name, step, steps per epoch, mean loss, accuracy, images/second)."""
    dist: DistInfo = field(default_factory=DistInfo)
    global_epoch: int = 0
    best_val_accuracy: float = -math.inf
    best_val_loss: float = math.inf
    best_where: tuple[int, int] = (-1, 0)
    """(phase index, epoch within phase) of the overall best weights."""
    _overall_best: dict[str, torch.Tensor] = field(default_factory=dict)
    _initial: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.config = self.config.resolved()
        self.warnings: list[str] = []
        counts = torch.bincount(self.train_data.labels).double()
        # weight of each class: inverse frequency, normalised so that the mean weight over images is 1
        inv = torch.where(
            counts > 0, counts.sum() / (counts.clamp_min(1) * (counts > 0).sum()), torch.zeros_like(counts)
        )
        self.class_weights = inv.float().to(self.device) if self.config.balance == "weighted" else None
        self._sample_weights = inv[self.train_data.labels] if self.config.balance == "sampler" else None
        self.amp_dtype = resolve_amp(self.config.amp, self.device)
        self.model.to(self.device)
        if self.config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._params = dict(self.model.named_parameters())
        self._module_group = module_groups(self.model, self.groups)
        if not self._initial:
            # the whole state (BatchNorm statistics included): drift and L2-SP read the parameters, and phases with
            # ``from_pretrained`` restart from all of it
            self._initial = self._state_copy()
        self._store: ActivationStore | None = None
        self._phase_start: dict[int, dict[str, torch.Tensor]] = {}
        self._ingredients: dict[int, tuple[dict[str, torch.Tensor], float, float]] = {}
        """phase index -> (selected weights of that phase, val accuracy, val loss), for ``weight_soup``."""

    # ----------------------------------------------------------------- phase application
    def apply_phase(self, phase: Phase) -> None:
        """requires_grad for exactly the phase's groups; everything else frozen."""
        trainable = set(phase.trainable)
        for gi, group in enumerate(self.groups):
            for name in group.param_names:
                self._params[name].requires_grad_(gi in trainable)

    def set_modes(self, phase: Phase) -> None:
        """Train mode, except modules of frozen groups (BN statistics, dropout) per the BatchNorm policy."""
        self.model.train()
        trainable = set(phase.trainable)
        policy = self.config.bn if phase.bn_policy == "auto" else phase.bn_policy
        for name, module in self.model.named_modules():
            is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
            if policy == "eval-all" and is_bn:
                module.eval()
            elif policy == "frozen-eval" and self._module_group.get(name, -1) not in trainable:
                if name in self._module_group:
                    module.eval()
            # train-all: BatchNorm statistics update everywhere (parameters of frozen groups still do not train)

    def _param_groups(self, phase: Phase) -> list[dict[str, Any]]:
        out = []
        for gi in phase.trainable:
            lr = phase.lr * phase.scale(gi)
            decay: list[nn.Parameter] = []
            no_decay: list[nn.Parameter] = []
            for name in self.groups[gi].param_names:
                p = self._params[name]
                # timm's convention: no weight decay on biases and normalisation weights (1-d tensors)
                (no_decay if p.ndim <= 1 else decay).append(p)
            name = self.groups[gi].name
            wd = 0.0 if self.config.l2sp else self.config.weight_decay
            if decay:
                out.append({"params": decay, "lr": lr, "weight_decay": wd, "group": name})
            if no_decay:
                out.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "group": name})
        return out

    def build_optimizer(
        self, phase: Phase, steps_per_epoch: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, WarmupCosine]:
        """A fresh optimizer over exactly the trainable parameters, and a per-step warmup+cosine schedule.

        The schedule multiplies each parameter group's own initial lr, so layer-wise scales survive it.
        """
        groups = self._param_groups(phase)
        cfg = self.config
        opt: torch.optim.Optimizer
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=phase.lr, momentum=cfg.momentum, nesterov=True)
        else:
            opt = torch.optim.AdamW(groups, lr=phase.lr)
        # at least one epoch of warmup (capped at a third of the phase): on short phases a 10 % warmup is a couple of
        # steps, and a full-lr AdamW step on a freshly thawed backbone collapsed accuracy (0.76 -> 0.12 at 64 px)
        schedule = WarmupCosine(phase.epochs * steps_per_epoch, cfg.warmup, steps_per_epoch if cfg.warmup else 0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return opt, sched, schedule

    # ----------------------------------------------------------------- data
    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.mean, self.std, channels_last=self.config.channels_last)

    def _epoch_seed(self) -> int:
        return self.config.seed * 100_003 + self.global_epoch

    def _epoch_order(self, n: int, shard: bool = True) -> torch.Tensor:
        """This epoch's image order: a permutation, or class-balanced draws with ``--balance sampler``.

        Seeded by (seed, epoch) alone, so a resumed run sees exactly the order an uninterrupted one would.
        """
        gen = torch.Generator().manual_seed(self._epoch_seed())
        if self._sample_weights is not None:
            order = torch.multinomial(self._sample_weights, n, replacement=True, generator=gen)
        elif self.dist.enabled and shard:
            # DistributedSampler only needs len() of the dataset: hand it the index range
            indices: Any = range(n)
            sampler: torch.utils.data.DistributedSampler[int] = torch.utils.data.DistributedSampler(
                indices, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=self.config.seed
            )
            sampler.set_epoch(self.global_epoch)
            return torch.tensor(list(sampler), dtype=torch.long)
        else:
            return torch.randperm(n, generator=gen)
        if self.dist.enabled and shard:  # shard the balanced draw the way DistributedSampler shards a permutation
            per = -(-n // self.dist.world_size)
            order = torch.cat([order, order[: per * self.dist.world_size - n]])[self.dist.rank :: self.dist.world_size]
        return order

    def _all_agree(self, flag: bool) -> bool:
        return all_reduce_sum([0.0 if flag else 1.0], self.dist, self.device)[0] == 0.0

    def _regularizer(self, phase: Phase) -> Callable[[], torch.Tensor] | None:
        """L2-SP (Li et al. 2018): alpha/2 ||w - w0||^2 over thawed pretrained weights, beta/2 ||w||^2 on the new
        head with beta = alpha / 10. It replaces weight decay (decay toward zero would fight it)."""
        alpha = self.config.l2sp
        if not alpha:
            return None
        head = len(self.groups) - 1
        pre = [
            (self._params[n], self._initial[n])
            for g in phase.trainable
            if g != head
            for n in self.groups[g].param_names
        ]
        head_params = [self._params[n] for n in self.groups[head].param_names] if head in phase.trainable else []

        def l2sp() -> torch.Tensor:
            total = torch.zeros((), device=self.device)
            for p, p0 in pre:
                total = total + (p - p0).pow(2).sum() * (alpha / 2)
            for p in head_params:
                total = total + p.pow(2).sum() * (alpha / 20)
            return total

        return l2sp

    def _train_batches(self, augment: str, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bs = self.config.batch_size
        n = len(self.train_data)
        aug = make_augment(augment, self.train_data.images.shape[-1])
        if aug is not None and self.config.workers > 0:
            loader = torch.utils.data.DataLoader(
                ImageDataset(self.train_data, aug),
                batch_size=bs,
                sampler=order.tolist(),
                num_workers=self.config.workers,
                drop_last=n % bs == 1 and n > 1,
                persistent_workers=False,
                pin_memory=self.device.type == "cuda",
            )
            for x, y in loader:
                yield self._normalize(x).to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            return

        def transform(x: torch.Tensor) -> torch.Tensor:
            if aug is not None:
                x = torch.stack([aug(img) for img in x])
            return self._normalize(x)

        yield from tensor_batches(
            self.train_data.images,
            self.train_data.labels,
            bs,
            order=order,
            transform=transform,
            device=self.device,
            drop_singleton=True,
        )

    def _eval_batch_size(self) -> int:
        """Batch size of forward-only passes: twice the training batch on accelerators; at most 32 on CPU, where
        larger batches are no faster (Lite0 96 px, 2 cores: 132 img/s at 32, 135 at 128) but hold 4x the
        activations (a linear probe's peak memory was 420 MiB above the loaded model at 128)."""
        if self.device.type == "cpu":
            return min(self.config.batch_size, 32)
        return self.config.batch_size * 2

    def _eval_batches(self, data: DecodedImages) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return tensor_batches(
            data.images, data.labels, self._eval_batch_size(), transform=self._normalize, device=self.device
        )

    def predict_logits(self, data: DecodedImages) -> tuple[EpochStats, torch.Tensor]:
        """Evaluate the current model on decoded images (eval mode, inference_mode)."""
        self.model.eval()
        return evaluate(self.model, self._eval_batches(data), amp_dtype=self.amp_dtype, device=self.device)

    # ----------------------------------------------------------------- frozen-feature cache
    def _cacheable(self, phase: Phase) -> bool:
        """Exact only when nothing but the classifier trains, the rest runs in eval mode, and inputs are fixed."""
        policy = self.config.bn if phase.bn_policy == "auto" else phase.bn_policy
        if phase.augment != "none" or policy == "train-all":
            return False
        get_classifier = getattr(self.model, "get_classifier", None)
        forward_head = getattr(self.model, "forward_head", None)
        if get_classifier is None or forward_head is None:
            return False
        classifier = get_classifier()
        if not isinstance(classifier, nn.Module):
            return False
        cls_params = {id(p) for p in classifier.parameters()}
        trainable = [self._params[n] for gi in phase.trainable for n in self.groups[gi].param_names]
        if not trainable or any(id(p) not in cls_params for p in trainable):
            return False
        # the classifier must be the only trainable module: any dropout before it would differ from pre_logits
        return float(getattr(self.model, "drop_rate", 0.0) or 0.0) == 0.0

    @torch.inference_mode()
    def _features(self, data: DecodedImages) -> torch.Tensor:
        self.model.eval()
        feats = []
        fwd_features: Callable[..., torch.Tensor] = getattr(self.model, "forward_features")  # noqa: B009
        fwd_head: Callable[..., torch.Tensor] = getattr(self.model, "forward_head")  # noqa: B009
        for x, _ in self._eval_batches(data):
            feats.append(fwd_head(fwd_features(x), pre_logits=True).float())
        return torch.cat(feats)

    def _sync_after_epoch(self, stats: EpochStats) -> None:
        """After a sharded epoch: rank 0's BatchNorm statistics everywhere, training metrics over all shards."""
        # BatchNorm statistics moved with each rank's own batches: take rank 0's, as DDP does at its next forward,
        # so that validation, checkpoints and best weights agree on every rank
        for buf in self.model.buffers():
            torch.distributed.broadcast(buf, src=0)
        loss_sum, correct, images = all_reduce_sum(
            [stats.loss * stats.images, stats.accuracy * stats.images, float(stats.images)], self.dist, self.device
        )
        stats.loss, stats.accuracy = loss_sum / max(images, 1), correct / max(images, 1)
        stats.images = int(images)

    # ----------------------------------------------------------------- frozen-prefix cache
    def _prefix_plan(self, phase: Phase) -> tuple[PrefixPlan | None, dict[str, Any]]:
        """A verified cut below the phase's lowest trainable group, or None and the reason (for summary.json)."""
        cfg = self.config
        first = min(phase.trainable)
        if first == 0:
            return None, {"used": False, "reason": "the lowest layer group trains: no frozen prefix"}
        if not cfg.prefix_cache:
            return None, {"used": False, "reason": "off (--no-prefix-cache)"}
        if phase.augment != "none" and cfg.cache_views < 1:
            return None, {
                "used": False,
                "reason": f"augmentation '{phase.augment}' draws new images every epoch: pass --cache-views K to "
                "cache K augmented views, or --augment none",
            }
        example = self._normalize(self.train_data.images[: min(4, len(self.train_data))]).to(self.device)
        with autocast(self.device, self.amp_dtype):
            found = plan_prefix(self.model, self._module_group, first, example)
        if isinstance(found, str):
            return None, {"used": False, "reason": found}
        # the cache holds eval-mode outputs: the frozen layers must compute the same in this phase's training mode
        self.set_modes(phase)
        for name in found.replaced:
            why = mode_sensitive(self.model.get_submodule(name))
            if why is not None:
                return None, {"used": False, "reason": f"the frozen layers change while training: {why}"}
        views = 1 if phase.augment == "none" else cfg.cache_views
        return found, {
            "used": True,
            "boundary": found.boundary,
            "replaced_modules": len(found.replaced),
            "views": views,
            "activation_shape": list(found.act_shape),
            "verified_max_logit_diff": found.verified_diff,
        }

    def _prefix_cache(self, plan: PrefixPlan, phase: Phase, views: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Boundary activations of ``views`` views of the training images and of the validation images."""
        if self._store is None:
            where = self.run_dir / "cache" / "activations" if self.run_dir is not None else None
            self._store = ActivationStore(where, self.config.cache_ram_mb * 2**20)
        bs = self._eval_batch_size()
        common = {
            "mean": self.mean,
            "std": self.std,
            "channels_last": self.config.channels_last,
            "amp": str(self.amp_dtype),
        }

        def build(images: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
            def run(out: torch.Tensor | None) -> torch.Tensor:
                self.model.eval()
                with autocast(self.device, self.amp_dtype):
                    return prefix_activations(self.model, plan, batched(images, bs, fn), out)

            return run

        def plain(x: torch.Tensor) -> torch.Tensor:
            return self._normalize(x).to(self.device)

        train_digest = digest(self.train_data.images)
        val_key = cache_key(self.model, plan, digest(self.val_data.images), {**common, "augment": "none"})
        val = self._store.get(val_key, (len(self.val_data), *plan.act_shape), build(self.val_data.images, plain))
        train: list[torch.Tensor] = []
        if phase.augment == "none":
            key = cache_key(self.model, plan, train_digest, {**common, "augment": "none"})
            train.append(
                self._store.get(key, (len(self.train_data), *plan.act_shape), build(self.train_data.images, plain))
            )
            return train, val
        aug = make_augment(phase.augment, self.train_data.images.shape[-1])
        assert aug is not None

        def augmented(x: torch.Tensor) -> torch.Tensor:
            return self._normalize(torch.stack([aug(img) for img in x])).to(self.device)

        for v in range(views):
            key = cache_key(
                self.model,
                plan,
                train_digest,
                {**common, "augment": phase.augment, "view": v, "seed": self.config.seed},
            )
            torch.manual_seed(self.config.seed * 7919 + v)  # view v draws the same augmentations in every run
            train.append(
                self._store.get(key, (len(self.train_data), *plan.act_shape), build(self.train_data.images, augmented))
            )
        return train, val

    def _activation_batches(
        self, acts: torch.Tensor, labels: torch.Tensor, size: int, order: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        def layout(a: torch.Tensor) -> torch.Tensor:
            if self.config.channels_last and a.ndim == 4:
                return a.contiguous(memory_format=torch.channels_last)
            return a

        return tensor_batches(
            acts, labels, size, order=order, transform=layout, device=self.device, drop_singleton=order is not None
        )

    def _prefer_last_epoch(self, index: int, st: EpochState, stopped: str) -> dict[str, Any]:
        """Keep the phase's last weights when their validation accuracy is within noise of the best so far.

        The best-validation epoch is a maximum over noisy estimates (100 validation images: one image is a point);
        the end of the schedule is the converged model. A difference under ``min_gain`` (two images, at least half
        a point) is not evidence against it, so the last epoch wins such ties. Measured on fashion10 (plain tutorial
        loop, seed 0): best-validation epoch 0.714 test accuracy, last epoch 0.741.
        """
        if stopped == "non-finite-loss" or st.epochs_done == 0 or self.best_where == (index, st.epochs_done):
            return {}
        margin = min_gain(len(self.val_data))
        if not st.last_val_accuracy >= self.best_val_accuracy - margin:
            return {}
        before = (self.best_val_accuracy, self.best_where)
        self.best_val_accuracy, self.best_val_loss = st.last_val_accuracy, st.last_val_loss
        self.best_where = (index, st.epochs_done)
        self._overall_best = self._state_copy()
        st.improved_overall_epoch = st.epochs_done
        note = (
            f"kept the last epoch ({st.epochs_done}, val {st.last_val_accuracy:.4f}): within {margin:.4f} of the best "
            f"({before[0]:.4f}, phase {before[1][0] + 1} epoch {before[1][1]}), so the difference is noise"
        )
        log.info("phase %d: %s", index + 1, note)
        return {"selection": note}

    def weight_soup(self, indices: Sequence[int]) -> dict[str, Any] | None:
        """Average the selected weights of repeated runs of one phase (uniform model soup, Wortsman et al. 2022).

        Runs that start from the same weights and differ only in data order and augmentation land in one basin, so
        their weight average is one model that usually generalises better than each run: fashion10, four ``full``
        runs per seed, the soup beat the mean run on test by +1.2 ± 0.3 points on 3 of 3 seeds (``bench.soup``,
        docs/benchmarks.md). Validation only vetoes: on few images it is too noisy to pick ingredients (the same
        soups scored 0.015 below, 0.035 below and 0.0125 above their runs' mean on 100 validation images), so the
        soup is adopted unless it falls below the runs' mean, or below the best weights so far, by more than the
        noise of a validation accuracy: two binomial standard errors, sqrt(p(1-p)/n), and at least ``min_gain``. A
        failed average (runs in different basins) shows as a large drop (a collapsed average in the unit test).

        Returns what was measured (for summary.json), or None with fewer than two ingredients.
        """
        members = [i for i in indices if i in self._ingredients]
        if len(members) < 2:
            return None
        soup = _average([self._ingredients[m][0] for m in members])
        self.model.load_state_dict(soup)
        stats, _ = self.predict_logits(self.val_data)
        accs = [self._ingredients[m][1] for m in members]
        mean_acc = sum(accs) / len(accs)
        n = max(len(self.val_data), 1)
        p = min(max(mean_acc, 0.0), 1.0)
        margin = max(min_gain(n), 2 * math.sqrt(p * (1 - p) / n))
        # a hair of slack so that a difference of exactly the margin counts as within it despite float rounding
        slack = margin + 1e-6
        adopted = stats.accuracy >= mean_acc - slack and stats.accuracy >= self.best_val_accuracy - slack
        info: dict[str, Any] = {
            "ingredients": {str(i): a for i, a in zip(members, accs, strict=True)},
            "members": members,
            "soup_val_accuracy": stats.accuracy,
            "soup_val_loss": stats.loss,
            "mean_ingredient_val_accuracy": mean_acc,
            "best_val_accuracy_before": self.best_val_accuracy,
            "noise_margin": margin,
            "adopted": adopted,
        }
        if adopted:
            self._overall_best = soup
            self.best_val_accuracy, self.best_val_loss = stats.accuracy, stats.loss
        self.restore_overall_best()
        return info

    # ----------------------------------------------------------------- state
    def _state_copy(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _drift(self) -> dict[str, float]:
        out = {}
        for group in self.groups:
            num = sum(float((self._params[n].detach() - self._initial[n]).pow(2).sum()) for n in group.param_names)
            den = sum(float(self._initial[n].pow(2).sum()) for n in group.param_names)
            out[group.name] = math.sqrt(num) / max(math.sqrt(den), 1e-12)
        return out

    def restore_overall_best(self) -> None:
        if self._overall_best:
            self.model.load_state_dict(self._overall_best)

    def _checkpoint(
        self,
        history: Sequence[PhaseResult],
        epoch_state: EpochState | None,
        opt: torch.optim.Optimizer | None,
        elapsed: float,
    ) -> None:
        if self.run_dir is None:
            return
        tensors: dict[str, dict[str, torch.Tensor]] = {
            "model": self.model.state_dict(),
            "initial": self._initial,
        }
        if self._overall_best:
            tensors["overall"] = self._overall_best
        for i, start in self._phase_start.items():
            tensors[f"phase{i}_start"] = start
        for i, (weights, _, _) in self._ingredients.items():
            tensors[f"phase{i}_selected"] = weights
        state: dict[str, Any] = {
            "version": 1,
            "global_epoch": self.global_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "best_val_loss": self.best_val_loss,
            "best_where": list(self.best_where),
            "history": [asdict(r) for r in history],
            "epoch_state": asdict(epoch_state) if epoch_state is not None else None,
            "elapsed_seconds": elapsed,
            "ingredients": {str(i): [acc, loss] for i, (_, acc, loss) in self._ingredients.items()},
            "rng": ckpt.rng_state(),
        }
        if opt is not None and epoch_state is not None:
            opt_tensors, opt_meta = ckpt.optimizer_to_flat(opt)
            tensors["optimizer"] = opt_tensors
            state["optimizer"] = opt_meta
        ckpt.save_checkpoint(self.run_dir / "checkpoints" / "last", tensors, state)

    def load_state(self, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> None:
        """Restore weights and counters from a checkpoint (the optimizer is restored in run_phase)."""
        self.model.load_state_dict(tensors["model"])
        # over the freshly built model's state, so a checkpoint that stored parameters only still restarts whole
        self._initial = {**self._initial, **{k: v.to(self.device) for k, v in tensors["initial"].items()}}
        self._overall_best = {k: v.to(self.device) for k, v in tensors.get("overall", {}).items()}
        for key, weights in tensors.items():
            if key.startswith("phase") and key.endswith("_start"):
                self._phase_start[int(key[5:-6])] = {k: v.to(self.device) for k, v in weights.items()}
        for i, (acc, loss) in state.get("ingredients", {}).items():
            weights = tensors[f"phase{i}_selected"]
            self._ingredients[int(i)] = ({k: v.to(self.device) for k, v in weights.items()}, acc, loss)
        self.global_epoch = state["global_epoch"]
        self.best_val_accuracy = state["best_val_accuracy"]
        self.best_val_loss = state["best_val_loss"]
        self.best_where = (state["best_where"][0], state["best_where"][1])
        self._resume_opt = (tensors.get("optimizer"), state.get("optimizer"))
        ckpt.set_rng(state["rng"])

    # ----------------------------------------------------------------- training
    def run_phase(
        self,
        index: int,
        phase: Phase,
        history: Sequence[PhaseResult],
        *,
        resume: EpochState | None = None,
        elapsed_before: float = 0.0,
    ) -> PhaseResult:
        """Train one phase to its end (epochs, early stopping, time budget or a numerical fault)."""
        cfg = self.config
        names = [g.name for g in self.groups]
        if resume is None and phase.restart_from is not None:
            self.model.load_state_dict(self._phase_start[phase.restart_from])
        elif resume is None and phase.from_pretrained:
            self.model.load_state_dict(self._initial)
        if resume is None and phase.ingredient and phase.restart_from is None:
            self._phase_start[index] = self._state_copy()
        self.apply_phase(phase)
        cached = self._cacheable(phase)
        # cached (head-only) phases are cheap and run whole and identically on every rank; others are sharded
        sharded = self.dist.enabled and not cached
        n_train = len(self.train_data)
        n_local = -(-n_train // self.dist.world_size) if sharded else n_train
        bs = cfg.batch_size
        steps_per_epoch = max(1, n_local // bs + (1 if n_local % bs > 1 or n_local < bs else 0))
        forward: nn.Module = self.model
        if sharded:
            # a fresh DDP wrapper per phase registers exactly the parameters that train now
            forward = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        st = resume or EpochState(phase_index=index)

        def make_optimizer() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, WarmupCosine]:
            o, s, sch = self.build_optimizer(replace(phase, lr=phase.lr * st.lr_factor), steps_per_epoch)
            if st.total_steps:
                sch.total_steps = st.total_steps
            st.total_steps = sch.total_steps
            if st.epochs_done:
                s.last_epoch = st.epochs_done * steps_per_epoch
                # LambdaLR sets lr from base_lrs * factor(last_epoch) on its next step; put the current lr in place
                for g, base in zip(o.param_groups, s.base_lrs, strict=True):
                    g["lr"] = base * sch(s.last_epoch)
            return o, s, sch

        opt, sched, schedule = make_optimizer()
        if resume is not None:
            opt_tensors, opt_meta = getattr(self, "_resume_opt", (None, None))
            if opt_meta is not None:
                ckpt.optimizer_from_flat(opt, opt_tensors or {}, opt_meta)
        last_good = self._state_copy()

        grad_groups = {gi: [self._params[n] for n in self.groups[gi].param_names] for gi in phase.trainable}
        regularizer = self._regularizer(phase)
        step_hook: Callable[[int, float, float, float], None] | None = None
        if self.on_step is not None:
            hook = self.on_step

            def step_hook(step: int, loss: float, acc: float, ips: float) -> None:
                hook(phase.name, step, steps_per_epoch, loss, acc, ips)

        def network_epoch(
            fwd: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
        ) -> EpochStats:
            """One training epoch through the network (whole, or its suffix on cached activations)."""
            stats = train_epoch(
                fwd,
                batches,
                opt,
                sched,
                label_smoothing=cfg.label_smoothing,
                class_weights=self.class_weights,
                amp_dtype=self.amp_dtype,
                device=self.device,
                grad_groups=grad_groups,
                regularizer=regularizer,
                on_step=step_hook,
                all_agree=self._all_agree if sharded else None,
            )
            if sharded:
                self._sync_after_epoch(stats)
            return stats

        gap_warned = False
        plan: PrefixPlan | None = None
        prefix_info: dict[str, Any] = {}
        if not cached:
            plan, prefix_info = self._prefix_plan(phase)
            if plan is None and min(phase.trainable) > 0:
                log.info("phase %s: frozen-prefix cache not used: %s", phase.name, prefix_info["reason"])
        if plan is not None:
            t0 = time.perf_counter()
            train_acts, val_acts = self._prefix_cache(plan, phase, int(prefix_info["views"]))
            build_seconds = time.perf_counter() - t0
            prefix_info["build_seconds"] = build_seconds
            prefix_info["megabytes"] = (sum(a.numel() for a in train_acts) + val_acts.numel()) * 4 / 2**20
            log.info(
                "phase %s: cached the frozen prefix up to %s (%d view(s), %.0f MiB) in %.1fs",
                phase.name,
                plan.boundary,
                len(train_acts),
                prefix_info["megabytes"],
                build_seconds,
            )
            st.seconds += build_seconds
        elif cfg.compile and not cached:
            forward = torch.compile(forward)  # type: ignore[assignment]
        if cached:
            classifier = self.model.get_classifier()  # type: ignore[operator]
            t0 = time.perf_counter()
            train_feats, val_feats = self._features(self.train_data), self._features(self.val_data)
            log.info(
                "cached %d frozen feature vectors in %.1fs", len(train_feats) + len(val_feats), time.perf_counter() - t0
            )
            st.seconds += time.perf_counter() - t0
        phase_start = time.monotonic()
        stopped = "completed"
        epoch_time: float | None = None
        while st.epochs_done < phase.epochs:
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                out_of_time = left <= 0 or (epoch_time is not None and epoch_time > left)
                if broadcast_float(float(out_of_time), self.dist, self.device):  # rank 0's clock decides
                    stopped = "time-budget"
                    break
            torch.manual_seed(self._epoch_seed())
            order = self._epoch_order(n_train, shard=sharded)
            t_epoch = time.perf_counter()
            self.set_modes(phase)
            try:
                if cached:
                    classifier.train()
                    stats = train_epoch(
                        classifier,
                        tensor_batches(train_feats, self.train_data.labels, bs, order=order, device=self.device),
                        opt,
                        sched,
                        label_smoothing=cfg.label_smoothing,
                        class_weights=self.class_weights,
                        amp_dtype=None,
                        device=self.device,
                        grad_groups=grad_groups,
                        regularizer=regularizer,
                    )
                    classifier.eval()
                    val_stats, _ = evaluate(
                        classifier,
                        tensor_batches(val_feats, self.val_data.labels, bs * 2, device=self.device),
                        device=self.device,
                    )
                elif plan is not None:
                    view = train_acts[self.global_epoch % len(train_acts)]
                    with SuffixForward(self.model, plan, runner=forward) as suffix:
                        stats = network_epoch(suffix, self._activation_batches(view, self.train_data.labels, bs, order))
                        self.model.eval()
                        val_stats, _ = evaluate(
                            suffix,
                            self._activation_batches(val_acts, self.val_data.labels, self._eval_batch_size()),
                            amp_dtype=self.amp_dtype,
                            device=self.device,
                        )
                else:
                    stats = network_epoch(forward, self._train_batches(phase.augment, order))
                    val_stats, _ = self.predict_logits(self.val_data)
            except NonFiniteLossError as exc:
                self.model.load_state_dict(last_good)
                if st.lr_factor == 1.0:
                    st.lr_factor = 0.1
                    msg = f"phase {phase.name}: {exc}; restored the last good weights, retrying with lr x0.1"
                    self.warnings.append(msg)
                    log.warning(msg)
                    opt, sched, schedule = make_optimizer()
                    continue
                msg = (
                    f"phase {phase.name}: {exc} again at lr x0.1; ended the phase with the last good weights "
                    "(check the data for corrupt labels, lower --lr, or use --optimizer sgd)"
                )
                self.warnings.append(msg)
                log.warning(msg)
                stopped = "non-finite-loss"
                break
            last_good = self._state_copy()
            seconds = time.perf_counter() - t_epoch
            epoch_time = seconds
            st.epochs_done += 1
            self.global_epoch += 1
            st.seconds += seconds
            st.images += stats.images
            st.last_train_loss, st.last_train_accuracy = stats.loss, stats.accuracy

            own_better = val_stats.accuracy > st.best_own_accuracy or (
                val_stats.accuracy == st.best_own_accuracy and val_stats.loss < st.best_own_loss
            )
            # patience counts epochs in which neither validation accuracy nor validation loss improved: on small
            # validation sets accuracy moves in steps of one image and stalls while the loss still improves
            loss_better = val_stats.loss < st.min_val_loss - 1e-3 * abs(st.min_val_loss)
            st.min_val_loss = min(st.min_val_loss, val_stats.loss)
            st.last_val_accuracy, st.last_val_loss = val_stats.accuracy, val_stats.loss
            if own_better:
                st.best_own_accuracy, st.best_own_loss, st.best_own_epoch = (
                    val_stats.accuracy,
                    val_stats.loss,
                    st.epochs_done,
                )
                if phase.ingredient:
                    self._ingredients[index] = (self._state_copy(), val_stats.accuracy, val_stats.loss)
            st.bad_epochs = 0 if own_better or loss_better else st.bad_epochs + 1
            if val_stats.accuracy > self.best_val_accuracy or (
                val_stats.accuracy == self.best_val_accuracy and val_stats.loss < self.best_val_loss
            ):
                self.best_val_accuracy, self.best_val_loss = val_stats.accuracy, val_stats.loss
                self.best_where = (index, st.epochs_done)
                self._overall_best = self._state_copy()
                st.improved_overall_epoch = st.epochs_done

            row = {
                "epoch": self.global_epoch,
                "phase": index,
                "phase_name": phase.name,
                "phase_epoch": st.epochs_done,
                "trainable_groups": [names[i] for i in phase.trainable],
                "lr": _head_lr(opt, names[-1]),
                "lrs": {g["group"]: g["lr"] for g in opt.param_groups},
                "train_loss": stats.loss,
                "train_accuracy": stats.accuracy,
                "val_loss": val_stats.loss,
                "val_accuracy": val_stats.accuracy,
                "seconds": seconds,
                "images_per_second": stats.images_per_second,
                "cached_features": cached,
                "prefix_cache": plan is not None,
                "group_drift": self._drift(),
                "grad_norm": {names[g]: v for g, v in stats.grad_norm.items()},
            }
            gap = stats.accuracy - val_stats.accuracy
            # a head-only probe on frozen features overfits by design and early stopping handles it
            row["gap_warning"] = gap > GAP_WARNING and st.bad_epochs >= 2 and phase.trainable != (len(self.groups) - 1,)
            if row["gap_warning"] and not gap_warned:
                gap_warned = True
                msg = (
                    f"phase {phase.name}, epoch {self.global_epoch}: train accuracy {stats.accuracy:.3f} vs val "
                    f"{val_stats.accuracy:.3f} (gap {gap:.3f}) while validation stalled for {st.bad_epochs} epochs: "
                    "overfitting; consider fewer thawed groups, --l2sp 0.1, --augment strong, or more data"
                )
                self.warnings.append(msg)
                log.warning(msg)
            if self.sink is not None:
                self.sink(row)
            if self.progress is not None:
                self.progress(
                    f"epoch {self.global_epoch:>3} [{phase.name} {st.epochs_done}/{phase.epochs}] "
                    f"train loss {stats.loss:.3f} acc {stats.accuracy:.3f} | val loss {val_stats.loss:.3f} "
                    f"acc {val_stats.accuracy:.3f} | {stats.images_per_second:.0f} img/s {seconds:.1f}s"
                )
            # a time budget shortens the cosine so that it still ends at zero within the budget
            if self.deadline is not None and st.epochs_done == 1 and not cached:
                left = self.deadline - time.monotonic()
                fit = int(
                    broadcast_float(st.epochs_done + max(0, int(left / max(seconds, 1e-6))), self.dist, self.device)
                )
                if fit < phase.epochs:
                    schedule.total_steps = max(1, fit * steps_per_epoch)
                    st.total_steps = schedule.total_steps
                    log.info("time budget: phase %s shortened to %d epochs", phase.name, fit)
            ends = st.epochs_done >= phase.epochs or (phase.patience and st.bad_epochs >= phase.patience)
            if phase.patience and st.bad_epochs >= phase.patience and st.epochs_done < phase.epochs:
                stopped = "early-stopped"
            if ends:
                break
            self._checkpoint(history, st, opt, elapsed_before + time.monotonic() - phase_start)

        if (
            phase.ingredient
            and st.epochs_done
            and stopped != "non-finite-loss"
            and st.last_val_accuracy >= st.best_own_accuracy - min_gain(len(self.val_data))
        ):
            self._ingredients[index] = (self._state_copy(), st.last_val_accuracy, st.last_val_loss)
        selection = self._prefer_last_epoch(index, st, stopped)
        self.restore_overall_best()
        result = PhaseResult(
            index=index,
            phase=phase,
            epochs_run=st.epochs_done,
            best_epoch=st.improved_overall_epoch,
            best_val_accuracy=st.best_own_accuracy if st.epochs_done else float("nan"),
            best_val_loss=st.best_own_loss if st.epochs_done else float("nan"),
            last_train_loss=st.last_train_loss,
            last_train_accuracy=st.last_train_accuracy,
            seconds=st.seconds,
            images_per_second=st.images / st.seconds if st.seconds else 0.0,
            stopped=stopped,
            cached_features=cached,
            extra={**({"prefix_cache": prefix_info} if prefix_info else {}), **selection},
        )
        if self._store is not None:
            self._store.clear_memory()
        self._checkpoint([*history, result], None, None, elapsed_before + time.monotonic() - phase_start)
        return result


def _average(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform average of floating-point tensors; integer buffers (BatchNorm's batch counters) from the first."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = torch.stack([s[key] for s in states]).mean(0)
        else:
            out[key] = first.clone()
    return out


def _head_lr(opt: torch.optim.Optimizer, head_name: str) -> float:
    for g in opt.param_groups:
        if g.get("group") == head_name:
            return float(g["lr"])
    return float(opt.param_groups[-1]["lr"])
