"""The readable runs: fit, evaluate, predict, load_run. The CLI calls these and nothing else."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thaw.config import FitConfig
from thaw.data.audit import build_audit, format_audit
from thaw.data.cache import DecodedImages, decode_all
from thaw.data.sources import scan
from thaw.data.split import stratified_split
from thaw.data.transforms import Preprocess, normalize
from thaw.data.types import IMAGE_EXTENSIONS, Sample, ScanResult, Skipped
from thaw.errors import CheckpointError, ConfigError, DataError
from thaw.export import export_timm_dir, load_timm_dir
from thaw.jsonio import json_safe, write_json
from thaw.models.groups import layer_groups
from thaw.models.load import load_model
from thaw.strategy.base import PhaseResult, PlanContext
from thaw.strategy.registry import make_strategy
from thaw.train import checkpoint as ckpt
from thaw.train import dist
from thaw.train.loop import tensor_batches
from thaw.train.runner import EpochState, Runner, phase_result_from_dict, resolve_device

__all__ = ["fit", "evaluate", "predict", "load_run", "FitResult", "EvalResult", "Prediction", "Run"]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
StepHook = Callable[[str, int, int, float, float, float], None]


# ---------------------------------------------------------------------------------------------------- results
@dataclass
class FitResult:
    """What ``fit`` returns: where the run lives and its headline numbers (the rest is in ``summary``)."""

    run_dir: Path
    best_val_accuracy: float
    test_accuracy: float | None
    linear_probe_test_accuracy: float | None
    summary: dict[str, Any]


@dataclass
class EvalResult:
    accuracy: float
    macro_f1: float
    metrics: dict[str, Any]
    skipped: list[Skipped]
    path: Path | None


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]
    """(label, probability), most probable first."""


@dataclass
class Run:
    """A finished (or interrupted) run directory, read back."""

    run_dir: Path
    config: FitConfig
    summary: dict[str, Any]
    classes: list[str] = field(default_factory=list)

    def load_model(self) -> tuple[torch.nn.Module, list[str], dict[str, Any]]:
        """The fine-tuned model (eval mode), its label names and preprocessing config."""
        return load_timm_dir(self.run_dir / "model")


# ---------------------------------------------------------------------------------------------------- helpers


class _JsonlSink:
    """metrics.jsonl: one line per epoch, always; TensorBoard scalars too with ``--log tensorboard``."""

    def __init__(self, path: Path, tensorboard: bool = False) -> None:
        self.path = path
        self.writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError(
                    "--log tensorboard needs the tensorboard package: pip install 'thaw[tensorboard]'"
                ) from exc
            self.writer = SummaryWriter(log_dir=str(path.parent / "tensorboard"))

    def __call__(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(json_safe(row), ensure_ascii=False) + "\n")
        if self.writer is not None:
            step = int(row["epoch"])
            for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "images_per_second"):
                self.writer.add_scalar(key.replace("_", "/", 1), float(row[key]), step)
            for kind in ("group_drift", "grad_norm"):
                for group, value in (row.get(kind) or {}).items():
                    self.writer.add_scalar(f"{kind}/{group}", float(value), step)
            self.writer.add_scalar("phase", float(row["phase"]), step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _strict_check(cfg: FitConfig, skipped: Sequence[Skipped], where: str) -> None:
    if cfg.strict and skipped:
        first = skipped[0]
        raise DataError(
            f"--strict: {len(skipped)} file(s) in {where} cannot be used, first: {first.path} ({first.reason}); "
            "fix or remove them, or run without --strict to skip them with a reason"
        )


def _default_out(cfg: FitConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.model.replace('/', '_')}-{cfg.strategy}-{stamp}"


def _prepare_run_dir(path: Path, overwrite: bool) -> Path:
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"run directory {path} already exists and is not empty: choose another --out, pass --overwrite, "
                f"or continue it with `thaw fit --resume {path}`"
            )
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to run directory {path}: {exc.strerror or exc}; choose another --out") from exc
    return path


def _decode(scan_result: ScanResult, pre: Preprocess, cache_path: Path | None) -> DecodedImages:
    return decode_all(scan_result.samples, pre, memmap_path=cache_path)


def _class_counts(labels: torch.Tensor, n: int) -> list[int]:
    return torch.bincount(labels, minlength=n).tolist()


# ---------------------------------------------------------------------------------------------------- fit
def fit(
    train: str | os.PathLike[str] | None = None,
    *,
    config: FitConfig | None = None,
    resume: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    on_step: StepHook | None = None,
    **options: Any,
) -> FitResult:
    """Fine-tune a pretrained classifier on an image folder or CSV manifest and write a run directory.

    Args:
        train: training data (class-per-subfolder folder or CSV manifest).
        config: a full FitConfig instead of ``train`` + options.
        resume: continue the interrupted run in this directory (its config.yaml is used).
        overwrite: replace a non-empty ``out`` directory.
        progress: called with one line per epoch; default: the ``thaw`` logger at INFO.
        on_step: called after every training step with (phase name, step, steps per epoch, mean loss, accuracy,
            images/second), for a live progress bar.
        **options: any FitConfig field, e.g. ``strategy="last-k", k=2, epochs=5, img_size=96``.

    Returns:
        FitResult with the run directory, best validation and test accuracy, and the summary dict.

    Raises:
        ThawError: bad options, unusable data or weights, unwritable output.

    Example:
        >>> r = thaw.fit("data/train", test="data/test", strategy="lp-ft", img_size=96)  # doctest: +SKIP
        >>> print(r.test_accuracy)  # doctest: +SKIP
    """
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").exists():
            raise CheckpointError(f"{run_dir} is not a thaw run directory (no config.yaml); check the path")
        cfg = FitConfig.from_yaml(run_dir / "config.yaml", **options)
        last = run_dir / "checkpoints" / "last"
        if not (last / "state.json").exists() and not (last.parent / "last.prev" / "state.json").exists():
            log.warning("%s has no finished epoch to resume from: starting the run again", run_dir)
            return _fit_interruptible(cfg, run_dir, progress, None, on_step)
        tensors, state = ckpt.load_checkpoint(last)
        return _fit_interruptible(cfg, run_dir, progress, (tensors, state), on_step)
    if config is None:
        if train is None:
            raise ConfigError("fit() needs training data: fit('data/train', ...) or fit(config=FitConfig(...))")
        config = FitConfig.from_dict({"train": str(train), **options})
    elif options or train is not None:
        config = config.replace(**({"train": str(train)} if train is not None else {}), **options)
    info = dist.init_from_env(resolve_device(config.device).type)
    run_dir = Path(config.out) if config.out else _default_out(config)
    if info.is_main:
        run_dir = _prepare_run_dir(run_dir, overwrite)
        config = config.replace(out=str(run_dir)).resolved()
        (run_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    run_dir = Path(dist.broadcast_string(str(run_dir), info))  # the default name holds rank 0's timestamp
    config = config.replace(out=str(run_dir)).resolved()
    return _fit_interruptible(config, run_dir, progress, None, on_step)


def _fit_interruptible(
    cfg: FitConfig,
    run_dir: Path,
    progress: Progress | None,
    resume_from: tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]] | None,
    on_step: StepHook | None = None,
) -> FitResult:
    try:
        return _fit(cfg, run_dir, progress, resume_from, on_step)
    except KeyboardInterrupt:
        if (run_dir / "checkpoints" / "last" / "state.json").exists():
            log.warning("interrupted: continue this run with `thaw fit --resume %s`", run_dir)
        else:
            log.warning("interrupted before the first epoch finished: nothing to resume in %s", run_dir)
        raise


def _fit(
    cfg: FitConfig,
    run_dir: Path,
    progress: Progress | None,
    resume_from: tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]] | None,
    on_step: StepHook | None = None,
) -> FitResult:
    started = time.monotonic()
    elapsed_before = float(resume_from[1].get("elapsed_seconds", 0.0)) if resume_from else 0.0
    device = resolve_device(cfg.device)
    info = dist.init_from_env(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    main = info.is_main  # rank 0 alone writes files and prints; other ranks compute
    say: Progress = (progress or log.info) if main else _silent
    torch.manual_seed(cfg.seed)

    # 1. data: scan (cheap listing), then the model (it fixes the preprocessing), then decode once
    train_scan = scan(cfg.train)
    classes = train_scan.classes
    val_scan = scan(cfg.val, classes) if cfg.val else None
    test_scan = scan(cfg.test, classes) if cfg.test else None
    for name, sc in (("train", train_scan), ("val", val_scan), ("test", test_scan)):
        if sc is not None:
            _strict_check(cfg, sc.skipped, name)

    loaded = load_model(
        cfg.model,
        len(classes),
        weights=cfg.weights,
        random_init=cfg.random_init,
        pretrained=True if cfg.pretrained else None,
        img_size=cfg.img_size,
    )
    model = loaded.model
    pre = Preprocess.from_data_config(loaded.data_config, cfg.img_size)
    groups = layer_groups(model)
    say(
        f"model {loaded.name} ({loaded.source}), {sum(g.num_params for g in groups):,} parameters in "
        f"{len(groups)} layer groups, input {pre.size}px"
    )

    cache_dir = run_dir / "cache" / f"rank{info.rank}"
    train_all = _decode(train_scan, pre, cache_dir / "train.u8")
    _strict_check(cfg, train_all.skipped, "train")
    if val_scan is not None:
        train_data, val_data = train_all, _decode(val_scan, pre, cache_dir / "val.u8")
        _strict_check(cfg, val_data.skipped, "val")
    else:
        tr_idx, va_idx = stratified_split(train_all.labels.tolist(), cfg.val_fraction, cfg.seed)
        train_data, val_data = train_all.subset(tr_idx), train_all.subset(va_idx)
    test_data = _decode(test_scan, pre, cache_dir / "test.u8") if test_scan is not None else None
    if test_data is not None:
        _strict_check(cfg, test_data.skipped, "test")

    present = [c for c, n in zip(classes, _class_counts(train_data.labels, len(classes)), strict=True) if n > 0]
    if len(train_data) == 0 or len(present) < 2:
        raise DataError(
            f"after skipping unreadable files, {cfg.train} has {len(train_data)} usable training images in "
            f"{len(present)} class(es): a classifier needs images of at least two classes"
        )
    if len(val_data) == 0:
        raise DataError(f"no usable validation images (from {cfg.val or cfg.train}): add images or pass --val")

    splits = {"train": train_data, "val": val_data}
    scan_skipped: dict[str, list[Skipped]] = {"train": train_scan.skipped}
    files_seen = {"train": train_scan.files_seen}
    if val_scan is not None:
        scan_skipped["val"], files_seen["val"] = val_scan.skipped, val_scan.files_seen
    else:
        # the validation images came out of the training folder: count them there, not twice
        splits = {"train": train_all}
    if test_scan is not None and test_data is not None:
        splits["test"] = test_data
        scan_skipped["test"], files_seen["test"] = test_scan.skipped, test_scan.files_seen
    audit = build_audit(splits, classes, scan_skipped, files_seen)
    if val_scan is None:
        audit["split"] = {"train": len(train_data), "val": len(val_data), "val_fraction": cfg.val_fraction}
    if main:
        write_json(run_dir / "audit.json", audit)
    for line in format_audit(audit):
        say(line)

    warnings: list[str] = []
    val_counts = _class_counts(val_data.labels, len(classes))
    thin = [c for c, n in zip(classes, val_counts, strict=True) if n < 10]
    if thin:
        warnings.append(
            f"{len(thin)} class(es) have fewer than 10 validation images ({', '.join(thin[:5])}"
            f"{', ...' if len(thin) > 5 else ''}): choosing epochs and layers on so few images is noisy"
        )
    if audit.get("cross_split_duplicates"):
        warnings.append(f"{audit['cross_split_duplicates']} image(s) appear in more than one split (see audit.json)")
    for w in warnings if main else []:
        log.warning(w)

    # 2. plan + train, phase by phase
    deadline = None
    if cfg.time_budget is not None:
        deadline = started + cfg.time_budget - elapsed_before
    sink = _JsonlSink(run_dir / "metrics.jsonl", tensorboard=cfg.log == "tensorboard") if main else None
    runner = Runner(
        model=model,
        groups=groups,
        train_data=train_data,
        val_data=val_data,
        config=cfg,
        mean=pre.mean,
        std=pre.std,
        device=device,
        run_dir=run_dir if main else None,
        sink=sink,
        progress=say,
        deadline=deadline,
        on_step=on_step if main else None,
        dist=info,
    )
    strategy = make_strategy(cfg.strategy)
    history: list[PhaseResult] = []
    epoch_state: EpochState | None = None
    if resume_from is not None:
        tensors, state = resume_from
        runner.load_state(tensors, state)
        history = [phase_result_from_dict(d) for d in state["history"]]
        if state.get("epoch_state"):
            epoch_state = EpochState(**state["epoch_state"])
        _truncate_metrics(run_dir / "metrics.jsonl", runner.global_epoch)
        say(f"resuming {run_dir} after epoch {runner.global_epoch} ({len(history)} phase(s) finished)")
    elif (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()

    probe_test: float | None = None
    signals: dict[str, Any] = {"num_val": len(val_data)}
    while True:
        left = deadline - time.monotonic() if deadline is not None else None
        if left is not None:
            left = dist.broadcast_float(left, info, device)  # rank 0's clock plans for every rank
        if cfg.strategy == "auto" and history:
            signals.update(_measure_signals(runner, info, device, warmup="rgn" not in signals))
        ctx = PlanContext(
            config=cfg,
            groups=tuple(groups),
            num_train=len(train_data),
            num_classes=len(classes),
            seconds_left=left,
            signals=signals,
        )
        phase = strategy.next_phase(ctx, history)
        if phase is None:
            break
        if left is not None and left <= 0:
            warnings.append(f"time budget spent: phase '{phase.name}' and any after it did not run")
            break
        index = len(history)
        names = ", ".join(groups[i].name for i in phase.trainable)
        say(f"phase {index + 1} '{phase.name}': training {names} for up to {phase.epochs} epochs ({phase.reason})")
        resume_state = epoch_state if epoch_state is not None and epoch_state.phase_index == index else None
        epoch_state = None
        result = runner.run_phase(
            index, phase, history, resume=resume_state, elapsed_before=elapsed_before + time.monotonic() - started
        )
        history.append(result)
        say(
            f"phase {index + 1} '{phase.name}' ended ({result.stopped}) after {result.epochs_run} epoch(s): "
            f"best val accuracy {result.best_val_accuracy:.4f}"
        )
        if index == 0 and phase.trainable == (len(groups) - 1,) and test_data is not None:
            probe_test = float(runner.predict_logits(test_data)[0].accuracy)
    soups = _weight_soups(runner, history, say)
    runner.restore_overall_best()
    warnings.extend(runner.warnings)
    if sink is not None:
        sink.close()

    # 3. evaluate the best weights once on the test set (val when there is none)
    eval_split, eval_data = ("test", test_data) if test_data is not None else ("val", val_data)
    stats, logits = runner.predict_logits(eval_data)
    probs = torch.softmax(logits, dim=1).numpy()
    from thaw.report.metrics import compute_metrics  # scikit-learn loads after training, not during it

    metrics = compute_metrics(eval_data.labels.numpy(), probs, classes)
    if main:
        write_json(run_dir / "eval.json", {"split": eval_split, "data": cfg.test or cfg.val or cfg.train, **metrics})
        with open(run_dir / "predictions.jsonl", "w", encoding="utf-8") as fh:
            for path, label, p in zip(eval_data.paths, eval_data.labels.tolist(), probs, strict=True):
                row = {
                    "path": path,
                    "split": eval_split,
                    "label": label,
                    "pred": int(p.argmax()),
                    "probs": [round(float(v), 6) for v in p],
                }
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    # 4. export: a timm-compatible model folder
    model.eval()
    model_cpu = model.to("cpu").to(memory_format=torch.contiguous_format)
    data_config = {**loaded.data_config, **pre.to_dict()}
    if main:
        export_timm_dir(
            model_cpu,
            run_dir / "model",
            label_names=classes,
            data_config=data_config,
            extra={"thaw": {"strategy": cfg.strategy, "source": loaded.source}},
        )
        if cfg.export_onnx:
            from thaw.export import export_onnx

            sample = runner._normalize(eval_data.images[:32]).contiguous()
            onnx_info = export_onnx(
                model_cpu, run_dir / "model.onnx", label_names=classes, data_config=data_config, sample_inputs=sample
            )
            say(f"ONNX export verified: max |logit difference| {onnx_info['max_abs_diff']:.2e}")

    # 5. summary
    wall = elapsed_before + time.monotonic() - started
    group_names = [g.name for g in groups]
    test_acc = float(metrics["accuracy"]) if test_data is not None else None
    total_imgs = sum(r.images_per_second * r.seconds for r in history)
    total_secs = sum(r.seconds for r in history)
    summary: dict[str, Any] = {
        "thaw_version": _version(),
        "strategy": cfg.strategy,
        "model": loaded.name,
        "model_source": loaded.source,
        "img_size": pre.size,
        "classes": classes,
        "groups": [{"name": g.name, "num_params": g.num_params} for g in groups],
        "data": {"train": len(train_data), "val": len(val_data), "test": len(test_data) if test_data else None},
        "phases": [r.to_dict(group_names) for r in history],
        "best_val_accuracy": runner.best_val_accuracy if math.isfinite(runner.best_val_accuracy) else None,
        "best_val_loss": runner.best_val_loss,
        "best_phase": runner.best_where[0],
        "best_epoch_in_phase": runner.best_where[1],
        "test_accuracy": test_acc,
        "test_macro_f1": float(metrics["macro_f1"]) if test_data is not None else None,
        "eval_split": eval_split,
        "linear_probe_test_accuracy": probe_test,
        "epochs": runner.global_epoch,
        "wall_seconds": wall,
        "train_images_per_second": total_imgs / total_secs if total_secs else 0.0,
        "decisions": (strategy.decisions(history) if hasattr(strategy, "decisions") else []) + soups,
        "warnings": warnings,
        "skipped_files": len(audit.get("skipped", [])),
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if info.enabled:
        digests = dist.gather_strings(dist.weights_digest(model_cpu), info)
        summary["distributed"] = {
            "world_size": info.world_size,
            "backend": "nccl" if device.type == "cuda" else "gloo",
            "weights_identical_across_ranks": len(set(digests)) == 1,
            "weights_sha256": digests[0],
        }
    shutil.rmtree(cache_dir, ignore_errors=True)
    if main:
        write_json(run_dir / "summary.json", summary)
        _write_report(run_dir)
        shutil.rmtree(run_dir / "cache", ignore_errors=True)
    return FitResult(
        run_dir=run_dir,
        best_val_accuracy=float(summary["best_val_accuracy"] or 0.0),
        test_accuracy=test_acc,
        linear_probe_test_accuracy=probe_test,
        summary=summary,
    )


def _measure_signals(
    runner: Runner, info: dist.DistInfo, device: torch.device, batches: int = 4, *, warmup: bool = True
) -> dict[str, Any]:
    """Relative gradient norm per group with the current weights (Auto-RGN) on a few training batches, and the
    measured cost of a full fine-tuning epoch from the same forward+backward passes (for the time budget)."""
    from thaw.strategy.signals import relative_grad_norms

    bs = runner.config.batch_size
    n = len(runner.train_data)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(runner.config.seed))[: batches * bs]
    sub = runner.train_data.subset(order.tolist())
    data = list(tensor_batches(sub.images, sub.labels, bs, transform=runner._normalize, device=device))
    if warmup:
        # one untimed batch first: the process's first backward pass through the backbone pays one-time setup (the
        # probe before it trained on cached features): fashion10 seed 0 estimated 2.85 s per epoch against 0.84 s
        # measured, which cut auto's first fine-tuning phase short in every fresh `thaw fit` process (19-31 planned
        # epochs instead of 40; 0.80 s estimated with the warm-up)
        relative_grad_norms(runner.model, runner.groups, data[:1])
    start = time.perf_counter()
    rgn = relative_grad_norms(runner.model, runner.groups, data)
    per_image = (time.perf_counter() - start) / max(len(order), 1)
    # a training epoch: forward+backward over the (sharded) training set, plus a forward pass over validation
    local = -(-n // info.world_size)
    full_epoch = per_image * local + per_image / 3 * len(runner.val_data)
    return {"rgn": rgn, "full_epoch_seconds": dist.broadcast_float(full_epoch, info, device)}


def _silent(_message: str) -> None:
    """Progress sink of non-zero ranks."""


def _weight_soups(runner: Runner, history: Sequence[PhaseResult], say: Progress) -> list[dict[str, Any]]:
    """Uniform weight soup of every phase that was repeated (``Phase.restart_from``); one decision record each."""
    decisions = []
    for family in sorted({r.phase.restart_from for r in history if r.phase.restart_from is not None}):
        members = [family, *(r.index for r in history if r.phase.restart_from == family)]
        info = runner.weight_soup(members)
        if info is None:
            continue
        names = ", ".join(history[i].phase.name for i in info["members"])
        measured = (
            f"val {info['soup_val_accuracy']:.4f} against {info['mean_ingredient_val_accuracy']:.4f} for the mean "
            f"run and {info['best_val_accuracy_before']:.4f} for the best weights so far (noise margin "
            f"{info['noise_margin']:.4f}, two standard errors)"
        )
        if info["adopted"]:
            reason = f"weight soup of {names}: {measured}; the averaged weights are the result"
        else:
            reason = f"no weight soup of {names}: {measured}, worse by more than the margin; the best single run stays"
        say(reason)
        decisions.append({"phase": len(history), "decision": "weight soup", "reason": reason, "signals": info})
    return decisions


def _write_report(run_dir: Path) -> None:
    try:
        from thaw.report.html import write_report
    except ImportError:  # pragma: no cover - the report package is part of thaw; guard for partial installs
        return
    write_report(run_dir)


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (the epochs are trained again)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and json.loads(ln)["epoch"] <= last_epoch]
    path.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")


def _version() -> str:
    from thaw import __version__

    return __version__


# ---------------------------------------------------------------------------------------------------- runs
def load_run(run_dir: str | os.PathLike[str]) -> Run:
    """Read a run directory written by ``fit``.

    Raises:
        CheckpointError: not a run directory, or it has no exported model yet.
    """
    path = Path(run_dir)
    if not (path / "config.yaml").exists():
        raise CheckpointError(f"{path} is not a thaw run directory (no config.yaml)")
    cfg = FitConfig.from_yaml(path / "config.yaml")
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
    if not (path / "model" / "config.json").exists():
        raise CheckpointError(
            f"{path} has no exported model: the run did not finish; continue it with `thaw fit --resume {path}`"
        )
    return Run(run_dir=path, config=cfg, summary=summary, classes=list(summary.get("classes", [])))


def _load_for_inference(run_dir: Path) -> tuple[torch.nn.Module, list[str], Preprocess]:
    if (run_dir / "model" / "config.json").exists():
        model_dir = run_dir / "model"
    elif (run_dir / "config.json").exists():
        model_dir = run_dir  # a bare exported model folder
    else:
        load_run(run_dir)  # raises the helpful error
        model_dir = run_dir / "model"
    model, labels, data_config = load_timm_dir(model_dir)
    return model, labels, Preprocess.from_data_config(data_config)


def _infer(model: torch.nn.Module, data: DecodedImages, pre: Preprocess, batch_size: int = 128) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(data), batch_size):
            x = normalize(data.images[s : s + batch_size], pre.mean, pre.std, channels_last=False)
            out.append(torch.softmax(model(x).float(), dim=1))
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def evaluate(
    run_dir: str | os.PathLike[str], data: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None
) -> EvalResult:
    """Evaluate a run's model on labelled data (folder or CSV); writes eval.json (confusion matrix included).

    Args:
        run_dir: a run directory from ``fit`` (or an exported model folder).
        data: labelled images whose class names match the run's.
        out: where to write the JSON; default ``RUN_DIR/eval-<data name>.json``.

    Raises:
        ThawError: missing run, unusable data, unknown class names.
    """
    rd = Path(run_dir)
    model, labels, pre = _load_for_inference(rd)
    sc = scan(data, labels)
    decoded = decode_all(sc.samples, pre)
    if len(decoded) == 0:
        raise DataError(f"no readable images in {data}: nothing to evaluate")
    probs = _infer(model, decoded, pre)
    from thaw.report.metrics import compute_metrics

    metrics = compute_metrics(decoded.labels.numpy(), probs, labels)
    skipped = [*sc.skipped, *decoded.skipped]
    out_path = Path(out) if out else rd / f"eval-{Path(data).name or 'data'}.json"
    write_json(
        out_path,
        {
            "split": "external",
            "data": str(data),
            **metrics,
            "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
        },
    )
    return EvalResult(float(metrics["accuracy"]), float(metrics["macro_f1"]), metrics, skipped, out_path)


def _collect_images(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[str], list[Skipped]]:
    files: list[str] = []
    skipped: list[Skipped] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            for root, _dirs, names in os.walk(path):
                for name in sorted(names):
                    full = os.path.join(root, name)
                    if name.startswith("."):
                        skipped.append(Skipped(full, "hidden file"))
                    elif Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                        files.append(full)
                    else:
                        skipped.append(Skipped(full, f"unsupported extension '{Path(name).suffix}'"))
        elif path.exists():
            files.append(str(path))
        else:
            skipped.append(Skipped(str(path), "file not found"))
    return files, skipped


def predict(
    run_dir: str | os.PathLike[str], paths: Sequence[str | os.PathLike[str]], *, top_k: int = 3
) -> tuple[list[Prediction], list[Skipped]]:
    """Classify image files and folders with a run's model.

    Returns:
        (predictions in input order, skipped files with reasons).
    """
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1 (got {top_k})")
    model, labels, pre = _load_for_inference(Path(run_dir))
    files, skipped = _collect_images(paths)
    decoded = decode_all([Sample(f, 0) for f in files], pre)
    skipped.extend(decoded.skipped)
    if len(decoded) == 0:
        return [], skipped
    probs = _infer(model, decoded, pre)
    k = min(top_k, len(labels))
    preds = []
    for path, p in zip(decoded.paths, probs, strict=True):
        idx = np.argsort(-p)[:k]
        preds.append(Prediction(path, [(labels[i], float(p[i])) for i in idx]))
    return preds, skipped
