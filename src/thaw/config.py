"""Run configuration: one frozen dataclass, validated all at once, round-tripped through YAML.

Every field carries a one-line ``doc`` in its metadata; the CLI builds its ``--help`` from it, so the documentation
of an option lives next to its default.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from thaw.errors import ConfigError
from thaw.names import did_you_mean
from thaw.strategy.registry import OPTION_READERS, STRATEGIES, required_options

__all__ = ["FitConfig", "STRATEGIES", "default_batch_size", "parse_duration", "phase_patience"]

OPTIMIZERS = ("adamw", "sgd")
#: Augmentation presets (data/transforms.py builds them; defined here so config imports no torch).
AUGMENT_PRESETS = ("none", "crop", "light", "strong")
BN_POLICIES = ("auto", "frozen-eval", "train-all", "eval-all")
AMP_MODES = ("auto", "off", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
#: Images ``thaw advise`` (and ``auto --models``) measures by default: a stratified subsample of larger training
#: sets. Defined here, not in advise.py, so that the CLI's ``--max-images`` default imports no torch.
ADVISE_MAX_IMAGES = 2000


#: The default batch size is a power of two within these bounds ...
BATCH_BOUNDS = (16, 64)
#: ... the largest that gives an epoch at least this many optimizer steps.
MIN_STEPS_PER_EPOCH = 8


def default_batch_size(num_images: int) -> int:
    """The batch size when none is given: the largest power of two in ``BATCH_BOUNDS`` that gives an epoch of
    ``num_images`` at least ``MIN_STEPS_PER_EPOCH`` steps.

    A few hundred images at 64 make an epoch of 2-5 steps, so a run under a time budget takes few, large steps. On
    the suite's tasks with fewer than 512 training images, auto at the chosen 16 or 32 reached a higher mean test
    accuracy than at 64 on three of four tasks (lower within noise on the fourth, 40 images), although smaller
    batches train fewer images per second on a CPU: docs/benchmarks.md, "Batch size from the data".
    """
    lo, hi = BATCH_BOUNDS
    size = hi
    while size > lo and num_images / size < MIN_STEPS_PER_EPOCH:
        size //= 2
    return size


def _f(default: Any, doc: str, **kw: Any) -> Any:
    return field(default=default, metadata={"doc": doc, **kw})


@dataclass(frozen=True)
class FitConfig:
    """Everything a ``thaw fit`` run needs; ``config.yaml`` in the run directory is this, resolved."""

    # data
    train: str = _f("", "training data: a class-per-subfolder image folder or a CSV manifest (path,label)")
    val: str | None = _f(None, "validation data (folder or CSV); default: a stratified split of the training data")
    test: str | None = _f(None, "test data (folder or CSV), evaluated once with the best weights")
    val_fraction: float = _f(0.2, "fraction of the training data held out for validation when --val is not given")
    strict: bool = _f(False, "fail on the first unreadable image instead of skipping it with a reason")
    # model
    model: str = _f("efficientnet_lite0", "timm architecture name (efficientnet_lite0 has built-in offline weights)")
    weights: str | None = _f(
        None, "local weights: .safetensors, .pth (loaded with weights_only) or a timm model folder"
    )
    pretrained: bool = _f(
        False,
        "download the model's pretrained weights from the timm/Hugging Face hub (needs network; "
        "efficientnet_lite0 otherwise uses its built-in offline weights)",
    )
    random_init: bool = _f(False, "train from random initialisation instead of pretrained weights")
    models: str | None = _f(
        None,
        "auto only: comma-separated candidate backbones (e.g. efficientnet_lite0,efficientnet_lite1,"
        "efficientnet_lite2); auto measures each on the training data as `thaw advise` does, within the time "
        "budget, and fine-tunes the one it recommends (--model is then ignored)",
    )
    img_size: int | None = _f(None, "input resolution in pixels; default: the model's pretrained config")
    # strategy
    strategy: str = _f(
        "auto",
        "which layers to thaw: "
        + ", ".join(STRATEGIES)
        + "; auto measures candidates within the time budget and decides (without --time-budget it chooses one from "
        "the data and the measured step cost, and says so)",
    )
    k: int = _f(2, "last-k: number of layer groups below the head to train")
    groups: str | None = _f(None, "groups strategy: comma-separated group names or indices, or re:REGEX")
    epochs: int = _f(
        10,
        "fixed strategies: epochs of each fine-tuning phase (upper bound; early stopping may end a phase sooner); "
        "auto sizes its phases from the time budget instead",
    )
    probe_epochs: int = _f(20, "epochs of a head-only (linear probe) phase; cheap when features are cached")
    gradual_epochs: int = _f(1, "gradual: epochs per unfreezing step before the final phase")
    refit: bool = _f(
        False,
        "auto: after choosing, retrain the chosen recipe on training + validation images for the length its "
        "validated run took (the budget is split between the two; nothing is held out for the final model)",
    )
    # optimisation
    optimizer: str = _f("adamw", "optimizer: adamw or sgd")
    lr: float = _f(1e-3, "peak learning rate of the head in fine-tuning phases")
    probe_lr: float = _f(1e-2, "peak learning rate of a head-only (linear probe) phase")
    backbone_lr_scale: float = _f(0.5, "learning-rate multiplier of thawed backbone groups relative to the head")
    layer_decay: float | None = _f(None, "layer-wise lr decay: each group below the head gets this factor once more")
    weight_decay: float = _f(0.01, "weight decay (not applied to biases and norm parameters)")
    momentum: float = _f(0.9, "SGD momentum")
    batch_size: int | None = _f(
        None,
        "images per optimisation step; default: from the training set, the largest power of two from 16 to 64 that "
        "gives at least 8 steps per epoch (100 images: 16, 300: 32, 1000 or more: 64)",
    )
    warmup: float = _f(0.1, "fraction of each phase's steps spent warming the learning rate up linearly")
    label_smoothing: float = _f(0.1, "label smoothing of the cross-entropy loss")
    augment: str = _f(
        "light", "augmentation preset for fine-tuning phases: none, crop (light without the flip), light, strong"
    )
    bn: str = _f(
        "auto",
        "BatchNorm policy: auto (eval-all with pretrained weights, frozen-eval from random init), frozen-eval (BN of "
        "frozen groups in eval mode, thawed BN trains), eval-all (every BN keeps its pretrained statistics), train-all",
    )
    l2sp: float | None = _f(
        None,
        "L2-SP: pull thawed pretrained weights toward their start with this alpha "
        "(Li et al. 2018 use 0.1; the new head gets alpha/10)",
    )
    balance: str = _f("none", "class imbalance: none, weighted (class-weighted loss) or sampler (balanced sampling)")
    patience: int | None = _f(
        None,
        "early stopping: epochs without validation improvement before a phase ends; default: a quarter of the "
        "phase's epochs, at least 3 (5 for a probe); 0: off",
    )
    time_budget: float | None = _f(
        None, "wall-clock budget, e.g. 300, 5m, 1h: auto plans to spend it; fixed strategies stop early at it"
    )
    # machine
    seed: int = _f(0, "random seed (data split, initialisation, shuffling, augmentation)")
    device: str = _f("auto", "auto, cpu, cuda or mps")
    amp: str = _f("auto", "mixed precision: auto (bf16 on CUDA when supported, off on CPU), off, bf16, fp16")
    # about 2x faster training for Lite0 on CPU (docs/benchmarks.md, "channels_last")
    channels_last: bool = _f(True, "use the channels_last memory format (faster for convnets on CPU)")
    workers: int = _f(0, "DataLoader worker processes for augmentation (0: in the main process)")
    prefix_cache: bool = _f(
        True,
        "when only upper groups train, compute the frozen lower layers once per image and train on their cached "
        "outputs (used only where verified exact; with random augmentation only together with --cache-views)",
    )
    cache_views: int = _f(
        0,
        "with augmentation, cache this many augmented views per image for the frozen-prefix cache and cycle through "
        "them by epoch (changes the augmentation stream, so it is opt-in); 0: augmented phases train uncached",
    )
    cache_ram_mb: int = _f(
        2048, "memory for cached activations; larger caches go to a memory-mapped file in the run directory"
    )
    compile: bool = _f(
        False, "torch.compile the model for uncached training phases (slow to start; pays off on long runs)"
    )
    # output
    out: str | None = _f(None, "run directory; default: runs/<model>-<strategy>-<timestamp>")
    log: str = _f(
        "jsonl",
        "experiment log: jsonl (metrics.jsonl, always written) or tensorboard (also TensorBoard "
        "scalars under RUN_DIR/tensorboard; needs thaw[tensorboard])",
    )
    export_onnx: bool = _f(False, "also export model.onnx (needs thaw[onnx]) and verify it with onnxruntime")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FitConfig:
        """Build a config from a mapping (YAML or keyword arguments); unknown keys are an error.

        Raises:
            ConfigError: unknown keys (with suggestions) or invalid values, all reported together.
        """
        known = {f.name for f in fields(cls)}
        unknown = [k for k in values if k not in known]
        if unknown:
            msgs = []
            for k in unknown:
                msgs.append(f"unknown option '{k}'{did_you_mean(k, known)}")
            raise ConfigError("; ".join(msgs))
        cfg_values = dict(values)
        if isinstance(cfg_values.get("time_budget"), str):
            cfg_values["time_budget"] = parse_duration(cfg_values["time_budget"])
        for key in ("train", "val", "test", "weights", "out"):
            if isinstance(cfg_values.get(key), Path):
                cfg_values[key] = str(cfg_values[key])
        cfg = cls(**cfg_values)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> FitConfig:
        """Read a YAML config file; keyword overrides win over the file."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a mapping of option: value")
        data.update({k: v for k, v in overrides.items()})
        return cls.from_dict(data)

    def resolved(self, num_train: int | None = None) -> FitConfig:
        """The same config with ``auto`` choices made concrete (what config.yaml records).

        ``num_train``: the training images one process steps through in an epoch; when given, a batch size left to
        thaw is chosen from it (``default_batch_size``).

        BatchNorm ``auto``: pretrained statistics stay frozen (eval-all), as Keras' transfer-learning guide advises
        (measured: docs/benchmarks.md, "BatchNorm policy"); from random initialisation the statistics must be learned,
        so thawed BN trains there.
        """
        cfg = self
        if cfg.bn == "auto":
            cfg = cfg.replace(bn="frozen-eval" if cfg.random_init else "eval-all")
        if cfg.batch_size is None and num_train is not None:
            cfg = cfg.replace(batch_size=default_batch_size(num_train))
        return cfg

    @property
    def batch(self) -> int:
        """The training batch size, once chosen (``batch_size``, or ``resolved(num_train)``'s choice)."""
        if self.batch_size is None:
            raise RuntimeError("the batch size is chosen from the data: use FitConfig.resolved(num_train) first")
        return self.batch_size

    def model_candidates(self) -> list[str]:
        """The backbones of ``--models``, in order, without blanks and repeats (empty without ``--models``)."""
        names = [n.strip() for n in (self.models or "").split(",")]
        return list(dict.fromkeys(n for n in names if n))

    def replace(self, **changes: Any) -> FitConfig:
        """A copy with some fields changed, validated."""
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def ignored_options(self) -> list[str]:
        """A sentence for each option set away from its default that the chosen strategy does not read (auto, the
        default strategy, sizes its phases from the time budget, so a habitual ``--epochs 30`` would otherwise be
        lost without a word)."""
        default = FitConfig()
        out = []
        for name, strategies in OPTION_READERS.items():
            value = getattr(self, name)
            if self.strategy in strategies or value == getattr(default, name):
                continue
            flag = "--" + name.replace("_", "-")
            if self.strategy == "auto" and name == "epochs":
                out.append(
                    f"{flag} {value} has no effect with --strategy auto (the default): auto sizes its phases from "
                    "the time budget (--time-budget); name a fixed strategy (e.g. --strategy lp-ft) to train for a "
                    "number of epochs"
                )
            else:
                out.append(
                    f"{flag} {value} has no effect with --strategy {self.strategy} "
                    f"(only {', '.join(strategies)} use it)"
                )
        return out

    def validate(self) -> None:
        """Check every field and raise one ConfigError listing all problems."""
        problems: list[str] = []

        def choice(name: str, value: str, options: tuple[str, ...]) -> None:
            if value not in options:
                hint = did_you_mean(value, options)
                problems.append(f"--{name.replace('_', '-')} '{value}' is not one of {', '.join(options)}{hint}")

        if not self.train:
            problems.append("no training data given: pass a folder of class subfolders or a CSV manifest")
        choice("strategy", self.strategy, STRATEGIES)
        choice("optimizer", self.optimizer, OPTIMIZERS)
        choice("augment", self.augment, AUGMENT_PRESETS)
        choice("bn", self.bn, BN_POLICIES)
        choice("amp", self.amp, AMP_MODES)
        choice("device", self.device, DEVICES)
        choice("balance", self.balance, ("none", "weighted", "sampler"))
        choice("log", self.log, ("jsonl", "tensorboard"))
        if self.l2sp is not None and self.l2sp < 0:
            problems.append(f"--l2sp must be >= 0 (got {self.l2sp})")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"--val-fraction must be between 0 and 1 (got {self.val_fraction})")
        for name in ("epochs", "probe_epochs", "gradual_epochs", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.k < 0:
            problems.append(f"--k must be >= 0 (got {self.k})")
        for name in ("lr", "probe_lr", "backbone_lr_scale"):
            if not getattr(self, name) > 0:
                problems.append(f"--{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        if self.weight_decay < 0:
            problems.append(f"--weight-decay must be >= 0 (got {self.weight_decay})")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            problems.append(f"--layer-decay must be in (0, 1] (got {self.layer_decay})")
        if not 0.0 <= self.warmup < 1.0:
            problems.append(f"--warmup is a fraction of each phase's steps in [0, 1) (got {self.warmup})")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.patience is not None and self.patience < 0:
            problems.append(f"--patience must be >= 0 (got {self.patience})")
        if self.time_budget is not None and self.time_budget <= 0:
            problems.append(f"--time-budget must be positive (got {self.time_budget})")
        if self.img_size is not None and self.img_size < 16:
            problems.append(f"--img-size must be at least 16 pixels (got {self.img_size})")
        if self.cache_views < 0:
            problems.append(f"--cache-views must be >= 0 (got {self.cache_views})")
        if self.cache_ram_mb < 0:
            problems.append(f"--cache-ram-mb must be >= 0 (got {self.cache_ram_mb})")
        if self.workers < 0:
            problems.append(f"--workers must be >= 0 (got {self.workers})")
        if self.models is not None:
            if not self.model_candidates():
                problems.append("--models needs at least one model name (comma-separated)")
            if self.strategy != "auto":
                problems.append("--models is an auto decision: use it with --strategy auto (or `thaw advise`)")
            if self.weights or self.random_init:
                problems.append("--models chooses among pretrained backbones: drop --weights / --random-init")
        if self.refit and self.strategy != "auto":
            problems.append("--refit is an auto decision: use it with --strategy auto")
        if "groups" in required_options(self.strategy) and not self.groups:
            problems.append("--strategy groups needs --groups NAMES (see `thaw layers MODEL` for the names)")
        if self.random_init and self.weights:
            problems.append("--random-init and --weights contradict each other: pass one")
        if self.random_init and self.pretrained:
            problems.append("--random-init and --pretrained contradict each other: pass one")
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr)?\s*$")


def phase_patience(cfg: FitConfig, epochs: int, minimum: int = 3) -> int:
    """Early-stopping patience of a phase of ``epochs`` epochs: ``--patience`` when given, else a quarter of the
    phase (at least ``minimum``).

    Small validation sets are noisy, so a few flat epochs say little (measured: docs/benchmarks.md, "Patience").
    """
    if cfg.patience is not None:
        return cfg.patience
    return max(minimum, -(-epochs // 4))


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``300``, ``"90s"``, ``"5m"`` or ``"1.5h"``.

    Raises:
        ConfigError: the text is not a duration.
    """
    if isinstance(text, int | float):
        return float(text)
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f"cannot read '{text}' as a duration: use seconds (300) or 90s, 5m, 1.5h")
    value, unit = float(m.group(1)), (m.group(2) or "s")
    return value * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}[unit]
