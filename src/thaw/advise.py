"""``thaw advise``: measure the data and candidate models before training, and recommend a fine-tuning plan.

One call reads top to bottom:

```
scan(train) -> dataset facts (counts, imbalance, native size, skipped) -> stratified subsample
  -> per model: load -> decode (once per distinct preprocessing) -> stage features (one forward pass)
     -> LogME per stage, k-NN per stage, linear probe on the final features, timed training steps
  -> recommend(facts, rows): a plan per model, the ranking, and the chosen plan: model, strategy, epochs and lr,
     each with the numbers it came from
```

Resolution: when the source images are smaller than 96 px (median shorter side) and no ``img_size`` is given,
the models run at 96 px instead of their pretrained resolution. Upsampling tiny images to 224 px adds no
information and costs ~5x the compute; 96 px keeps the pretrained filters in a useful range. The recommended
command carries the same ``--img-size``.

Decision rules (``recommend``) use only the measured numbers, with thresholds stated as constants below:

* **Model**: each candidate gets its own plan (the rules below), then the candidates are ranked. First by
  cross-validated linear-probe accuracy on the final features; those within noise of the best (``MODEL_NOISE``
  standard errors of the difference of two accuracies on the measured images, at least ``MODEL_TIE``) by LogME,
  which is more stable on small sets; those whose LogME is also within noise of the best (``MODEL_NOISE``
  delete-a-fold jackknife standard errors of the paired difference) by size: when the measurements cannot tell
  candidates apart, the largest model (most parameters) whose full fine-tuning fits the budget wins, since larger
  ImageNet models transfer better when training can afford them; when none fits (or all are one size), the clearly
  cheaper one (costs up to ``1 + COST_TIE`` times the cheapest count as equal, and LogME orders them). The choice
  states its numbers and its expected cost (seconds per epoch, estimated training time).
* **Distance from the pretraining distribution** (of the chosen model): when globally pooled features of an early
  stage classify almost as well (k-NN) as the final features, or a middle stage has a higher LogME than the final
  features, the late layers are specialised to the pretraining data and this data is "far": thaw deeper.
* **Depth** starts from the images per class (median): very few -> linear probe, few -> 2 groups, a moderate
  number -> half the backbone, many -> everything; "far" data doubles it, an already near-perfect probe on "near"
  data caps it at 2 groups, a weak probe lifts it to at least half the backbone (when there are enough images).
* **Strategy**: depth 0 -> ``linear``; all groups -> ``lp-ft`` (``full`` when the data is far and large, where the
  probe's protection of the pretrained features does not matter); otherwise ``last-k --k DEPTH``.
* **Epochs**: about ``TARGET_PRESENTATIONS`` image presentations, between ``MIN_EPOCHS`` and ``MAX_EPOCHS``; a
  time budget cuts them to what the measured seconds per epoch allow, and switches to a shallower strategy when
  fewer than ``MIN_EPOCHS`` would fit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thaw.config import ADVISE_MAX_IMAGES
from thaw.data.cache import DecodedImages, decode_all
from thaw.data.sources import scan
from thaw.data.split import subsample_per_class
from thaw.data.transforms import Preprocess, normalize
from thaw.data.types import Sample
from thaw.errors import DataError, ModelError, ThawError
from thaw.jsonio import json_safe, write_json
from thaw.models.builtin import BUILTIN_MODELS
from thaw.models.groups import LayerGroup, layer_groups
from thaw.models.load import load_model
from thaw.strategy.registry import required_options
from thaw.strategy.signals import logme, probe_score, stage_features

__all__ = [
    "AdviseResult",
    "DatasetFacts",
    "Decision",
    "ModelRow",
    "Plan",
    "StageRow",
    "advise",
    "measure_model",
    "recommend",
]

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: Images measured by default (a stratified subsample of larger training sets).
MAX_IMAGES = ADVISE_MAX_IMAGES
#: Source images smaller than this (median shorter side) are measured at this resolution when no img_size is given.
SMALL_IMAGE_SIZE = 96
#: Files whose header is read to find the native resolution.
SIZE_SAMPLE = 200
#: Images per timed training step (small: the timing is scaled per image, and CPU time is scarce here).
STEP_BATCH = 16
#: Images per forward batch of the feature pass (``stage_features``'s default); the untimed warm-up is one batch.
FEATURE_BATCH = 64
#: Linear-probe accuracies within this of the best count as a tie between models (then LogME decides), even when
#: their standard error is smaller.
MODEL_TIE = 0.01
#: Standard errors by which one model's probe accuracy (or LogME) must lead another's to rank it above on that
#: measurement: two, as thaw's phase selection uses. Two equal models differ by more than one standard error about
#: a third of the time, by more than two about one time in twenty; with one, the ranking matched the best backbone in
#: hindsight on 1 of 6 seeds of two digit tasks (100-300 images; docs/benchmarks.md, "Backbones").
MODEL_NOISE = 2.0
#: Among models tied on probe and LogME whose full fine-tuning does not fit the budget (or that are the same size),
#: epoch costs up to (1 + COST_TIE) x the cheapest count as equal and LogME orders them: a smaller saving is not
#: worth a lower LogME, and the timed steps of one model's plan varied by up to 1.6x between six single-threaded
#: runs on a shared 2-core machine (docs/benchmarks.md, "thaw advise across the built-in models"; far more with two
#: threads on busy cores).
COST_TIE = 0.5
#: Images per class (median) below which only the head is trained, and below which only 2 groups are thawed.
TINY_PER_CLASS = 10
SMALL_PER_CLASS = 100
#: Images per class (median) from which everything is thawed.
LARGE_PER_CLASS = 1000
#: Final-minus-early k-NN accuracy below which early features count as "nearly as good" (data far from pretraining).
FAR_KNN_GAP = 0.05
#: Final-minus-early k-NN accuracy from which the data counts as near the pretraining distribution.
NEAR_KNN_GAP = 0.15
#: A middle stage whose LogME beats the final features' by more than this marks the data as far.
FAR_LOGME_MARGIN = 0.0
#: Linear-probe accuracy from which the frozen features are considered near-saturated, and below which weak.
SATURATED_PROBE = 0.97
WEAK_PROBE = 0.6
#: Epoch rule: about this many image presentations, clipped to [MIN_EPOCHS, MAX_EPOCHS].
TARGET_PRESENTATIONS = 10_000
MIN_EPOCHS = 3
MAX_EPOCHS = 30


# ---------------------------------------------------------------------------------------------------- records
@dataclass
class StageRow:
    """Measurements on the pooled features at one layer-group boundary (or ``pre_logits``)."""

    name: str
    dim: int
    logme: float
    knn_accuracy: float


@dataclass
class ModelRow:
    """One candidate model: what it costs and how well its frozen features fit the data.

    Attributes:
        name: model name as given.
        source: where the weights came from (``builtin:...``, ``hub:...``, ``file:...``).
        error: why the model could not be measured (the other fields are then empty).
        weights: the weights file or folder given for it, if any.
        params: number of parameters.
        img_size: input resolution it was measured at.
        groups: layer-group names, input to output (the last is "head").
        feature_dim: size of the final (pre-logits) features.
        logme: LogME of the final features.
        logme_folds: LogME of the final features with each cross-validation fold left out (the folds of the
            probes), for a jackknife estimate of the noise of LogME differences between models.
        images: images the model was measured on.
        knn_accuracy: cross-validated 5-NN (cosine) accuracy on the final features.
        linear_accuracy: cross-validated logistic-regression accuracy on the final features.
        images_per_second: forward (inference) throughput measured during the feature pass.
        step_seconds: measured seconds of one training step on ``STEP_BATCH`` images, per strategy
            ("last-k" = head + 2 groups, "full").
        epoch_seconds: estimated seconds per epoch over the whole training set, per strategy ("linear": the one
            forward pass that caches features; "last-k": k=2; "full").
        stages: measurements at every stage boundary, then ``pre_logits``.
        seconds: time spent measuring this model.
    """

    name: str
    source: str = ""
    error: str | None = None
    weights: str | None = None
    params: int = 0
    img_size: int = 0
    groups: list[str] = field(default_factory=list)
    feature_dim: int = 0
    logme: float = math.nan
    logme_folds: list[float] = field(default_factory=list)
    images: int = 0
    knn_accuracy: float = math.nan
    linear_accuracy: float = math.nan
    images_per_second: float = math.nan
    step_seconds: dict[str, float] = field(default_factory=dict)
    epoch_seconds: dict[str, float] = field(default_factory=dict)
    stages: list[StageRow] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class DatasetFacts:
    """What the training data looks like.

    Attributes:
        train: the scanned path.
        num_images: usable images: scanned images minus those that failed to decode among the measured ones
            (files outside a subsample are not decoded here).
        classes: class names.
        images_per_class: ``{"min", "median", "max"}`` over classes.
        imbalance_ratio: largest class / smallest class.
        native_size: median (width, height) in pixels of a sample of files, read from their headers.
        files_seen: files the scan looked at.
        skipped: files passed over, ``{"path", "reason"}`` (scan and decoding).
        measured_images: images the models were measured on (a stratified subsample up to ``max_images``).
        img_size: resolution the models were measured at when it overrides their default, else None.
    """

    train: str
    num_images: int
    classes: list[str]
    images_per_class: dict[str, float]
    imbalance_ratio: float
    native_size: tuple[int, int] | None
    files_seen: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    measured_images: int = 0
    img_size: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class Decision:
    """One decision of the plan and the numbers behind it."""

    topic: str
    choice: str
    reason: str


@dataclass
class Plan:
    """The recommended ``thaw fit`` run.

    Attributes:
        model: chosen model name.
        strategy: strategy name (``linear``, ``last-k``, ``lp-ft``, ``full``).
        options: ``FitConfig`` field -> value for the run (``strategy``, ``k``, ``epochs``, ``lr``, ...).
        command: the ``thaw fit`` command line.
        decisions: every decision with its reason, in order.
        estimated_seconds: estimated training time of the plan.
        distance: the distance-from-pretraining measurements and verdict (``near``, ``moderate``, ``far``, or
            ``unknown``).
        epoch_seconds: measured (or interpolated) seconds per training epoch of the plan's strategy.
        ranking: every measured candidate, best first: ``rank``, ``model``, ``linear_accuracy``, ``logme``,
            ``strategy`` (of that model's own plan), ``img_size``, ``epoch_seconds``, ``estimated_seconds``.
    """

    model: str
    strategy: str
    options: dict[str, Any]
    command: str
    decisions: list[Decision]
    estimated_seconds: float | None
    distance: dict[str, Any]
    epoch_seconds: float | None = None
    ranking: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class AdviseResult:
    """Everything ``advise`` measured and recommends."""

    dataset: DatasetFacts
    models: list[ModelRow]
    plan: Plan
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN and infinities become null)."""
        data = {
            "dataset": {**asdict(self.dataset), "num_classes": self.dataset.num_classes},
            "models": [asdict(r) for r in self.models],
            "plan": asdict(self.plan),
            "seconds": self.seconds,
        }
        out = json_safe(data)
        assert isinstance(out, dict)
        return out

    def write_json(self, path: str | Path) -> Path:
        """Write ``to_dict()`` as JSON (``advise.json``); returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        return write_json(target, self.to_dict())

    def format_table(self) -> str:
        """Readable terminal tables: dataset, candidate models, stages of the chosen model, plan with reasons."""
        return "\n\n".join(
            part
            for part in (
                _format_dataset(self.dataset),
                _format_models(self.models),
                _format_ranking(self.plan),
                _format_stages(self.models, self.plan),
                _format_plan(self.plan),
            )
            if part
        )


# --------------------------------------------------------------------------------------------------- the run
def advise(
    train: str,
    *,
    models: Sequence[str] | None = None,
    weights: Mapping[str, str] | None = None,
    img_size: int | None = None,
    max_images: int = MAX_IMAGES,
    seed: int = 0,
    time_budget: float | None = None,
    progress: Progress | None = None,
) -> AdviseResult:
    """Measure the training data and candidate models, and recommend a fine-tuning plan.

    Args:
        train: training data (a folder of class subfolders or a CSV manifest).
        models: candidate model names (timm names, ``hf-hub:...``, or built-in offline models). A model that
            cannot be loaded (e.g. hub weights offline) gets a row with its error; the others still run.
            None: every built-in offline model (``efficientnet_lite0``, ``_lite1``, ``_lite2``).
        weights: model name -> weights file or timm model folder, for models not loadable by name.
        img_size: resolution to measure at; default: the model's own, or 96 px for images smaller than 96 px.
        max_images: measure on a stratified subsample of at most about this many images.
        seed: subsampling and cross-validation seed.
        time_budget: training budget in seconds the plan must fit in (None: no limit).
        progress: called with a short line at each step (for the CLI).

    Returns:
        The dataset facts, one row per model, and the plan.

    Raises:
        DataError: the training data cannot be used.
        ModelError: no candidate model could be measured (each error is listed).
        ConfigError: bad options.

    Example:
        >>> result = advise("data/train", models=["efficientnet_lite0", "efficientnet_lite1"])
        >>> print(result.format_table())
        >>> result.write_json("advise.json")
    """
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    if models is None:
        # The built-in models need no network and span a speed/accuracy range, and the backbone is the choice that
        # moves accuracy most; all three measure in well under a minute on the embedded sample (docs/benchmarks.md).
        models = sorted(BUILTIN_MODELS)
    if not models:
        raise ModelError(f"advise needs at least one candidate model: pass --models {','.join(sorted(BUILTIN_MODELS))}")
    if max_images < 2:
        raise DataError(f"max_images must be at least 2, got {max_images}")
    weights = dict(weights or {})

    say(f"scanning {train}")
    scanned = scan(train)
    labels_all = np.array([s.label for s in scanned.samples], dtype=np.int64)
    counts = np.bincount(labels_all, minlength=len(scanned.classes))
    native = _native_size(scanned.samples, seed)
    if img_size is None and native is not None and min(native) < SMALL_IMAGE_SIZE:
        img_size = SMALL_IMAGE_SIZE
        logger.info("images are %dx%d px: measuring at %d px", native[0], native[1], img_size)
    chosen = (
        subsample_per_class(labels_all.tolist(), max_images / len(labels_all), seed)
        if len(labels_all) > max_images
        else list(range(len(labels_all)))
    )
    samples = [scanned.samples[i] for i in chosen]
    facts = DatasetFacts(
        train=str(train),
        num_images=len(scanned.samples),
        classes=list(scanned.classes),
        images_per_class={
            "min": int(counts.min()),
            "median": float(np.median(counts)),
            "max": int(counts.max()),
        },
        imbalance_ratio=float(counts.max() / max(int(counts.min()), 1)),
        native_size=native,
        files_seen=scanned.files_seen,
        skipped=[{"path": s.path, "reason": s.reason} for s in scanned.skipped],
        measured_images=len(samples),
        img_size=img_size,
    )

    decoded: dict[Preprocess, DecodedImages] = {}
    rows: list[ModelRow] = []
    for name in models:
        say(f"measuring {name}")
        rows.append(
            measure_model(
                name,
                weights.get(name),
                samples,
                facts,
                decoded,
                img_size=img_size,
                seed=seed,
                say=say,
            )
        )
    if not any(r.ok for r in rows):
        raise ModelError("no candidate model could be measured: " + "; ".join(f"{r.name}: {r.error}" for r in rows))
    # decode failures count once, from the first decoding
    if decoded:
        first = next(iter(decoded.values()))
        facts.skipped += [{"path": s.path, "reason": s.reason} for s in first.skipped]
        facts.num_images -= len(first.skipped)
        facts.measured_images = len(first)

    plan = recommend(facts, rows, time_budget=time_budget)
    return AdviseResult(dataset=facts, models=rows, plan=plan, seconds=time.perf_counter() - started)


def _native_size(samples: Sequence[Sample], seed: int) -> tuple[int, int] | None:
    """Median (width, height) of up to ``SIZE_SAMPLE`` files, from their headers (PIL reads no pixels here)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    picks: list[int] = rng.permutation(len(samples))[:SIZE_SAMPLE].tolist()
    sizes: list[tuple[int, int]] = []
    for i in picks:
        try:
            with Image.open(samples[int(i)].path) as img:
                sizes.append(img.size)
        except (OSError, ValueError, Image.DecompressionBombError):
            continue  # unreadable files are reported by decoding
    if not sizes:
        return None
    return int(np.median([w for w, _ in sizes])), int(np.median([h for _, h in sizes]))


def measure_model(
    name: str,
    weights: str | None,
    samples: Sequence[Sample],
    facts: DatasetFacts,
    decoded: dict[Preprocess, DecodedImages],
    *,
    img_size: int | None,
    seed: int,
    say: Progress,
) -> ModelRow:
    """Load one model and measure it; a model that cannot be loaded yields a row with its error."""
    started = time.perf_counter()
    row = ModelRow(name=name, weights=weights)
    try:
        loaded = load_model(name, facts.num_classes, weights=weights, img_size=img_size)
    except ThawError as e:
        logger.warning("skipping %s: %s", name, e)
        row.error = str(e)
        return row
    model = loaded.model
    row.source = loaded.source
    groups = layer_groups(model)
    row.groups = [g.name for g in groups]
    row.params = sum(p.numel() for p in model.parameters())
    preprocess = Preprocess.from_data_config(loaded.data_config, img_size=img_size)
    row.img_size = preprocess.size
    if preprocess not in decoded:
        say(f"decoding {len(samples)} images at {preprocess.size} px")
        decoded[preprocess] = decode_all(samples, preprocess)
    data = decoded[preprocess]
    if len(data) < 2:
        row.error = "fewer than two images could be decoded"
        return row
    labels = data.labels.numpy()

    say(f"{name}: features at every stage ({len(data)} images)")
    # one untimed batch first: a model's first forward pass pays one-time set-up (allocation, kernel selection),
    # and on a few dozen images that is a large part of the pass. Timed cold, the first model measured paid it alone:
    # on 40 images (stamps, 96 px) Lite0, measured first, 0.139 s an epoch cold against 0.104 s warm, while Lite1 and
    # Lite2 cost 0.09-0.12 s either way (docs/benchmarks.md, "Backbones")
    stage_features(
        model, groups, data.images[:FEATURE_BATCH], preprocess.mean, preprocess.std, batch_size=FEATURE_BATCH
    )
    t0 = time.perf_counter()
    feats = stage_features(model, groups, data.images, preprocess.mean, preprocess.std, batch_size=FEATURE_BATCH)
    row.images_per_second = len(data) / max(time.perf_counter() - t0, 1e-9)

    say(f"{name}: LogME and probes")
    for key, value in feats.items():
        row.stages.append(
            StageRow(
                name=key,
                dim=int(value.shape[1]),
                logme=logme(value, labels),
                knn_accuracy=float(probe_score(value, labels, seed=seed, linear=False)["knn_accuracy"]),
            )
        )
    final = feats["pre_logits"]
    probes = probe_score(final, labels, seed=seed)
    row.feature_dim = int(final.shape[1])
    row.logme = row.stages[-1].logme
    row.logme_folds = _logme_folds(final, labels, seed)
    row.images = len(data)
    row.knn_accuracy = float(probes["knn_accuracy"])
    row.linear_accuracy = float(probes["linear_accuracy"])

    say(f"{name}: timing training steps")
    batch = data.images[: min(STEP_BATCH, len(data))]
    x = normalize(batch, preprocess.mean, preprocess.std)
    y = data.labels[: len(batch)]
    k = min(2, len(groups) - 1)
    row.step_seconds = _time_steps(
        model, groups, {"last-k": range(len(groups) - 1 - k, len(groups)), "full": range(len(groups))}, x, y
    )
    forward = facts.num_images / row.images_per_second
    full = facts.num_images * row.step_seconds["full"] / len(batch)
    # Thawing fewer groups never costs more than thawing all (or less than a forward pass): clamp timing noise.
    last_k = min(max(facts.num_images * row.step_seconds["last-k"] / len(batch), forward), max(full, forward))
    row.epoch_seconds = {"linear": forward, "last-k": last_k, "full": max(full, last_k)}
    row.seconds = time.perf_counter() - started
    return row


def _logme_folds(features: np.ndarray, labels: np.ndarray, seed: int) -> list[float]:
    """LogME with each fold of the probes' stratified 5-fold split left out (empty when a class has < 2 images).

    The folds depend only on the labels and the seed, so every model measured on the same images gets the same
    ones, and LogME differences between models can be paired fold by fold (``_logme_noise``).
    """
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels)
    folds = min(5, int(counts[counts > 0].min())) if counts.any() else 0
    if folds < 2 or np.count_nonzero(counts) < 2:
        return []
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [logme(features[kept], labels[kept]) for kept, _ in split.split(features, labels)]


def _time_steps(
    model: torch.nn.Module,
    groups: Sequence[LayerGroup],
    strategies: Mapping[str, Sequence[int] | range],
    x: torch.Tensor,
    y: torch.Tensor,
) -> dict[str, float]:
    """Seconds of one training step (forward, backward, AdamW update) for each set of trainable groups.

    One untimed warm-up step with every group trainable (allocation, kernel selection for the whole backward pass),
    then two timed steps per strategy, interleaved, keeping the fastest: the minimum is the most stable estimate on
    a machine shared with other work, and interleaving spreads a burst of other work over all strategies.

    The model's weights change; ``advise`` measures features before timing and discards the model afterwards.
    """
    everything = range(len(groups))
    optimizers: dict[str, torch.optim.Optimizer] = {}

    def step(name: str, trainable: Sequence[int] | range) -> float:
        wanted = {p for g in trainable for p in groups[g].param_names}
        params = []
        for pname, p in model.named_parameters():
            p.requires_grad_(pname in wanted)
            if pname in wanted:
                params.append(p)
        if name not in optimizers:
            optimizers[name] = torch.optim.AdamW(params, lr=1e-5)
        optimizer = optimizers[name]
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        seconds = time.perf_counter() - t0
        optimizer.zero_grad(set_to_none=True)
        return seconds

    model.train()
    step("warm-up", everything)
    timings: dict[str, list[float]] = {name: [] for name in strategies}
    for _ in range(2):
        for name, trainable in strategies.items():
            timings[name].append(step(name, trainable))
    model.eval()
    return {name: min(values) for name, values in timings.items()}


# ------------------------------------------------------------------------------------------------- decisions
def _accuracy_noise(a: float, b: float, images: int) -> float:
    """Standard error of the difference of two accuracies measured on ``images`` images.

    Binomial and unpaired: the two probes classify the same images, so the paired error is smaller and this errs
    toward calling candidates tied (then LogME and cost decide, which are measured too).
    """
    if images <= 0 or not (math.isfinite(a) and math.isfinite(b)):
        return 0.0
    return math.sqrt((a * (1 - a) + b * (1 - b)) / images)


def _logme_noise(a: ModelRow, b: ModelRow) -> float:
    """Delete-a-fold jackknife standard error of LogME(a) - LogME(b), paired over the shared folds.

    0.0 when the rows cannot be paired (no fold values, or measured on different images): any difference decides.
    """
    if a is b or len(a.logme_folds) < 2 or len(a.logme_folds) != len(b.logme_folds) or a.images != b.images:
        return 0.0
    d = np.asarray(a.logme_folds) - np.asarray(b.logme_folds)
    g = len(d)
    return float(np.sqrt((g - 1) / g * np.sum((d - d.mean()) ** 2)))


def _strategy_label(plan: Plan) -> str:
    """The strategy as it is typed, with the options it requires (``last-k --k 2``)."""
    return " ".join([plan.strategy, *(f"--{o} {plan.options[o]}" for o in required_options(plan.strategy))])


def _cost_text(row: ModelRow, plan: Plan) -> str:
    return f"{_seconds(plan.epoch_seconds)} per epoch of {_strategy_label(plan)} at {row.img_size} px"


def _wanted_epochs(facts: DatasetFacts) -> int:
    """Epochs the data size asks for: about ``TARGET_PRESENTATIONS`` presentations, within the epoch bounds."""
    presentations = math.ceil(TARGET_PRESENTATIONS / max(facts.num_images, 1))
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, presentations)))


def _millions(params: int) -> str:
    return f"{params / 1e6:.1f}M parameters"


def _rank(
    facts: DatasetFacts, rows: Sequence[ModelRow], plans: Sequence[Plan], time_budget: float | None = None
) -> tuple[list[int], list[str], str]:
    """Rank measured candidates, best first; each with its own plan (``plans[i]`` belongs to ``rows[i]``).

    Linear-probe accuracy first; the candidates within noise of the best (``MODEL_NOISE`` standard errors of
    ``_accuracy_noise``, at least ``MODEL_TIE``) by LogME; those whose LogME is also within noise of the best of them
    (``MODEL_NOISE`` times ``_logme_noise``), or whose probe is above that LogME leader's, by size: the largest model
    whose full fine-tuning for the epochs the data asks for (``_wanted_epochs``) fits ``time_budget`` within timing
    noise (up to ``1 + COST_TIE`` times it; any, without a budget) wins, then LogME; those that do not fit follow.
    Where size cannot decide (all of one size, or none fits), the cheaper plan wins (costs within ``COST_TIE`` of the
    cheapest count as equal, and LogME orders them).

    Why size: larger ImageNet models transfer better once training can afford them (Kornblith et al., "Do Better
    ImageNet Models Transfer Better?", CVPR 2019), and on this project's suite the largest built-in model was the
    best backbone, or within one standard error of it, on four of five tasks while advise's measurements on 100-300
    images could not tell the three apart (docs/benchmarks.md, "Backbones"). The measurements still overrule the
    prior when they separate the models beyond their noise.

    Returns:
        Row indices best first, what placed each of them (``"size"``, ``"cost"``, ``"logme"``, ``"probe"``,
        aligned with the indices), and the reason for the first.
    """

    def acc(i: int) -> float:
        v = rows[i].linear_accuracy
        return v if math.isfinite(v) else -math.inf

    def lme(i: int) -> float:
        v = rows[i].logme
        return v if math.isfinite(v) else -math.inf

    def cost(i: int) -> float:
        v = plans[i].epoch_seconds
        return v if v is not None and math.isfinite(v) else math.inf

    wanted = _wanted_epochs(facts)

    def full_seconds(i: int) -> float:
        v = rows[i].epoch_seconds.get("full", math.nan)
        return wanted * v if math.isfinite(v) and v > 0 else math.inf

    def fits(i: int) -> bool:
        # within timing noise of the budget counts as fitting: advise's timed steps vary by up to (1 + COST_TIE)x,
        # and a strict test split equal models on that noise (cvdigits: Lite1's and Lite2's 30 full epochs both
        # ~180 s, each fitting a 180 s budget on one seed and not on another; docs/benchmarks.md, "Backbones")
        return time_budget is None or full_seconds(i) <= (1 + COST_TIE) * time_budget

    def by_cost(members: Sequence[int]) -> list[int]:
        cheapest = min(cost(i) for i in members)
        return sorted(members, key=lambda i: (cost(i) if cost(i) > (1 + COST_TIE) * cheapest else cheapest, -lme(i)))

    everyone = list(range(len(rows)))
    if len(rows) == 1:
        r = rows[0]
        return (
            [0],
            ["probe"],
            f"the only candidate measured (linear probe {_pct(r.linear_accuracy)}, LogME {r.logme:.3f})",
        )
    top = max(everyone, key=acc)
    images = rows[top].images or facts.measured_images
    if math.isfinite(acc(top)):
        tied = [
            i
            for i in everyone
            if math.isfinite(acc(i))
            and acc(top) - acc(i) <= max(MODEL_TIE, MODEL_NOISE * _accuracy_noise(acc(top), acc(i), images))
        ]
    else:
        tied = everyone
    lead = max(tied, key=lme)

    def logme_behind(i: int) -> bool:
        """LogME lower than the LogME leader's beyond ``MODEL_NOISE`` jackknife standard errors."""
        return lme(lead) - lme(i) > MODEL_NOISE * _logme_noise(rows[lead], rows[i])

    # LogME ranks a model below the LogME lead only when its probe accuracy agrees (is not higher): the two measure
    # the same thing, how linearly separable the frozen features are, and where they point opposite ways neither
    # resolves the difference (cvdigits seed 0: Lite1's LogME led beyond two jackknife SE with the lowest probe of
    # the three, 77 % against 80 %, and Lite1 fine-tuned below Lite2; docs/benchmarks.md, "Backbones")
    close = [lead] + [i for i in tied if i != lead and (acc(i) > acc(lead) or not logme_behind(i))]
    ample = [i for i in close if fits(i)]
    unfit = [i for i in close if i not in ample]
    # size decides when the fitting candidates differ in size, or when some fit and others do not (the budget then
    # rules the others out even where their plans would cost within COST_TIE of the cheapest)
    by_size = len({rows[i].params for i in ample}) > 1 or bool(ample and unfit)
    if by_size:
        first = sorted(ample, key=lambda i: (-rows[i].params, -lme(i))) + (by_cost(unfit) if unfit else [])
    else:
        first = by_cost(close)
    second = sorted((i for i in tied if i not in close), key=lambda i: -lme(i))
    third = sorted((i for i in everyone if i not in tied), key=lambda i: -acc(i))
    order = first + second + third
    placed = "size" if by_size else "cost" if len(close) > 1 else "logme"
    basis = [placed] * len(first) + ["logme"] * len(second) + ["probe"] * len(third)
    if len(tied) == 1:
        basis[0] = "probe"

    best = order[0]
    row = rows[best]
    others = [i for i in order if i != best]
    runner_up = others[0]
    acc_se = _accuracy_noise(acc(best), acc(runner_up), images)
    noise = f"one standard error of a difference is ~{acc_se * 100:.1f} points on {images} images"
    beyond = f"beyond noise ({MODEL_NOISE:g} standard errors)"
    if len(tied) == 1:
        listed = ", ".join(f"{rows[i].name} {_pct(rows[i].linear_accuracy)}" for i in others)
        why = f"highest linear-probe accuracy {_pct(row.linear_accuracy)}, {beyond} ({listed}; {noise})"
    elif len(close) == 1:
        listed = ", ".join(f"{rows[i].name} {_pct(rows[i].linear_accuracy)}" for i in tied if i != best)
        lm_se = max(_logme_noise(row, rows[i]) for i in tied if i != best)
        lm_listed = ", ".join(f"{rows[i].name} {rows[i].logme:.3f}" for i in tied if i != best)
        why = (
            f"linear probe {_pct(row.linear_accuracy)} is within noise of {listed} ({noise}); its LogME "
            f"{row.logme:.3f} is the highest {beyond} ({lm_listed}; jackknife standard error {lm_se:.3f})"
        )
    else:
        listed = ", ".join(
            f"{rows[i].name} {_pct(rows[i].linear_accuracy)} / {rows[i].logme:.3f}" for i in order if i in close
        )
        head = f"linear probe and LogME are within noise ({MODEL_NOISE:g} standard errors) across {listed} ({noise})"
        against = [i for i in close if i != lead and logme_behind(i)]
        if against:
            higher = ", ".join(rows[i].name for i in against)
            head = (
                f"linear probe and LogME do not separate {listed} ({noise}): {rows[lead].name}'s LogME lead is beyond "
                f"noise but the probe of {higher} is higher, so the two signals disagree"
            )
        if by_size:
            sizes = ", ".join(f"{rows[i].name} {_millions(rows[i].params)}" for i in order if i in close and i != best)
            if time_budget is None:
                room = "no time budget limits training"
            else:
                room = (
                    f"its full fine-tuning for {wanted} epochs (~{_seconds(full_seconds(best))}) fits the "
                    f"{time_budget:.0f} s budget within timing noise ({1 + COST_TIE:g}x)"
                )
            slow = ", ".join(rows[i].name for i in order if i in unfit)
            verdict = (
                f"the largest model whose full fine-tuning fits, {_millions(row.params)} ({room}; others: {sizes}"
                + (f"; too slow to fine-tune fully in the budget: {slow}" if unfit else "")
                + "): larger ImageNet models transfer better when training can afford them"
            )
            why = f"{head}: {verdict}, {_cost_text(row, plans[best])}"
        else:
            costs = ", ".join(
                f"{rows[i].name} {_seconds(plans[i].epoch_seconds)}" for i in order if i in close and i != best
            )
            if all(cost(best) * (1 + COST_TIE) < cost(i) for i in close if i != best):
                verdict = "the cheapest to train"
            else:
                verdict = f"of those that cost about the least (within {1 + COST_TIE:g}x), the highest LogME"
            if time_budget is not None and len({rows[i].params for i in close}) > 1:
                verdict += f" (no model's full fine-tuning for {wanted} epochs fits the {time_budget:.0f} s budget)"
            why = f"{head}: {verdict}, {_cost_text(row, plans[best])} (others: {costs})"
    if len(close) > 1 and second:
        why += "; LogME lower beyond noise: " + ", ".join(
            f"{rows[i].name} {rows[i].logme:.3f} (probe {_pct(rows[i].linear_accuracy)})" for i in second
        )
    if len(tied) > 1 and third:
        why += "; probe lower beyond noise: " + ", ".join(
            f"{rows[i].name} {_pct(rows[i].linear_accuracy)}" for i in third
        )
    return order, basis, why


def _distance(row: ModelRow) -> dict[str, Any]:
    """How far the data is from the model's pretraining distribution, from its stage measurements."""
    stages = [s for s in row.stages if s.name != "pre_logits"]
    final = next((s for s in row.stages if s.name == "pre_logits"), None)
    if final is None or len(stages) < 3:
        return {"verdict": "unknown", "reason": "too few stages measured to compare early and late features"}
    early = stages[len(stages) // 3]
    mids = stages[:-1]  # the last stage often is the final feature map itself
    best_mid = max(mids, key=lambda s: s.logme if math.isfinite(s.logme) else -math.inf)
    knn_gap = final.knn_accuracy - early.knn_accuracy
    logme_gap = final.logme - best_mid.logme
    facts = {
        "early_stage": early.name,
        "early_knn_accuracy": early.knn_accuracy,
        "final_knn_accuracy": final.knn_accuracy,
        "knn_gap": knn_gap,
        "best_mid_stage": best_mid.name,
        "best_mid_logme": best_mid.logme,
        "final_logme": final.logme,
        "logme_gap": logme_gap,
    }
    if not (math.isfinite(knn_gap) and math.isfinite(logme_gap)):
        return {**facts, "verdict": "unknown", "reason": "k-NN or LogME could not be measured"}
    if knn_gap < FAR_KNN_GAP:
        verdict = "far"
        reason = (
            f"early-stage features ({early.name}) classify nearly as well as the final ones (k-NN "
            f"{_pct(early.knn_accuracy)} vs {_pct(final.knn_accuracy)}): the late layers add little for this data"
        )
    elif logme_gap < -FAR_LOGME_MARGIN:
        verdict = "far"
        reason = (
            f"a middle stage ({best_mid.name}) explains the labels better than the final features (LogME "
            f"{best_mid.logme:.3f} vs {final.logme:.3f}): the late layers are specialised to the pretraining data"
        )
    elif knn_gap >= NEAR_KNN_GAP:
        verdict = "near"
        reason = (
            f"the final features classify far better than early ones (k-NN {_pct(final.knn_accuracy)} vs "
            f"{_pct(early.knn_accuracy)} at {early.name}) and have the highest LogME: the pretrained features fit"
        )
    else:
        verdict = "moderate"
        reason = (
            f"the final features beat early ones by {knn_gap * 100:.0f} k-NN points ({early.name}) and have the "
            "highest LogME"
        )
    return {**facts, "verdict": verdict, "reason": reason}


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%" if math.isfinite(value) else "n/a"


def _epoch_seconds(row: ModelRow, strategy: str, k: int, backbone: int) -> float:
    """Seconds per epoch of a strategy: measured for linear, last-k (k=2) and full; other k interpolated.

    Between the measured points the cost is taken as linear in the number of thawed groups: (0, forward pass),
    (2, last-k), (all backbone groups, full).
    """
    es = row.epoch_seconds
    fwd, lk, full = es.get("linear", math.nan), es.get("last-k", math.nan), es.get("full", math.nan)
    # the probe trains on cached features (one forward pass); lp-ft's fine-tuning epochs thaw everything
    measured = {"linear": fwd, "full": full, "lp-ft": full}
    if strategy in measured:
        return measured[strategy]
    if k <= 2 or backbone <= 2:
        return fwd + (lk - fwd) * min(k, 2) / 2
    return lk + (full - lk) * (k - 2) / (backbone - 2)


def _strategy_for(depth: int, backbone: int, far: bool, per_class: float) -> str:
    if depth <= 0:
        return "linear"
    if depth >= backbone:
        return "full" if far and per_class >= LARGE_PER_CLASS else "lp-ft"
    return "last-k"


def recommend(facts: DatasetFacts, model_rows: Sequence[ModelRow], *, time_budget: float | None = None) -> Plan:
    """Turn measurements into a plan: model, strategy and depth, epochs, learning rate, each with its reason.

    Every measured model gets its own plan; the models are ranked (``_rank``) and the first one's plan is returned,
    with the ranking. A pure function of its inputs (see the module docstring for the rules), so it can be tested on
    made-up numbers.

    Args:
        facts: the dataset facts.
        model_rows: measured candidates (rows with an ``error`` are ignored).
        time_budget: training budget in seconds (None: no limit).

    Returns:
        The plan of the chosen model; ``plan.ranking`` lists every measured model, best first.

    Raises:
        ModelError: no row was measured successfully.
    """
    usable = [r for r in model_rows if r.ok]
    if not usable:
        raise ModelError(
            "no candidate model could be measured: " + "; ".join(f"{r.name}: {r.error}" for r in model_rows)
        )
    plans = [_plan_for(facts, r, time_budget) for r in usable]
    order, basis, why = _rank(facts, usable, plans, time_budget)
    chosen = plans[order[0]]
    row = usable[order[0]]
    why += f"; expected cost {_cost_text(row, chosen)}, {_seconds(chosen.estimated_seconds)} for the plan"
    chosen.decisions.insert(0, Decision("model", row.name, why))
    chosen.ranking = [
        {
            "rank": rank,
            "model": usable[i].name,
            "linear_accuracy": usable[i].linear_accuracy,
            "logme": usable[i].logme,
            "params": usable[i].params,
            "strategy": _strategy_label(plans[i]),
            "img_size": usable[i].img_size,
            "epoch_seconds": plans[i].epoch_seconds,
            "estimated_seconds": plans[i].estimated_seconds,
            "ranked_by": by,
        }
        for rank, (i, by) in enumerate(zip(order, basis, strict=True), start=1)
    ]
    return chosen


def _plan_for(facts: DatasetFacts, row: ModelRow, time_budget: float | None) -> Plan:
    """The plan for one measured model (decisions from "strategy" on; ``recommend`` adds the model choice)."""
    decisions: list[Decision] = []
    backbone = max(len(row.groups) - 1, 1)
    per_class = float(facts.images_per_class.get("median", 0))
    distance = _distance(row)
    verdict = distance["verdict"]
    far = verdict == "far"

    # depth: how many backbone groups (from the head down) to thaw
    if per_class < TINY_PER_CLASS:
        depth, size_why = 0, f"only {per_class:g} images per class (median): fine-tuning would overfit"
    elif per_class < SMALL_PER_CLASS:
        depth, size_why = min(2, backbone), f"{per_class:g} images per class (median): few enough to thaw little"
    elif per_class < LARGE_PER_CLASS:
        depth = max(1, math.ceil(backbone / 2))
        size_why = f"{per_class:g} images per class (median): enough to adapt about half of the backbone"
    else:
        depth, size_why = backbone, f"{per_class:g} images per class (median): enough to fine-tune every layer"
    reasons = [size_why]
    if far:
        new = min(backbone, max(2 * depth, 2) if per_class >= TINY_PER_CLASS else 2)
        if new != depth:
            reasons.append(f"data far from the pretraining distribution ({distance['reason']}): thaw deeper")
        depth = new
    probe = row.linear_accuracy
    if math.isfinite(probe) and probe >= SATURATED_PROBE and not far and depth > 2:
        depth = 2
        reasons.append(f"frozen features already reach {_pct(probe)} on a linear probe: 2 groups are enough")
    elif math.isfinite(probe) and probe < WEAK_PROBE and per_class >= SMALL_PER_CLASS:
        new = max(depth, math.ceil(backbone / 2))
        if new != depth:
            reasons.append(f"a linear probe reaches only {_pct(probe)}: the features must adapt, thaw deeper")
        depth = new
    if verdict in ("near", "moderate"):
        reasons.append(f"pretraining distance {verdict}: {distance['reason']}")
    strategy = _strategy_for(depth, backbone, far, per_class)

    # epochs from the data size, then the budget
    wanted = _wanted_epochs(facts)
    epochs = wanted
    epoch_s = _epoch_seconds(row, strategy, depth, backbone)
    epochs_why = (
        f"about {TARGET_PRESENTATIONS:,} image presentations over {facts.num_images} images, within "
        f"{MIN_EPOCHS}-{MAX_EPOCHS} epochs (early stopping may end sooner)"
    )
    if time_budget is not None and math.isfinite(epoch_s) and epoch_s > 0:
        while strategy != "linear" and time_budget / epoch_s < MIN_EPOCHS:
            shallower = min(depth - 1, 2) if depth > 2 else depth - 1
            reasons.append(
                f"the {time_budget:.0f} s budget fits {time_budget / epoch_s:.1f} epochs of {strategy} "
                f"(~{epoch_s:.0f} s each): thaw less"
            )
            depth = max(shallower, 0)
            strategy = _strategy_for(depth, backbone, far, per_class)
            epoch_s = _epoch_seconds(row, strategy, depth, backbone)
        if strategy != "linear":
            fit = int(time_budget // epoch_s)
            if fit < epochs:
                epochs = fit
                epochs_why = f"the {time_budget:.0f} s budget allows {fit} epochs at ~{epoch_s:.1f} s per epoch"
    options: dict[str, Any] = {"model": row.name, "strategy": strategy}
    if "k" in required_options(strategy):
        options["k"] = depth
    label = " ".join([strategy, *(f"--{o} {options[o]}" for o in required_options(strategy))])
    decisions.append(Decision("strategy", label, "; ".join(reasons)))
    if facts.img_size is not None:
        options["img_size"] = facts.img_size
        decisions.append(
            Decision(
                "img_size",
                str(facts.img_size),
                f"source images are {_size_text(facts.native_size)}: measured and recommended at {facts.img_size} px",
            )
        )
    probe_epochs = 20
    if strategy in ("linear", "lp-ft"):
        options["probe_epochs"] = probe_epochs
    if strategy != "linear":
        options["epochs"] = epochs
        decisions.append(Decision("epochs", str(epochs), epochs_why))
        lr = 5e-4 if strategy in ("lp-ft", "full") and per_class < LARGE_PER_CLASS else 1e-3
        options["lr"] = lr
        lr_why = (
            "every layer trains on a moderate amount of data: half the default step keeps the pretrained features"
            if lr < 1e-3
            else "the default head learning rate (thawed groups get half of it)"
        )
        decisions.append(Decision("lr", f"{lr:g}", lr_why))
    else:
        decisions.append(
            Decision("epochs", f"{probe_epochs} probe epochs", "cheap on cached features: one forward pass in all")
        )

    # estimated training time: probe on cached features costs one forward pass
    fwd = row.epoch_seconds.get("linear", math.nan)
    probe, fine_tune = {"linear": (True, 0), "lp-ft": (True, epochs)}.get(strategy, (False, epochs))
    estimate = (fwd if probe else 0.0) + (fine_tune * epoch_s if fine_tune else 0.0)
    estimated = estimate if math.isfinite(estimate) else None

    command = _command(facts.train, row, options)
    return Plan(
        model=row.name,
        strategy=strategy,
        options=options,
        command=command,
        decisions=decisions,
        estimated_seconds=estimated,
        distance=distance,
        epoch_seconds=epoch_s if math.isfinite(epoch_s) else None,
    )


def _command(train: str, row: ModelRow, options: Mapping[str, Any]) -> str:
    parts = ["thaw", "fit", _quote(train), "--model", row.name]
    if row.weights:
        parts += ["--weights", _quote(row.weights)]
    elif row.source.startswith("hub:"):
        parts.append("--pretrained")
    for key in ("strategy", "k", "epochs", "probe_epochs", "lr", "img_size"):
        if key in options:
            parts += ["--" + key.replace("_", "-"), str(options[key])]
    return " ".join(parts)


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


# ------------------------------------------------------------------------------------------------- formatting
def _size_text(size: tuple[int, int] | None) -> str:
    return f"{size[0]}x{size[1]} px" if size else "of unknown size"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]).rstrip()


def _num(value: float, fmt: str = "{:.3f}") -> str:
    return fmt.format(value) if math.isfinite(value) else "n/a"


def _seconds(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def _format_dataset(facts: DatasetFacts) -> str:
    ipc = facts.images_per_class
    lines = [
        f"Dataset {facts.train}",
        f"  {facts.num_images} images in {facts.num_classes} classes; per class min {ipc['min']:g} / median "
        f"{ipc['median']:g} / max {ipc['max']:g} (imbalance {facts.imbalance_ratio:.1f}x)",
        f"  native size {_size_text(facts.native_size)} (median); {len(facts.skipped)} files skipped of "
        f"{facts.files_seen} seen",
        f"  measured on {facts.measured_images} images"
        + (f" at {facts.img_size} px" if facts.img_size else " at each model's own resolution"),
    ]
    for item in facts.skipped[:5]:
        lines.append(f"    skipped {item['path']}: {item['reason']}")
    if len(facts.skipped) > 5:
        lines.append(f"    ... and {len(facts.skipped) - 5} more (see advise.json)")
    return "\n".join(lines)


def _format_models(rows: Sequence[ModelRow]) -> str:
    headers = ["model", "params", "size", "img/s", "LogME", "kNN", "linear", "s/ep linear", "s/ep last-2", "s/ep full"]
    body: list[list[str]] = []
    errors: list[str] = []
    for r in rows:
        if not r.ok:
            body.append([r.name, *(["-"] * (len(headers) - 1))])
            errors.append(f"  {r.name}: {r.error}")
            continue
        body.append(
            [
                r.name,
                f"{r.params / 1e6:.1f}M",
                str(r.img_size),
                _num(r.images_per_second, "{:.0f}"),
                _num(r.logme),
                _pct(r.knn_accuracy),
                _pct(r.linear_accuracy),
                *(_seconds(r.epoch_seconds.get(k)) for k in ("linear", "last-k", "full")),
            ]
        )
    text = "Candidate models (frozen features; accuracies are 5-fold cross-validated on the training data)\n"
    text += _table(headers, body, [False] + [True] * (len(headers) - 1))
    if errors:
        text += "\n  not measured:\n" + "\n".join(errors)
    return text


def _format_ranking(plan: Plan) -> str:
    if len(plan.ranking) < 2:
        return ""
    headers = ["rank", "model", "linear", "LogME", "params", "its plan", "px", "s/epoch", "est. time", "ranked by"]
    body = [
        [
            str(e["rank"]),
            str(e["model"]),
            _pct(e["linear_accuracy"]),
            _num(e["logme"]),
            f"{e.get('params', 0) / 1e6:.1f}M",
            str(e["strategy"]),
            str(e["img_size"]),
            _seconds(e["epoch_seconds"]),
            _seconds(e["estimated_seconds"]),
            str(e["ranked_by"]),
        ]
        for e in plan.ranking
    ]
    text = (
        "Ranking (linear probe; within noise, LogME; within noise again, the largest model whose full fine-tuning "
        "fits the budget, else the cheapest plan)\n"
    )
    return text + _table(headers, body, [True, False, True, True, True, False, True, True, True, False])


def _format_stages(rows: Sequence[ModelRow], plan: Plan) -> str:
    row = next((r for r in rows if r.name == plan.model and r.ok), None)
    if row is None or not row.stages:
        return ""
    body = [[s.name, str(s.dim), _num(s.logme), _pct(s.knn_accuracy)] for s in row.stages]
    text = f"Stages of {row.name} (globally pooled features at each layer-group boundary)\n"
    text += _table(["stage", "dim", "LogME", "kNN"], body, [False, True, True, True])
    d = plan.distance
    text += f"\n  distance from pretraining: {d.get('verdict')} - {d.get('reason', '')}"
    return text


def _format_plan(plan: Plan) -> str:
    lines = [f"Plan (estimated training time {_seconds(plan.estimated_seconds)})", f"  {plan.command}"]
    width = max(len(d.topic) for d in plan.decisions)
    for d in plan.decisions:
        lines.append(f"  {d.topic:<{width}}  {d.choice}: {d.reason}")
    return "\n".join(lines)
