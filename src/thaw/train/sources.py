"""Where a phase's training batches come from, behind one interface.

* ``ImageSource``: decoded images through the whole network, augmented on the fly.
* ``FeatureSource``: only the classifier trains, so the backbone's pooled features are computed once and the
  classifier trains on them (exact: nothing before the classifier changes).
* ``PrefixSource``: only upper groups train, so the frozen lower layers run once per image and the upper ones train
  on their stored outputs (``train/prefix.py``; used only where the cut is verified exact).

``open_source`` picks the cheapest exact one. ``Feed`` turns decoded images into normalised batches for all of them
(and for bench/speed.py, which measures the same path).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from thaw.config import FitConfig
from thaw.data.cache import DecodedImages, ImageDataset
from thaw.data.transforms import make_augment, normalize
from thaw.strategy.base import Phase
from thaw.train.loop import EpochStats, autocast, evaluate, tensor_batches
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

__all__ = ["Feed", "EpochSource", "ImageSource", "FeatureSource", "PrefixSource", "open_source", "concat"]

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
#: What a source calls to train one epoch: (forward, batches) -> statistics; the runner supplies it (optimizer,
#: schedule, loss, DDP synchronisation).
TrainFn = Callable[[Callable[[torch.Tensor], torch.Tensor], Iterable[Batch]], EpochStats]


def concat(a: DecodedImages, b: DecodedImages) -> DecodedImages:
    """Two decoded sets as one (a refit trains on training + validation images)."""
    return DecodedImages(
        images=torch.cat([a.images, b.images]),
        labels=torch.cat([a.labels, b.labels]),
        paths=[*a.paths, *b.paths],
        hashes=[*a.hashes, *b.hashes],
    )


@dataclass
class EvalCost:
    """The measured cost of a forward-only pass of the whole model, per image: the last pass over at least two eval
    batches (the first batch of a process pays one-time set-up, so a longer pass is the steadier figure)."""

    seconds_per_image: float | None = None


@dataclass(eq=False)
class Feed:
    """Decoded images -> normalised batches on the device, for training and for forward-only passes.

    A refit trains on ``replace(feed, train=concat(feed.train, feed.val))``.
    """

    train: DecodedImages
    val: DecodedImages
    config: FitConfig
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    amp_dtype: torch.dtype | None = None
    eval_cost: EvalCost = field(default_factory=EvalCost)
    """Shared with the copies ``replace`` makes (a refit's feed), so every pass refreshes the one figure."""

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.mean, self.std, channels_last=self.config.channels_last)

    @property
    def eval_batch_size(self) -> int:
        """Batch size of forward-only passes: twice the training batch on accelerators; at most 32 on CPU, where
        larger batches are no faster but hold 4x the activations (docs/benchmarks.md, "Memory")."""
        if self.device.type == "cpu":
            return min(self.config.batch, 32)
        return self.config.batch * 2

    def train_batches(self, augment: str, order: torch.Tensor) -> Iterator[Batch]:
        """The training images in ``order``, augmented with the ``augment`` preset, normalised, on the device."""
        cfg, data = self.config, self.train
        aug = make_augment(augment, data.images.shape[-1])
        if aug is not None and cfg.workers > 0:
            loader = torch.utils.data.DataLoader(
                ImageDataset(data, aug),
                batch_size=cfg.batch,
                sampler=order.tolist(),
                num_workers=cfg.workers,
                drop_last=len(data) % cfg.batch == 1 and len(data) > 1,
                pin_memory=self.device.type == "cuda",
            )
            for x, y in loader:
                yield self.normalize(x).to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            return

        def transform(x: torch.Tensor) -> torch.Tensor:
            if aug is not None:
                x = torch.stack([aug(img) for img in x])
            return self.normalize(x)

        yield from tensor_batches(
            data.images,
            data.labels,
            cfg.batch,
            order=order,
            transform=transform,
            device=self.device,
            drop_singleton=True,
        )

    def eval_batches(self, data: DecodedImages) -> Iterator[Batch]:
        return tensor_batches(
            data.images, data.labels, self.eval_batch_size, transform=self.normalize, device=self.device
        )

    def predict_logits(self, model: nn.Module, data: DecodedImages) -> tuple[EpochStats, torch.Tensor]:
        """Evaluate ``model`` on decoded images (eval mode, inference_mode)."""
        model.eval()
        started = time.perf_counter()
        out = evaluate(model, self.eval_batches(data), amp_dtype=self.amp_dtype, device=self.device)
        if len(data) >= 2 * self.eval_batch_size:
            self.eval_cost.seconds_per_image = (time.perf_counter() - started) / len(data)
        return out

    @torch.inference_mode()
    def pre_logits(self, model: nn.Module, data: DecodedImages) -> torch.Tensor:
        """Pooled features right before the classifier (timm's ``forward_head(pre_logits=True)``), float32."""
        model.eval()
        fwd_features: Callable[..., torch.Tensor] = getattr(model, "forward_features")  # noqa: B009
        fwd_head: Callable[..., torch.Tensor] = getattr(model, "forward_head")  # noqa: B009
        return torch.cat([fwd_head(fwd_features(x), pre_logits=True).float() for x, _ in self.eval_batches(data)])


class EpochSource(Protocol):
    """One phase's epochs: training batches through the right forward, and the validation pass."""

    kind: str
    """``images``, ``features`` or ``prefix`` (metrics.jsonl and summary.json say which)."""
    sharded: bool
    """Whether a distributed run splits the epoch across ranks (cheap cached head-only epochs run whole)."""
    setup_seconds: float
    info: dict[str, Any]

    def train(self, order: torch.Tensor, epoch: int, step: TrainFn) -> EpochStats: ...

    def validate(self) -> tuple[EpochStats, torch.Tensor]: ...


class ImageSource:
    kind, setup_seconds = "images", 0.0

    def __init__(
        self,
        model: nn.Module,
        forward: Callable[[torch.Tensor], torch.Tensor],
        feed: Feed,
        phase: Phase,
        info: dict[str, Any],
    ) -> None:
        self.model, self.forward, self.feed, self.phase, self.info = model, forward, feed, phase, info
        self.sharded = True

    def train(self, order: torch.Tensor, epoch: int, step: TrainFn) -> EpochStats:
        return step(self.forward, self.feed.train_batches(self.phase.augment, order))

    def validate(self) -> tuple[EpochStats, torch.Tensor]:
        return self.feed.predict_logits(self.model, self.feed.val)


class FeatureSource:
    kind, sharded = "features", False

    def __init__(self, model: nn.Module, feed: Feed) -> None:
        get_classifier: Callable[[], nn.Module] = getattr(model, "get_classifier")  # noqa: B009
        self.classifier, self.feed = get_classifier(), feed
        self.info: dict[str, Any] = {}
        t0 = time.perf_counter()
        self.train_feats, self.val_feats = feed.pre_logits(model, feed.train), feed.pre_logits(model, feed.val)
        self.setup_seconds = time.perf_counter() - t0
        log.info(
            "cached %d frozen feature vectors in %.1fs", len(self.train_feats) + len(self.val_feats), self.setup_seconds
        )

    def train(self, order: torch.Tensor, epoch: int, step: TrainFn) -> EpochStats:
        self.classifier.train()
        bs = self.feed.config.batch
        stats = step(
            self.classifier,
            tensor_batches(self.train_feats, self.feed.train.labels, bs, order=order, device=self.feed.device),
        )
        self.classifier.eval()
        return stats

    def validate(self) -> tuple[EpochStats, torch.Tensor]:
        bs = self.feed.config.batch * 2
        self.classifier.eval()
        return evaluate(
            self.classifier,
            tensor_batches(self.val_feats, self.feed.val.labels, bs, device=self.feed.device),
            device=self.feed.device,
        )


class PrefixSource:
    kind, sharded = "prefix", True

    def __init__(
        self,
        model: nn.Module,
        forward: Callable[[torch.Tensor], torch.Tensor],
        plan: PrefixPlan,
        feed: Feed,
        phase: Phase,
        store: ActivationStore,
        info: dict[str, Any],
    ) -> None:
        self.model, self.forward, self.plan, self.feed, self.info = model, forward, plan, feed, info
        t0 = time.perf_counter()
        self.train_acts, self.val_acts = _activations(model, plan, feed, phase, store, int(info["views"]))
        self.setup_seconds = time.perf_counter() - t0
        info["build_seconds"] = self.setup_seconds
        info["megabytes"] = (sum(a.numel() for a in self.train_acts) + self.val_acts.numel()) * 4 / 2**20
        log.info(
            "phase %s: cached the frozen prefix up to %s (%d view(s), %.0f MiB) in %.1fs",
            phase.name,
            plan.boundary,
            len(self.train_acts),
            info["megabytes"],
            self.setup_seconds,
        )

    def _batches(
        self, acts: torch.Tensor, labels: torch.Tensor, size: int, order: torch.Tensor | None = None
    ) -> Iterator[Batch]:
        def layout(a: torch.Tensor) -> torch.Tensor:
            if self.feed.config.channels_last and a.ndim == 4:
                return a.contiguous(memory_format=torch.channels_last)
            return a

        return tensor_batches(
            acts, labels, size, order=order, transform=layout, device=self.feed.device, drop_singleton=order is not None
        )

    def train(self, order: torch.Tensor, epoch: int, step: TrainFn) -> EpochStats:
        view = self.train_acts[epoch % len(self.train_acts)]
        with SuffixForward(self.model, self.plan, runner=self.forward) as suffix:
            return step(suffix, self._batches(view, self.feed.train.labels, self.feed.config.batch, order))

    def validate(self) -> tuple[EpochStats, torch.Tensor]:
        self.model.eval()
        with SuffixForward(self.model, self.plan) as suffix:
            batches = self._batches(self.val_acts, self.feed.val.labels, self.feed.eval_batch_size)
            return evaluate(suffix, batches, amp_dtype=self.feed.amp_dtype, device=self.feed.device)


def open_source(
    model: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    phase: Phase,
    feed: Feed,
    *,
    trainable_params: list[nn.Parameter],
    module_group: dict[str, int],
    set_modes: Callable[[], None],
    store: Callable[[], ActivationStore],
) -> EpochSource:
    """The cheapest exact source for ``phase``: cached features, a verified frozen prefix, or images."""
    cfg = feed.config
    if _features_exact(model, phase, cfg, trainable_params):
        return FeatureSource(model, feed)
    plan, info = _prefix_plan(model, phase, feed, module_group, set_modes)
    if plan is None:
        if min(phase.trainable) > 0:
            log.info("phase %s: frozen-prefix cache not used: %s", phase.name, info["reason"])
        return ImageSource(model, forward, feed, phase, info)
    return PrefixSource(model, forward, plan, feed, phase, store(), info)


def _features_exact(model: nn.Module, phase: Phase, cfg: FitConfig, trainable: list[nn.Parameter]) -> bool:
    """Exact only when nothing but the classifier trains, the rest runs in eval mode, and inputs are fixed."""
    policy = cfg.bn if phase.bn_policy == "auto" else phase.bn_policy
    if phase.augment != "none" or policy == "train-all":
        return False
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None or getattr(model, "forward_head", None) is None:
        return False
    classifier = get_classifier()
    if not isinstance(classifier, nn.Module):
        return False
    cls_params = {id(p) for p in classifier.parameters()}
    if not trainable or any(id(p) not in cls_params for p in trainable):
        return False
    # the classifier must be the only trainable module: any dropout before it would differ from pre_logits
    return float(getattr(model, "drop_rate", 0.0) or 0.0) == 0.0


def _prefix_plan(
    model: nn.Module, phase: Phase, feed: Feed, module_group: dict[str, int], set_modes: Callable[[], None]
) -> tuple[PrefixPlan | None, dict[str, Any]]:
    """A verified cut below the phase's lowest trainable group, or None and the reason (for summary.json)."""
    cfg = feed.config
    first = min(phase.trainable)
    views = cfg.cache_views if phase.cache_views is None else phase.cache_views
    if first == 0:
        return None, {"used": False, "reason": "the lowest layer group trains: no frozen prefix"}
    if not cfg.prefix_cache:
        return None, {"used": False, "reason": "off (--no-prefix-cache)"}
    if phase.augment != "none" and views < 1:
        return None, {
            "used": False,
            "reason": f"augmentation '{phase.augment}' draws new images every epoch: pass --cache-views K to "
            "cache K augmented views, or --augment none",
        }
    example = feed.normalize(feed.train.images[: min(4, len(feed.train))]).to(feed.device)
    with autocast(feed.device, feed.amp_dtype):
        found = plan_prefix(model, module_group, first, example)
    if isinstance(found, str):
        return None, {"used": False, "reason": found}
    # the cache holds eval-mode outputs: the frozen layers must compute the same in this phase's training mode
    set_modes()
    for name in found.replaced:
        why = mode_sensitive(model.get_submodule(name))
        if why is not None:
            return None, {"used": False, "reason": f"the frozen layers change while training: {why}"}
    return found, {
        "used": True,
        "boundary": found.boundary,
        "replaced_modules": len(found.replaced),
        "views": 1 if phase.augment == "none" else views,
        "activation_shape": list(found.act_shape),
        "verified_max_logit_diff": found.verified_diff,
    }


def _activations(
    model: nn.Module, plan: PrefixPlan, feed: Feed, phase: Phase, store: ActivationStore, views: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Boundary activations of ``views`` views of the training images and of the validation images."""
    cfg, bs = feed.config, feed.eval_batch_size
    common = {"mean": feed.mean, "std": feed.std, "channels_last": cfg.channels_last, "amp": str(feed.amp_dtype)}

    def build(images: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
        def run(out: torch.Tensor | None) -> torch.Tensor:
            model.eval()
            with autocast(feed.device, feed.amp_dtype):
                return prefix_activations(model, plan, batched(images, bs, fn), out)

        return run

    def plain(x: torch.Tensor) -> torch.Tensor:
        return feed.normalize(x).to(feed.device)

    train_images, val_images = feed.train.images, feed.val.images
    train_digest = digest(train_images)
    val_key = cache_key(model, plan, digest(val_images), {**common, "augment": "none"})
    val = store.get(val_key, (len(feed.val), *plan.act_shape), build(val_images, plain))
    shape = (len(feed.train), *plan.act_shape)
    if phase.augment == "none":
        key = cache_key(model, plan, train_digest, {**common, "augment": "none"})
        return [store.get(key, shape, build(train_images, plain))], val
    aug = make_augment(phase.augment, train_images.shape[-1])
    assert aug is not None

    def augmented(x: torch.Tensor) -> torch.Tensor:
        return feed.normalize(torch.stack([aug(img) for img in x])).to(feed.device)

    train: list[torch.Tensor] = []
    for v in range(views):
        key = cache_key(model, plan, train_digest, {**common, "augment": phase.augment, "view": v, "seed": cfg.seed})
        torch.manual_seed(cfg.seed * 7919 + v)  # view v draws the same augmentations in every run
        train.append(store.get(key, shape, build(train_images, augmented)))
    return train, val
