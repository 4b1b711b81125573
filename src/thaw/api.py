"""The readable runs: fit, evaluate, predict, load_run. The CLI calls these and nothing else."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from thaw.config import FitConfig
from thaw.data.audit import build_audit, format_audit
from thaw.data.cache import DecodedImages, decode_all
from thaw.data.sources import scan
from thaw.data.split import stratified_split
from thaw.data.transforms import Preprocess
from thaw.data.types import ScanResult, Skipped
from thaw.errors import CheckpointError, ConfigError, DataError
from thaw.export import export_timm_dir
from thaw.inference import EvalResult, Prediction, Run, evaluate, load_run, predict
from thaw.jsonio import json_safe, write_json
from thaw.models.groups import LayerGroup, layer_groups
from thaw.models.load import LoadedModel, load_model
from thaw.rundir import RunDir
from thaw.strategy.base import (
    Average,
    AverageResult,
    Candidates,
    Phase,
    PhaseResult,
    PlanContext,
    Refit,
    Step,
    StepResult,
    Strategy,
    phase_results,
)
from thaw.strategy.registry import make_strategy
from thaw.train import checkpoint as ckpt
from thaw.train import dist
from thaw.train.budget import Budget
from thaw.train.runner import EpochState, Runner, resolve_device
from thaw.train.state import epoch_state_from_dict, history_from_dicts, phase_from_dict

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
    model = "models" if cfg.models else cfg.model.replace("/", "_")
    return Path("runs") / f"{model}-{cfg.strategy}-{stamp}"


#: auto --models keeps its measuring to about this share of a time budget by measuring a stratified subsample ...
MEASURE_SHARE = 0.1
#: ... priced at this many seconds per image per candidate: on 2 cores the three built-in models took 34.6 s for
#: fashion100's 1000 images at 96 px (11-12 s a model, 19 % of a 180 s budget). It prices only the part that grows
#: with the images: loading, decoding and timing each model cost another 3-4 s (500 images took 22-29 s), so the
#: share reaches a tenth only on longer budgets (docs/benchmarks.md, "Backbones", tenth session).
MEASURE_SECONDS_PER_IMAGE = 0.012
#: ... but never fewer images than this (the probe's noise grows as the subsample shrinks).
MIN_MEASURE_IMAGES = 200


def _measure_images(time_budget: float | None, candidates: int) -> int:
    """How many training images auto --models measures its candidates on (advise's ``max_images``)."""
    from thaw.advise import MAX_IMAGES

    if time_budget is None:
        return MAX_IMAGES
    fit = int(MEASURE_SHARE * time_budget / (MEASURE_SECONDS_PER_IMAGE * max(candidates, 1)) + 1e-6)
    return max(MIN_MEASURE_IMAGES, min(MAX_IMAGES, fit))


def _backbone(cfg: FitConfig, rd: RunDir, info: dist.DistInfo, progress: Progress | None) -> tuple[FitConfig, float]:
    """auto with ``--models``: the backbone to fine-tune, and the seconds spent choosing it.

    Cheap signals first: rank 0 measures every candidate on the training data as ``thaw advise`` does (a
    cross-validated linear probe and LogME of its frozen features, the measured cost of an epoch) and takes the model
    advise recommends; the measurements go to advise.json in the run directory and config.yaml records the choice.
    A run that already chose (``--resume``) reads its choice back instead of measuring again.
    """
    if not cfg.models:
        return cfg, 0.0
    from thaw.advise import advise  # only runs with --models pay for the import

    started = time.perf_counter()
    chosen = ""
    if info.is_main:
        known = rd.read_advise().get("plan", {}).get("model")
        if known:
            chosen = str(known)
        else:
            say, candidates = progress or log.info, cfg.model_candidates()
            images = _measure_images(cfg.time_budget, len(candidates))
            names = ", ".join(candidates)
            say(f"auto: measuring {len(candidates)} candidate backbones on up to {images} images: {names}")
            result = advise(
                cfg.train,
                models=candidates,
                img_size=cfg.img_size,
                max_images=images,
                seed=cfg.seed,
                time_budget=cfg.time_budget,
                progress=say,
            )
            result.write_json(rd.advise_json)
            chosen = result.plan.model
            say(f"auto: backbone {chosen}: {result.plan.decisions[0].reason}")
    chosen = dist.broadcast_string(chosen, info)
    cfg = cfg.replace(model=chosen)
    if info.is_main:
        rd.config_yaml.write_text(cfg.to_yaml(), encoding="utf-8")
    return cfg, time.perf_counter() - started


def _backbone_decision(rd: RunDir) -> dict[str, Any] | None:
    """The decision record of the backbone choice (summary.json ``decisions``), when ``--models`` made one."""
    report = rd.read_advise()
    plan = report.get("plan") or {}
    if not plan.get("model"):
        return None
    why = next((d.get("reason", "") for d in plan.get("decisions", []) if d.get("topic") == "model"), "")
    keys = ("rank", "model", "linear_accuracy", "logme", "params", "img_size", "epoch_seconds")
    return {
        "phase": 0,
        "decision": f"choose backbone {plan['model']}",
        "reason": f"auto --models: {why}",
        "signals": {
            "chosen": plan["model"],
            "ranking": [{k: row.get(k) for k in keys} for row in plan.get("ranking", [])],
            "errors": {m["name"]: m["error"] for m in report.get("models", []) if m.get("error")},
            "measure_seconds": report.get("seconds"),
        },
    }


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
        **options: any FitConfig field, e.g. ``strategy="last-k", k=2, epochs=5, img_size=96``; without
            ``strategy`` auto runs (``time_budget`` sets its budget; without one it chooses one and says so).

    Returns:
        FitResult with the run directory, best validation and test accuracy, and the summary dict.

    Raises:
        ThawError: bad options, unusable data or weights, unwritable output.

    Example:
        >>> r = thaw.fit("data/train", test="data/test", img_size=96, time_budget="5m")  # auto  # doctest: +SKIP
        >>> print(r.test_accuracy)  # doctest: +SKIP
        >>> r = thaw.fit("data/train", strategy="lp-ft", epochs=20)  # a fixed strategy  # doctest: +SKIP
    """
    if resume is not None:
        rd = RunDir(resume)
        if not rd.has_config():
            raise CheckpointError(f"{rd.path} is not a thaw run directory (no config.yaml); check the path")
        cfg = FitConfig.from_yaml(rd.config_yaml, **options)
        info = dist.init_from_env(resolve_device(cfg.device).type)
        last = rd.last_checkpoint
        if not (last / "state.json").exists() and not (last.parent / "last.prev" / "state.json").exists():
            log.warning("%s has no finished epoch to resume from: starting the run again", rd.path)
            cfg, spent = _backbone(cfg, rd, info, progress)
            return _fit_interruptible(cfg, rd.path, info, progress, None, on_step, spent)
        return _fit_interruptible(cfg, rd.path, info, progress, ckpt.load_checkpoint(last), on_step)
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
    run_dir = Path(dist.broadcast_string(str(run_dir), info))  # the default name holds rank 0's timestamp
    config = config.replace(out=str(run_dir)).resolved()
    if info.is_main:
        RunDir(run_dir).config_yaml.write_text(config.to_yaml(), encoding="utf-8")
    config, spent = _backbone(config, RunDir(run_dir), info, progress)
    return _fit_interruptible(config, run_dir, info, progress, None, on_step, spent)


Checkpoint = tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]


def _fit_interruptible(cfg: FitConfig, run_dir: Path, *args: Any) -> FitResult:
    """``_fit`` (the rest of the arguments as ``_fit`` takes them) with a resume hint when interrupted."""
    try:
        return _fit(cfg, RunDir(run_dir), *args)
    except KeyboardInterrupt:
        if (RunDir(run_dir).last_checkpoint / "state.json").exists():
            log.warning("interrupted: continue this run with `thaw fit --resume %s`", run_dir)
        else:
            log.warning("interrupted before the first epoch finished: nothing to resume in %s", run_dir)
        raise


def _fit(
    cfg: FitConfig,
    rd: RunDir,
    info: dist.DistInfo,
    progress: Progress | None,
    resume_from: Checkpoint | None,
    on_step: StepHook | None = None,
    spent_before: float = 0.0,
) -> FitResult:
    """The recipe: data -> model -> steps of the strategy -> evaluate -> export -> summary and report.

    ``spent_before``: seconds of the time budget already spent before this call (choosing the backbone)."""
    elapsed_before = float(resume_from[1].get("elapsed_seconds", 0.0)) if resume_from else spent_before
    device = resolve_device(cfg.device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    budget = Budget(cfg.time_budget, elapsed_before=elapsed_before, dist=info, device=device)
    main = info.is_main  # rank 0 alone writes files and prints; other ranks compute
    say: Progress = (progress or log.info) if main else _silent
    torch.manual_seed(cfg.seed)

    # 1. data and model: scan (cheap listing), the model (it fixes the preprocessing), decode once, audit
    scans = _scan(cfg)
    loaded = load_model(
        cfg.model,
        len(scans.classes),
        weights=cfg.weights,
        random_init=cfg.random_init,
        pretrained=True if cfg.pretrained else None,
        img_size=cfg.img_size,
    )
    pre = Preprocess.from_data_config(loaded.data_config, cfg.img_size)
    groups = layer_groups(loaded.model)
    say(
        f"model {loaded.name} ({loaded.source}), {sum(g.num_params for g in groups):,} parameters in "
        f"{len(groups)} layer groups, input {pre.size}px"
    )
    cache_dir = rd.path / "cache" / f"rank{info.rank}"
    data = _load_data(cfg, scans, pre, cache_dir)
    if main:
        write_json(rd.audit_json, data.audit)
    for line in format_audit(data.audit):
        say(line)
    ignored = cfg.ignored_options()
    for w in [*ignored, *data.warnings] if main else []:
        log.warning(w)

    # 2. the strategy's steps, executed by the runner until the strategy is done
    sink = _JsonlSink(rd.metrics_jsonl, tensorboard=cfg.log == "tensorboard") if main else None
    runner = Runner(
        loaded.model,
        groups,
        data.train,
        data.val,
        cfg,
        pre.mean,
        pre.std,
        device,
        run_dir=rd.path if main else None,
        sink=sink,
        progress=say,
        budget=budget,
        on_step=on_step if main else None,
        dist=info,
    )
    if cfg.batch_size is None:  # chosen from the training set by the runner: say so, and record it
        cfg = runner.config
        per = f", {-(-len(data.train) // info.world_size)} per process" if info.enabled else ""
        say(f"batch size {cfg.batch}: chosen from {len(data.train)} training images{per} (--batch-size sets it)")
        if main:
            rd.config_yaml.write_text(cfg.to_yaml(), encoding="utf-8")
    budget.reserve = _final_seconds(runner, data.test)
    strategy = make_strategy(cfg.strategy)
    ctx = PlanContext(
        config=cfg,
        groups=tuple(groups),
        num_train=len(data.train),
        num_classes=len(scans.classes),
        num_val=len(data.val),
        budget_seconds=cfg.time_budget,
    )
    history, probe_test = _run_steps(strategy, runner, ctx, rd, resume_from, data.test, say)
    warnings = [*ignored, *data.warnings, *runner.warnings]
    if sink is not None:
        sink.close()

    # 3. evaluate the result once on the test set (val when there is none), 4. export a timm model folder
    eval_split, eval_data = ("test", data.test) if data.test is not None else ("val", data.val)
    metrics = _evaluate(runner, eval_data, eval_split, scans.classes, cfg, rd, main)
    model_cpu = loaded.model.eval().to("cpu").to(memory_format=torch.contiguous_format)
    if main:
        _export(model_cpu, loaded, pre, cfg, rd, scans.classes, runner.feed.normalize(eval_data.images[:32]), say)

    # 5. summary and report
    summary = _summary(cfg, loaded, pre, groups, scans.classes, data, runner, history, metrics, budget)
    summary.update(linear_probe_test_accuracy=probe_test, warnings=warnings)
    summary["decisions"] = [d.to_dict() for d in strategy.decisions(history)]
    if (chosen := _backbone_decision(rd)) is not None:
        summary["decisions"].insert(0, chosen)
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
        write_json(rd.summary_json, summary)
        _write_report(rd.path)
        shutil.rmtree(rd.path / "cache", ignore_errors=True)
        summary["wall_seconds"] = budget.elapsed()  # the report included: what the budget is held to
        write_json(rd.summary_json, summary)
    return FitResult(
        run_dir=rd.path,
        best_val_accuracy=float(summary["best_val_accuracy"] or 0.0),
        test_accuracy=summary["test_accuracy"],
        linear_probe_test_accuracy=probe_test,
        summary=summary,
    )


# ---------------------------------------------------------------------------------------------------- fit, parts
@dataclass
class _Scans:
    classes: list[str]
    train: ScanResult
    val: ScanResult | None
    test: ScanResult | None


@dataclass
class _Data:
    train: DecodedImages
    val: DecodedImages
    test: DecodedImages | None
    audit: dict[str, Any]
    warnings: list[str]


def _scan(cfg: FitConfig) -> _Scans:
    train = scan(cfg.train)
    val = scan(cfg.val, train.classes) if cfg.val else None
    test = scan(cfg.test, train.classes) if cfg.test else None
    for name, sc in (("train", train), ("val", val), ("test", test)):
        if sc is not None:
            _strict_check(cfg, sc.skipped, name)
    return _Scans(train.classes, train, val, test)


def _load_data(cfg: FitConfig, scans: _Scans, pre: Preprocess, cache_dir: Path) -> _Data:
    """Decode every split once, split validation off the training data when there is no --val, and audit."""
    classes = scans.classes
    train_all = _decode(scans.train, pre, cache_dir / "train.u8")
    _strict_check(cfg, train_all.skipped, "train")
    if scans.val is not None:
        train, val = train_all, _decode(scans.val, pre, cache_dir / "val.u8")
        _strict_check(cfg, val.skipped, "val")
    else:
        tr_idx, va_idx = stratified_split(train_all.labels.tolist(), cfg.val_fraction, cfg.seed)
        train, val = train_all.subset(tr_idx), train_all.subset(va_idx)
    test = _decode(scans.test, pre, cache_dir / "test.u8") if scans.test is not None else None
    if test is not None:
        _strict_check(cfg, test.skipped, "test")

    present = [c for c, n in zip(classes, _class_counts(train.labels, len(classes)), strict=True) if n > 0]
    if len(train) == 0 or len(present) < 2:
        raise DataError(
            f"after skipping unreadable files, {cfg.train} has {len(train)} usable training images in "
            f"{len(present)} class(es): a classifier needs images of at least two classes"
        )
    if len(val) == 0:
        raise DataError(f"no usable validation images (from {cfg.val or cfg.train}): add images or pass --val")

    # the validation images of a split came out of the training folder: count them there, not twice
    splits = {"train": train, "val": val} if scans.val is not None else {"train": train_all}
    scan_skipped = {name: sc.skipped for name, sc in (("train", scans.train), ("val", scans.val)) if sc is not None}
    files_seen = {name: sc.files_seen for name, sc in (("train", scans.train), ("val", scans.val)) if sc is not None}
    if scans.test is not None and test is not None:
        splits["test"] = test
        scan_skipped["test"], files_seen["test"] = scans.test.skipped, scans.test.files_seen
    audit = build_audit(splits, classes, scan_skipped, files_seen)
    if scans.val is None:
        audit["split"] = {"train": len(train), "val": len(val), "val_fraction": cfg.val_fraction}

    warnings: list[str] = []
    thin = [c for c, n in zip(classes, _class_counts(val.labels, len(classes)), strict=True) if n < 10]
    if thin:
        warnings.append(
            f"{len(thin)} class(es) have fewer than 10 validation images ({', '.join(thin[:5])}"
            f"{', ...' if len(thin) > 5 else ''}): choosing epochs and layers on so few images is noisy"
        )
    if audit.get("cross_split_duplicates"):
        warnings.append(f"{audit['cross_split_duplicates']} image(s) appear in more than one split (see audit.json)")
    return _Data(train, val, test, audit, warnings)


#: Seconds kept back from a time budget for writing the model folder, summary and report after the final evaluation
#: (measured with the report's plots on 2 cores: docs/benchmarks.md, "Time budget").
EXPORT_SECONDS = 12.0


def _final_seconds(runner: Runner, test: DecodedImages | None) -> Callable[[], float]:
    """What to keep back from a time budget for the final evaluation, export and report (``Budget.reserve``).

    The cost of an image is the last whole-model validation pass's (``Feed.eval_cost``) once training has made one;
    until then, one eval batch timed after an untimed one. A single cold batch alone read 5.4 ms an image at 96 px
    against 2.4 ms in the passes that followed, and kept 15 s of a 180 s budget idle on fashion100's 2000 test
    images (docs/benchmarks.md, "Time budget").
    """
    if runner.budget.seconds is None:
        return lambda: 0.0
    sample = runner.val_data.subset(range(min(len(runner.val_data), runner.feed.eval_batch_size)))
    runner.predict_logits(sample)  # untimed: the process's first forward pass pays one-time set-up
    t0 = time.perf_counter()
    runner.predict_logits(sample)
    first = (time.perf_counter() - t0) / max(len(sample), 1)
    images = len(test) if test is not None else len(runner.val_data)
    cost = runner.feed.eval_cost

    def estimate() -> float:
        return EXPORT_SECONDS + (cost.seconds_per_image or first) * images

    return estimate


def _run_steps(
    strategy: Strategy,
    runner: Runner,
    ctx: PlanContext,
    rd: RunDir,
    resume_from: Checkpoint | None,
    test: DecodedImages | None,
    say: Progress,
) -> tuple[list[StepResult], float | None]:
    """Ask the strategy for steps and execute them until it says done; returns the history and the test accuracy
    of the first head-only phase on the pretrained backbone (the linear probe), when there was one."""
    history: list[StepResult] = []
    running: Phase | None = None
    epoch_state: EpochState | None = None
    if resume_from is not None:
        tensors, state = resume_from
        runner.load_state(tensors, state)
        history = history_from_dicts(state["history"])
        if state.get("epoch_state"):
            epoch_state = epoch_state_from_dict(state["epoch_state"])
            running = phase_from_dict(state["running_phase"])
        _truncate_metrics(rd.metrics_jsonl, runner.global_epoch)
        say(f"resuming {rd.path} after epoch {runner.global_epoch} ({len(history)} step(s) finished)")
    elif rd.metrics_jsonl.exists():
        rd.metrics_jsonl.unlink()
    probe_test: float | None = None
    while True:
        step: Step | None
        if running is not None:  # the phase that was interrupted continues first, exactly as it was planned
            step, running = running, None
        else:
            left = runner.budget.left()
            signals = runner.measure(strategy.needs(history))
            step = strategy.next_step(replace(ctx, seconds_left=left, signals=signals), history)
            if step is None:
                break
            # a weight soup costs one validation pass, which the reserve kept back from the budget covers; anything
            # else would train past the budget
            if left is not None and left <= 0 and not isinstance(step, Average):
                runner.warnings.append(f"time budget spent: {_describe(step, ctx)} and anything after it did not run")
                break
        say(f"step {len(history) + 1}: {_describe(step, ctx)}")
        for result in runner.execute(step, history, resume=epoch_state):
            history.append(result)
            say(_outcome(result))
            if isinstance(result, PhaseResult) and result.index == 0 and result.phase.trainable == (ctx.head,):
                probe_test = float(runner.predict_logits(test)[0].accuracy) if test is not None else None
        epoch_state = None
    runner.selection.restore(runner.model)
    return history, probe_test


def _describe(step: Step, ctx: PlanContext) -> str:
    names = [g.name for g in ctx.groups]
    if isinstance(step, Phase | Refit):
        phase = step if isinstance(step, Phase) else step.phase
        what = "refit on training + validation images: " if isinstance(step, Refit) else ""
        length = f"{phase.seconds:.0f}s" if phase.seconds is not None else f"up to {phase.epochs} epochs"
        return (
            f"{what}'{phase.name}' trains {', '.join(names[i] for i in phase.trainable)} for {length} ({phase.reason})"
        )
    if isinstance(step, Candidates):
        return f"race of {', '.join(p.name for p in step.phases)} ({step.reason})"
    return f"weight soup of phases {', '.join(str(i + 1) for i in step.members)} ({step.reason})"


def _outcome(result: StepResult) -> str:
    if isinstance(result, AverageResult):
        state = "adopted" if result.adopted else "vetoed"
        val = f"val {result.info.get('soup_val_accuracy', float('nan')):.4f}"
        if result.info.get("validated") is False:
            return f"weight soup of refits {state} ({val}, measured on images it trained on)"
        return f"weight soup {state}: {val}"
    return (
        f"phase {result.index + 1} '{result.phase.name}' ended ({result.stopped}) after {result.epochs_run} epoch(s), "
        f"{result.seconds:.0f}s: best val accuracy {result.best_val_accuracy:.4f}"
    )


def _evaluate(
    runner: Runner, data: DecodedImages, split: str, classes: list[str], cfg: FitConfig, rd: RunDir, main: bool
) -> dict[str, Any]:
    """Metrics of the result on ``data``; eval.json and predictions.jsonl."""
    _, logits = runner.predict_logits(data)
    probs = torch.softmax(logits, dim=1).numpy()
    from thaw.report.metrics import compute_metrics  # scikit-learn loads after training, not during it

    metrics = compute_metrics(data.labels.numpy(), probs, classes)
    if main:
        write_json(rd.eval_json, {"split": split, "data": cfg.test or cfg.val or cfg.train, **metrics})
        with open(rd.predictions_jsonl, "w", encoding="utf-8") as fh:
            for path, label, p in zip(data.paths, data.labels.tolist(), probs, strict=True):
                row = {"path": path, "split": split, "label": label, "pred": int(p.argmax())}
                fh.write(json.dumps({**row, "probs": [round(float(v), 6) for v in p]}, ensure_ascii=False) + "\n")
    return metrics


def _export(
    model: torch.nn.Module,
    loaded: LoadedModel,
    pre: Preprocess,
    cfg: FitConfig,
    rd: RunDir,
    classes: list[str],
    sample: torch.Tensor,
    say: Progress,
) -> None:
    data_config = {**loaded.data_config, **pre.to_dict()}
    export_timm_dir(
        model,
        rd.model_dir,
        label_names=classes,
        data_config=data_config,
        extra={"thaw": {"strategy": cfg.strategy, "source": loaded.source}},
    )
    if cfg.export_onnx:
        from thaw.export import export_onnx

        onnx_info = export_onnx(
            model, rd.path / "model.onnx", label_names=classes, data_config=data_config, sample_inputs=sample
        )
        say(f"ONNX export verified: max |logit difference| {onnx_info['max_abs_diff']:.2e}")


def _summary(
    cfg: FitConfig,
    loaded: LoadedModel,
    pre: Preprocess,
    groups: Sequence[LayerGroup],
    classes: list[str],
    data: _Data,
    runner: Runner,
    history: Sequence[StepResult],
    metrics: dict[str, Any],
    budget: Budget,
) -> dict[str, Any]:
    group_names = [g.name for g in groups]
    phases = phase_results(history)
    total_imgs = sum(r.images_per_second * r.seconds for r in phases)
    total_secs = sum(r.seconds for r in phases)
    best = runner.selection
    return {
        "thaw_version": _version(),
        "strategy": cfg.strategy,
        "model": loaded.name,
        "model_source": loaded.source,
        "img_size": pre.size,
        "classes": classes,
        "groups": [{"name": g.name, "num_params": g.num_params} for g in groups],
        "data": {"train": len(data.train), "val": len(data.val), "test": len(data.test) if data.test else None},
        "phases": [r.to_dict(group_names) for r in phases],
        "averages": [
            {"index": r.index, "members": list(r.members), "adopted": r.adopted}
            for r in history
            if isinstance(r, AverageResult)
        ],
        "best_val_accuracy": best.best.accuracy if math.isfinite(best.best.accuracy) else None,
        "best_val_loss": best.best.loss if math.isfinite(best.best.loss) else None,
        "best_phase": best.best_where[0],
        "best_epoch_in_phase": best.best_where[1],
        "validation_held_out": not any(r.phase.refit for r in phases),
        "test_accuracy": float(metrics["accuracy"]) if data.test is not None else None,
        "test_macro_f1": float(metrics["macro_f1"]) if data.test is not None else None,
        "eval_split": "test" if data.test is not None else "val",
        "epochs": runner.global_epoch,
        "steps": sum(r.steps for r in phases),
        "batch_size": cfg.batch,
        "wall_seconds": budget.elapsed(),
        "time_budget": cfg.time_budget,
        "train_images_per_second": total_imgs / total_secs if total_secs else 0.0,
        "skipped_files": len(data.audit.get("skipped", [])),
        "device": str(runner.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _silent(_message: str) -> None:
    """Progress sink of non-zero ranks."""


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
