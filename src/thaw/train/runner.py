"""The runner executes a strategy's steps: the only place that flips ``requires_grad``.

For a ``Phase`` it loads the phase's starting weights, sets which parameters train and which modules run in eval
mode, builds a fresh optimizer and schedule over exactly the trainable parameters (``train/optim.py``), picks the
cheapest exact epoch source (``train/sources.py``) and trains epoch by epoch with validation, early stopping, the
time budget (``train/budget.py``), selection of the best weights (``train/selection.py``) and atomic checkpoints
(``train/state.py``). ``Candidates``, ``Average`` and ``Refit`` are built from the same pieces.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from thaw.config import FitConfig
from thaw.data.cache import DecodedImages
from thaw.models.groups import LayerGroup, module_groups
from thaw.strategy.base import (
    Average,
    AverageResult,
    Candidates,
    Measurements,
    Phase,
    PhaseResult,
    Refit,
    Signals,
    Step,
    StepResult,
)
from thaw.train import checkpoint as ckpt
from thaw.train import state as run_state
from thaw.train.budget import Budget
from thaw.train.dist import DistInfo, all_reduce_sum, broadcast_float
from thaw.train.loop import (
    EpochStats,
    NonFiniteLossError,
    WarmupCosine,
    tensor_batches,
    train_epoch,
    weight_drift,
)
from thaw.train.optim import build_optimizer, l2sp_regularizer, no_decay_params, param_groups, steps_per_epoch
from thaw.train.prefix import ActivationStore
from thaw.train.selection import PhaseSelection, Scored, Selection, noise_margin, scored, state_copy
from thaw.train.sources import EpochSource, Feed, ImageSource, concat, open_source

__all__ = ["Runner", "EpochState", "resolve_device", "resolve_amp"]

log = logging.getLogger(__name__)

#: train accuracy minus validation accuracy that, with validation stalled, counts as overfitting
GAP_WARNING = 0.15
#: Seconds between mid-phase checkpoints (a phase's first epoch and its end are always checkpointed): an fsynced
#: checkpoint after every epoch took 0.22 s of a 1.65 s epoch on 200 images at 64 px (13 %).
CHECKPOINT_SECONDS = 15.0
#: A phase sized by the clock re-plans its length after each of its last this-many planned epochs.
PLAN_END_EPOCHS = 2
#: Epochs a phase whose length the clock sets is planned for until its first epoch is timed (sizes the warmup).
FIRST_PLAN_EPOCHS = 10

MetricsSink = Callable[[dict[str, Any]], None]
StepHook = Callable[[str, int, int, float, float, float], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """autocast dtype for ``--amp``; fp16 without a GradScaler is unsafe, so fp16 is only used on CUDA.

    ``auto`` is bf16 on CUDA devices that support it and off on CPU, where bf16 autocast halved training throughput
    (docs/benchmarks.md, "bf16 on CPU").
    """
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


#: Timed passes of the epoch-cost measurement stop at three, or once they add up to this many seconds.
MEASURE_SECONDS = 1.5


@dataclass
class EpochState:
    """Where a phase stands between epochs (what --resume needs beyond the tensors)."""

    phase_index: int
    epochs_done: int = 0
    planned_epochs: int = 0
    """Epochs the schedule is sized for (the phase's epochs, or fewer once the clock says so)."""
    bad_epochs: int = 0
    total_steps: int = 0
    steps: int = 0
    seconds: float = 0.0
    images: int = 0
    last_train_loss: float = math.nan
    last_train_accuracy: float = math.nan
    improved_overall_epoch: int = 0
    lr_factor: float = 1.0
    """Lowered to 0.1 after a non-finite loss (the phase retries once from the last good weights)."""
    min_val_loss: float = math.inf
    min_val_loss_epoch: int = 0
    """Epoch within the phase (1-based) with the lowest validation loss; 0 before any."""
    cycle_seconds: float = 0.0
    """Wall seconds of the last epoch (training, validation, checkpoint); a partial one at its whole-epoch rate."""
    steady_seconds: float = 0.0
    """Wall seconds of the whole epochs after the first (which pays one-time set-up): what the clock plans with."""
    selection: PhaseSelection = field(default_factory=PhaseSelection)

    def next_steps(self, spe: int) -> int:
        """Steps the next epoch runs: a whole epoch's ``spe``, or fewer where the schedule ends inside it."""
        return min(spe, self.total_steps - self.steps) if self.total_steps > self.steps else spe

    @property
    def epoch_cost(self) -> float:
        """What the clock prices an epoch at: the mean of the epochs after the first, the first's until there are
        more."""
        return self.steady_seconds / (self.epochs_done - 1) if self.epochs_done > 1 else self.cycle_seconds


@dataclass
class _Epoch:
    """What one epoch measured."""

    stats: EpochStats
    val: EpochStats
    logits: torch.Tensor
    """Validation logits (per-image scores for the selection)."""
    seconds: float
    kind: str
    """The epoch source: images, features or prefix."""


@dataclass
class _Optim:
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    schedule: WarmupCosine


class Runner:
    """Executes steps on ``model``; holds the best weights seen so far (``selection``)."""

    def __init__(
        self,
        model: nn.Module,
        groups: Sequence[LayerGroup],
        train_data: DecodedImages,
        val_data: DecodedImages,
        config: FitConfig,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        device: torch.device,
        *,
        run_dir: Path | None = None,
        sink: MetricsSink | None = None,
        progress: Callable[[str], None] | None = None,
        budget: Budget | None = None,
        on_step: StepHook | None = None,
        dist: DistInfo | None = None,
    ) -> None:
        self.dist = dist or DistInfo()
        # a batch size left to thaw is chosen from the images each process steps through in an epoch
        self.config = config.resolved(num_train=-(-len(train_data) // self.dist.world_size))
        self.model, self.groups, self.device = model, list(groups), device
        self.run_dir, self.sink, self.progress, self.on_step = run_dir, sink, progress, on_step
        self.budget = budget or Budget(None, dist=self.dist, device=device)
        self.amp_dtype = resolve_amp(self.config.amp, device)
        self.feed = Feed(train_data, val_data, self.config, mean, std, device, self.amp_dtype)
        self.global_epoch = 0
        self.warnings: list[str] = []
        self.selection = Selection(len(val_data))
        counts = torch.bincount(train_data.labels).double()
        # weight of each class: inverse frequency, normalised so that the mean weight over images is 1
        inv = torch.where(
            counts > 0, counts.sum() / (counts.clamp_min(1) * (counts > 0).sum()), torch.zeros_like(counts)
        )
        self.class_weights = inv.float().to(device) if self.config.balance == "weighted" else None
        self._sample_weights = inv[train_data.labels] if self.config.balance == "sampler" else None
        model.to(device)
        if self.config.channels_last:
            model.to(memory_format=torch.channels_last)
        self.params = dict(model.named_parameters())
        self._module_group = module_groups(model, self.groups)
        self._no_decay = no_decay_params(model)
        # the whole state (BatchNorm statistics included): drift and L2-SP read it, ``pretrained`` starts load it
        self.initial = state_copy(model)
        self._store: ActivationStore | None = None
        self._own_best: dict[str, torch.Tensor] = {}
        """The current ``keep`` phase's best weights (its selection may still prefer its last epoch)."""
        self._resume_opt: tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None] = (None, None)

    @property
    def train_data(self) -> DecodedImages:
        return self.feed.train

    @property
    def val_data(self) -> DecodedImages:
        return self.feed.val

    # ----------------------------------------------------------------- phase application
    def apply_phase(self, phase: Phase) -> None:
        """requires_grad for exactly the phase's groups; everything else frozen."""
        trainable = set(phase.trainable)
        for gi, group in enumerate(self.groups):
            for name in group.param_names:
                self.params[name].requires_grad_(gi in trainable)

    def set_modes(self, phase: Phase) -> None:
        """Train mode, except modules of frozen groups (BN statistics, dropout) per the BatchNorm policy."""
        self.model.train()
        trainable = set(phase.trainable)
        policy = self.config.bn if phase.bn_policy == "auto" else phase.bn_policy
        for name, module in self.model.named_modules():
            if policy == "eval-all" and isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
            elif policy == "frozen-eval" and name in self._module_group and self._module_group[name] not in trainable:
                module.eval()
            # train-all: BatchNorm statistics update everywhere (parameters of frozen groups still do not train)

    def predict_logits(self, data: DecodedImages) -> tuple[EpochStats, torch.Tensor]:
        """Evaluate the current model on decoded images (eval mode, inference_mode)."""
        return self.feed.predict_logits(self.model, data)

    def validation_score(self) -> Scored:
        """Validation numbers of the current weights."""
        _, logits = self.predict_logits(self.val_data)
        return scored(logits, self.val_data.labels)

    def epoch_order(self, n: int, shard: bool = True) -> torch.Tensor:
        """This epoch's image order: a permutation, or class-balanced draws with ``--balance sampler``.

        Seeded by (seed, epoch) alone, so a resumed run sees exactly the order an uninterrupted one would.
        """
        gen = torch.Generator().manual_seed(self.epoch_seed())
        if self._sample_weights is not None and n == len(self._sample_weights):
            order = torch.multinomial(self._sample_weights, n, replacement=True, generator=gen)
        elif self.dist.enabled and shard:
            # DistributedSampler only needs len() of the dataset: hand it the index range
            indices: Any = range(n)
            sampler: torch.utils.data.DistributedSampler[int] = torch.utils.data.DistributedSampler(
                indices,
                num_replicas=self.dist.world_size,
                rank=self.dist.rank,
                shuffle=True,
                seed=self.config.seed,  # type: ignore[arg-type]
            )
            sampler.set_epoch(self.global_epoch)
            return torch.tensor(list(sampler), dtype=torch.long)
        else:
            return torch.randperm(n, generator=gen)
        if self.dist.enabled and shard:  # shard the balanced draw the way DistributedSampler shards a permutation
            per = -(-n // self.dist.world_size)
            order = torch.cat([order, order[: per * self.dist.world_size - n]])[self.dist.rank :: self.dist.world_size]
        return order

    def epoch_seed(self) -> int:
        """The seed of this epoch's shuffling and augmentation: (seed, epoch) alone, so a resume repeats it."""
        return self.config.seed * 100_003 + self.global_epoch

    # ----------------------------------------------------------------- steps
    def execute(
        self, step: Step, history: Sequence[StepResult], *, resume: EpochState | None = None
    ) -> list[StepResult]:
        """Run one step of a strategy; the results in history order (a race gives one per candidate)."""
        if isinstance(step, Phase):
            return [self.run_phase(len(history), step, history, resume=resume)]
        if isinstance(step, Refit):
            return [self.run_phase(len(history), replace(step.phase, refit=True, patience=0), history, resume=resume)]
        if isinstance(step, Candidates):
            done: list[StepResult] = []
            for phase in step.phases:
                done.append(self.run_phase(len(history) + len(done), phase, [*history, *done], resume=resume))
                resume = None
            return done
        assert isinstance(step, Average)
        return [self.weight_soup(step.members, len(history), history, validated=step.validated)]

    def measure(self, needs: Measurements, batches: int = 4) -> Signals:
        """What a strategy asked to have measured with the current weights (a few training batches)."""
        mirrored = None
        if needs.mirrored:
            # the plain validation numbers of these weights are already recorded (the probe's selection); only the
            # mirror images are new. In chunks: a mirrored copy of a slice at a time, not of the whole set.
            val, chunk = self.val_data, 512
            parts = [
                self.predict_logits(
                    replace(val, images=val.images[i : i + chunk].flip(-1), labels=val.labels[i : i + chunk])
                )[1]
                for i in range(0, len(val), chunk)
            ]
            flipped = scored(torch.cat(parts) if parts else torch.empty(0), val.labels)
            mirrored = (flipped.correct, flipped.nll)
        if not (needs.epoch_seconds or needs.grad_norms):
            return Signals(mirrored=mirrored)
        from thaw.strategy.signals import relative_grad_norms

        bs, n = self.config.batch, len(self.train_data)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed))[: batches * bs]
        sub = self.train_data.subset(order.tolist())
        data = list(tensor_batches(sub.images, sub.labels, bs, transform=self.feed.normalize, device=self.device))
        # one untimed batch of each size first: a process's first backward pass pays one-time set-up
        # (docs/benchmarks.md, "Epoch cost"), and a new batch shape some more (40 images at batch 32 make batches of
        # 32 and 8; the cold 8 added 11 % to a timed pass of Lite0 at 96 px: `python -m bench.cold_batch`)
        sizes: dict[int, Any] = {}
        for batch in data:
            sizes.setdefault(len(batch[1]), batch)
        relative_grad_norms(self.model, self.groups, list(sizes.values()))
        # the fastest of a few timed passes, as timeit takes: a pass over a few dozen images is a fraction of a
        # second, where one hiccup would price the race out of the budget. The raw model runs here (no DDP wrapper,
        # no collective), so ranks may time a different number of passes; rank 0's figure is broadcast.
        passes: list[float] = []
        while len(passes) < 3 and sum(passes) < MEASURE_SECONDS:
            start = time.perf_counter()
            rgn = relative_grad_norms(self.model, self.groups, data)
            passes.append(time.perf_counter() - start)
        per_image = min(passes) / max(len(order), 1)
        # a training epoch: forward+backward over the (sharded) training set, plus a forward pass over validation
        local = -(-n // self.dist.world_size)
        epoch = broadcast_float(per_image * local + per_image / 3 * len(self.val_data), self.dist, self.device)
        return Signals(epoch_seconds=epoch, grad_norms=rgn if needs.grad_norms else None, mirrored=mirrored)

    def weight_soup(
        self, members: Sequence[int], index: int, history: Sequence[StepResult] = (), *, validated: bool = True
    ) -> AverageResult:
        """Average the kept weights of ``members`` (``Selection.soup``); adopted unless validation vetoes it (never
        vetoed when ``validated`` is False: the members trained on the validation images)."""
        info = self.selection.soup(self.model, members, self.validation_score, (index, 0), veto=validated)
        result = AverageResult(
            index=index, members=tuple(members), adopted=bool(info and info["adopted"]), info=info or {}
        )
        self._checkpoint([*history, result], None, None)
        return result

    # ----------------------------------------------------------------- one phase
    def run_phase(
        self, index: int, phase: Phase, history: Sequence[StepResult], *, resume: EpochState | None = None
    ) -> PhaseResult:
        """Train one phase to its end (its length, early stopping, the clock or a numerical fault)."""
        if resume is None:
            self._load_start(phase)
        self.apply_phase(phase)
        feed = replace(self.feed, train=concat(self.train_data, self.val_data)) if phase.refit else self.feed
        source, forward = self._open(phase, feed)
        sharded = self.dist.enabled and source.sharded
        n_train = len(feed.train)
        spe = steps_per_epoch(-(-n_train // self.dist.world_size) if sharded else n_train, self.config.batch)
        # a phase whose length the clock sets starts with a short plan, so its warmup is not sized to a guess; the
        # plan grows to the epochs that fit once the first ones are timed
        timed = phase.seconds is not None or self.budget.seconds is not None
        st = resume or EpochState(
            phase_index=index, planned_epochs=min(phase.epochs, FIRST_PLAN_EPOCHS if timed else phase.epochs)
        )
        st.seconds += source.setup_seconds if resume is None else 0.0
        optim = self._optimizer(phase, st, spe)
        if resume is not None and self._resume_opt[1] is not None:
            ckpt.optimizer_from_flat(optim.opt, self._resume_opt[0] or {}, self._resume_opt[1])
        train = self._train_fn(phase, optim, spe, sharded)
        started, last_ckpt, stopped = time.monotonic(), time.monotonic(), "completed"
        last_good = state_copy(self.model)
        while st.epochs_done < st.planned_epochs:
            # the clock may end the schedule inside an epoch: the last one then runs only the steps that remain
            steps = st.next_steps(spe)
            if st.epochs_done and self._out_of_time(phase, st, started, steps / spe):
                # the next epoch no longer fits (the budget's reserve grew, or epochs slowed since the last plan):
                # shrink the schedule to the steps that do, rather than stop with them unspent (fashion100 seed 2
                # stopped 15 s before its budget with a whole epoch planned)
                self._plan_length(phase, st, optim.schedule, spe, started)
                steps = st.next_steps(spe)
            if self._out_of_time(phase, st, started, steps / spe):
                stopped = "time-budget"
                break
            torch.manual_seed(self.epoch_seed())
            order = self.epoch_order(n_train, shard=sharded)
            if steps < spe:
                order = order[: steps * self.config.batch]
            t0 = time.perf_counter()
            self.set_modes(phase)
            try:
                stats = source.train(order, self.global_epoch, train)
                if sharded:
                    self._sync_after_epoch(stats)
                val_stats, logits = source.validate()
            except NonFiniteLossError as exc:
                self.model.load_state_dict(last_good)
                if not self._retry_after_fault(phase, st, exc):
                    stopped = "non-finite-loss"
                    break
                optim = self._optimizer(phase, st, spe)
                train = self._train_fn(phase, optim, spe, sharded)
                continue
            last_good = state_copy(self.model)
            epoch = _Epoch(stats, val_stats, logits, time.perf_counter() - t0, source.kind)
            self._after_epoch(index, phase, st, epoch, optim.opt)
            if phase.patience and st.bad_epochs >= phase.patience and st.epochs_done < st.planned_epochs:
                stopped = "early-stopped"
                break
            if st.epochs_done < st.planned_epochs and (
                st.epochs_done == 1 or time.monotonic() - last_ckpt >= CHECKPOINT_SECONDS
            ):
                self._checkpoint(history, st, optim.opt, phase)
                last_ckpt = time.monotonic()
            # what an epoch costs, its checkpoint included (a partial one scaled to a whole one): rank 0's figure on
            # every rank, so that every rank plans the same number of steps (one rank stepping alone would hang DDP's
            # gradient all-reduce)
            st.cycle_seconds = broadcast_float((time.perf_counter() - t0) * spe / steps, self.dist, self.device)
            st.steady_seconds += st.cycle_seconds if st.epochs_done > 1 else 0.0
            # epochs 1, 2, 4, 8, ...: less often as the plan firms up; and every epoch of the last two planned, where
            # epochs that ran faster than the average so far leave room for one more (fashion100: a plan fixed at
            # epoch 16 ended 10-12 s before the budget; docs/benchmarks.md, "Time budget")
            if st.epochs_done & (st.epochs_done - 1) == 0 or st.planned_epochs - st.epochs_done < PLAN_END_EPOCHS:
                self._plan_length(phase, st, optim.schedule, spe, started)
        result = self._finish(index, phase, st, stopped, source)
        self._checkpoint([*history, result], None, None)
        return result

    def _load_start(self, phase: Phase) -> None:
        """Load the phase's starting weights (``best`` needs nothing: the best weights are restored after every
        phase)."""
        if phase.start == "pretrained":
            self.model.load_state_dict(self.initial)
        elif (kept := phase.start_phase()) is not None:
            self.model.load_state_dict(self.selection.kept[kept][0])
        self._own_best = {}

    def _open(self, phase: Phase, feed: Feed) -> tuple[EpochSource, Callable[[torch.Tensor], torch.Tensor]]:
        forward: nn.Module = self.model
        trainable = [self.params[n] for gi in phase.trainable for n in self.groups[gi].param_names]
        if self.dist.enabled:
            # a fresh DDP wrapper per phase registers exactly the parameters that train now
            forward = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        source = open_source(
            self.model,
            forward,
            phase,
            feed,
            trainable_params=trainable,
            module_group=self._module_group,
            set_modes=lambda: self.set_modes(phase),
            store=self._activation_store,
        )
        if source.kind == "features" and self.dist.enabled:
            forward = self.model  # cached head-only phases run whole on every rank
        if self.config.compile and isinstance(source, ImageSource):
            source.forward = torch.compile(forward)
        return source, forward

    def _activation_store(self) -> ActivationStore:
        if self._store is None:
            where = self.run_dir / "cache" / "activations" if self.run_dir is not None else None
            self._store = ActivationStore(where, self.config.cache_ram_mb * 2**20)
        return self._store

    def optimizer_groups(self, phase: Phase) -> list[dict[str, Any]]:
        """The optimizer's parameter groups for ``phase``: per layer group and decay, with their learning rates;
        weight decay is off under L2-SP (decay toward zero would fight the pull toward the pretrained weights)."""
        wd = 0.0 if self.config.l2sp else self.config.weight_decay
        return param_groups(phase, self.groups, self.params, self._no_decay, wd)

    def _optimizer(self, phase: Phase, st: EpochState, spe: int) -> _Optim:
        lr_phase = replace(phase, lr=phase.lr * st.lr_factor)
        groups = self.optimizer_groups(lr_phase)
        thaws_backbone = any(g < len(self.groups) - 1 for g in phase.trainable)
        opt, sched, schedule = build_optimizer(
            self.config, lr_phase, groups, st.planned_epochs * spe, spe, thaws_backbone
        )
        if st.total_steps:
            schedule.resize(st.total_steps)
        st.total_steps = schedule.total_steps
        if st.steps:
            sched.last_epoch = st.steps
            # LambdaLR sets lr from base_lrs * factor(last_epoch) on its next step; put the current lr in place
            for g, base in zip(opt.param_groups, sched.base_lrs, strict=True):
                g["lr"] = base * schedule(sched.last_epoch)
        return _Optim(opt, sched, schedule)

    def _train_fn(self, phase: Phase, optim: _Optim, spe: int, sharded: bool) -> Callable[..., EpochStats]:
        grad_groups = {gi: [self.params[n] for n in self.groups[gi].param_names] for gi in phase.trainable}
        regularizer = l2sp_regularizer(self.config.l2sp, phase, self.groups, self.params, self.initial)
        hook = self.on_step

        def on_step(step: int, loss: float, acc: float, ips: float) -> None:
            if hook is not None:
                hook(phase.name, step, spe, loss, acc, ips)

        def train(forward: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[Any]) -> EpochStats:
            return train_epoch(
                forward,
                batches,
                optim.opt,
                optim.sched,
                label_smoothing=self.config.label_smoothing,
                class_weights=self.class_weights,
                amp_dtype=self.amp_dtype,
                device=self.device,
                grad_groups=grad_groups,
                regularizer=regularizer,
                on_step=on_step,
                all_agree=self._all_agree if sharded else None,
            )

        return train

    def _time_left(self, phase: Phase, started: float, own: bool = True) -> float | None:
        """Seconds this phase may still train: the budget's, and (``own``) the phase's planned length (rank 0's
        clock)."""
        left = self.budget.left()
        if phase.seconds is not None and own:
            mine = broadcast_float(phase.seconds - (time.monotonic() - started), self.dist, self.device)
            left = mine if left is None else min(left, mine)
        return left

    def _out_of_time(self, phase: Phase, st: EpochState, started: float, fraction: float = 1.0) -> bool:
        """No epoch starts when the clock says it would end past the budget (a phase's own planned length does
        not stop its first epoch: that epoch measures what the length buys); ``fraction``: the share of a whole
        epoch's steps this one runs (the schedule's last epoch may be partial)."""
        left = self._time_left(phase, started, own=st.epochs_done > 0)
        # priced as the plan prices it: a guard on the last epoch's cost alone refused the partial epoch the plan had
        # just made room for whenever that epoch ran slower than the mean (fashion100: 10 of 10.8 planned epochs)
        return left is not None and (left <= 0 or st.epoch_cost * fraction > left)

    def _plan_length(self, phase: Phase, st: EpochState, schedule: WarmupCosine, spe: int, started: float) -> None:
        """Size the schedule to the clock after epochs 1, 2, 4, 8, ..., so the learning rate anneals to zero within
        the budget: the optimizer steps that fit at the measured cost of an epoch (the first one's cost until there
        are more), never more than the phase's epochs. The last epoch may be partial: whole epochs alone left up to
        one epoch of the budget idle, 15 s of 180 on fashion100 (docs/benchmarks.md, "Time budget")."""
        left = self._time_left(phase, started)
        cycle = st.epoch_cost
        if left is None or cycle <= 0:
            return
        fit = min(phase.epochs * spe, st.steps + max(0, int(left / cycle * spe)))
        if fit != st.total_steps:
            epochs = -(-fit // spe)
            log.info(
                "phase %s: %d steps (%.1f epochs of %d) fit the time left (%.0fs at %.1fs an epoch)",
                phase.name,
                fit,
                fit / spe,
                spe,
                left,
                cycle,
            )
            st.planned_epochs = max(epochs, st.epochs_done)
            schedule.resize(fit)
            st.total_steps = schedule.total_steps

    def _retry_after_fault(self, phase: Phase, st: EpochState, exc: NonFiniteLossError) -> bool:
        """After a NaN/inf loss (weights already restored): retry once at a tenth of the lr, then give up."""
        retry = st.lr_factor == 1.0
        if retry:
            st.lr_factor = 0.1
            msg = f"phase {phase.name}: {exc}; restored the last good weights, retrying with lr x0.1"
        else:
            msg = (
                f"phase {phase.name}: {exc} again at lr x0.1; ended the phase with the last good weights "
                "(check the data for corrupt labels, lower --lr, or use --optimizer sgd)"
            )
        self.warnings.append(msg)
        log.warning(msg)
        return retry

    def _after_epoch(self, index: int, phase: Phase, st: EpochState, ep: _Epoch, opt: torch.optim.Optimizer) -> None:
        """Counters, selection, early-stopping state, the metrics row and the progress line of a finished epoch."""
        st.epochs_done += 1
        self.global_epoch += 1
        st.seconds += ep.seconds
        st.images += ep.stats.images
        st.steps = st.steps + ep.stats.steps
        st.last_train_loss, st.last_train_accuracy = ep.stats.loss, ep.stats.accuracy
        score = scored(ep.logits, self.val_data.labels)
        sel = st.selection
        own_better = score.beats(sel.best)
        if own_better:
            sel.best, sel.best_epoch = score, st.epochs_done
            if phase.keep:
                self._own_best = state_copy(self.model)
        sel.last = score
        # patience counts epochs in which neither validation accuracy nor validation loss improved: on small
        # validation sets accuracy moves in steps of one image and stalls while the loss still improves
        loss_better = ep.val.loss < st.min_val_loss - 1e-3 * abs(st.min_val_loss)
        if ep.val.loss < st.min_val_loss:
            st.min_val_loss, st.min_val_loss_epoch = ep.val.loss, st.epochs_done
        st.bad_epochs = 0 if own_better or loss_better else st.bad_epochs + 1
        if not phase.refit and self.selection.offer(self.model, score, (index, st.epochs_done)):
            st.improved_overall_epoch = st.epochs_done
        self._log_epoch(index, phase, st, ep, opt)

    def _log_epoch(self, index: int, phase: Phase, st: EpochState, ep: _Epoch, opt: torch.optim.Optimizer) -> None:
        stats, val_stats, seconds = ep.stats, ep.val, ep.seconds
        names = [g.name for g in self.groups]
        gap = stats.accuracy - val_stats.accuracy
        # a head-only probe on frozen features overfits by design and early stopping handles it
        gap_warning = gap > GAP_WARNING and st.bad_epochs >= 2 and phase.trainable != (len(self.groups) - 1,)
        row = {
            "epoch": self.global_epoch,
            "phase": index,
            "phase_name": phase.name,
            "phase_epoch": st.epochs_done,
            "trainable_groups": [names[i] for i in phase.trainable],
            "lr": next(
                (float(g["lr"]) for g in opt.param_groups if g.get("group") == names[-1]),
                float(opt.param_groups[-1]["lr"]),
            ),
            "lrs": {g["group"]: g["lr"] for g in opt.param_groups},
            "train_loss": stats.loss,
            "train_accuracy": stats.accuracy,
            "val_loss": val_stats.loss,
            "val_accuracy": val_stats.accuracy,
            "val_in_training": phase.refit,
            "seconds": seconds,
            "images_per_second": stats.images_per_second,
            "cached_features": ep.kind == "features",
            "prefix_cache": ep.kind == "prefix",
            "group_drift": weight_drift(self.model, self.initial, self.groups),
            "grad_norm": {names[g]: v for g, v in stats.grad_norm.items()},
            "gap_warning": gap_warning,
        }
        if gap_warning and not any(w.startswith(f"phase {phase.name}, epoch") for w in self.warnings):
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
                f"epoch {self.global_epoch:>3} [{phase.name} {st.epochs_done}/{st.planned_epochs}] "
                f"train loss {stats.loss:.3f} acc {stats.accuracy:.3f} | val loss {val_stats.loss:.3f} "
                f"acc {val_stats.accuracy:.3f} | {stats.images_per_second:.0f} img/s {seconds:.1f}s"
            )

    def _finish(self, index: int, phase: Phase, st: EpochState, stopped: str, source: EpochSource) -> PhaseResult:
        """The phase's selection (its last epoch when within noise of its best), kept weights, the best restored."""
        sel = st.selection
        extra: dict[str, Any] = {"prefix_cache": source.info} if source.info else {}
        take_last = (
            st.epochs_done > 0
            and stopped != "non-finite-loss"
            and (
                phase.refit
                or sel.last.accuracy >= sel.best.accuracy - noise_margin(sel.best.accuracy, len(self.val_data))
            )
        )
        chosen = sel.last if take_last else sel.best
        if phase.refit and st.epochs_done:
            self.selection.adopt(self.model, state_copy(self.model), sel.last, (index, st.epochs_done))
            st.improved_overall_epoch = st.epochs_done
            extra["selection"] = "refit on training + validation images: the last weights are the result"
        elif st.epochs_done and stopped != "non-finite-loss":
            note = self.selection.prefer_last(self.model, index, st.epochs_done, sel.last)
            if note is not None:
                st.improved_overall_epoch = st.epochs_done
                extra["selection"] = note
        if phase.keep and st.epochs_done:
            weights = state_copy(self.model) if take_last else (self._own_best or state_copy(self.model))
            self.selection.kept[index] = (weights, chosen)
        self.selection.restore(self.model)
        if self._store is not None:
            self._store.clear_memory()
        return PhaseResult(
            index=index,
            phase=phase,
            epochs_run=st.epochs_done,
            best_epoch=st.improved_overall_epoch,
            best_val_accuracy=sel.best.accuracy if st.epochs_done else math.nan,
            best_val_loss=sel.best.loss if st.epochs_done else math.nan,
            last_train_loss=st.last_train_loss,
            last_train_accuracy=st.last_train_accuracy,
            seconds=st.seconds,
            images_per_second=st.images / st.seconds if st.seconds else 0.0,
            stopped=stopped,
            cached_features=source.kind == "features",
            steps=st.steps,
            setup_seconds=source.setup_seconds,
            selected_val_accuracy=chosen.accuracy if st.epochs_done else math.nan,
            selected_val_loss=chosen.loss if st.epochs_done else math.nan,
            val_correct=chosen.correct,
            val_nll=chosen.nll,
            min_val_loss_epoch=st.min_val_loss_epoch,
            extra=extra,
        )

    # ----------------------------------------------------------------- distributed
    def _all_agree(self, flag: bool) -> bool:
        return all_reduce_sum([0.0 if flag else 1.0], self.dist, self.device)[0] == 0.0

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

    # ----------------------------------------------------------------- checkpoint / resume
    def _checkpoint(
        self,
        history: Sequence[StepResult],
        st: EpochState | None,
        opt: torch.optim.Optimizer | None,
        running: Phase | None = None,
    ) -> None:
        if self.run_dir is not None:
            run_state.save(self, self.run_dir / "checkpoints" / "last", history, st, opt, running)

    def load_state(self, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> None:
        """Restore weights, selection and counters from a checkpoint (the optimizer is restored by run_phase)."""
        run_state.restore(self, tensors, state)
