"""Speed: thaw's training and evaluation path against the plain PyTorch tutorial loop, measured side by side.

``python -m bench.speed --models efficientnet_lite0,resnet18,vit_tiny_patch16_224 --sizes 64,96,224 --batch 64
--steps 10 --out bench/out/speed.json`` prints a table and writes JSON with machine information.

Per model and resolution, in a fresh subprocess (so peak memory is per configuration):

* **thaw**: images decoded once into uint8 tensors (``thaw.data.cache.decode_all``), then exactly what
  ``thaw.train.runner.Runner`` does in a ``full`` phase: the phase from ``plan_fixed("full")``, its BatchNorm
  policy and ``light`` augmentation on uint8 tensors, ``normalize(..., channels_last=True)``, the channels_last
  model, AdamW over per-group parameter groups with the warmup-cosine schedule, and ``thaw.train.loop.train_epoch``
  (which also measures per-group gradient norms, as the runner asks it to). Eval: ``thaw.train.loop.evaluate``
  (inference_mode) over the uint8 tensors, normalised to channels_last per batch.
* **plain**: the PyTorch transfer-learning tutorial loop: torchvision ``ImageFolder`` decoding every PNG with PIL
  on every epoch, ``RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize``, a ``DataLoader`` with
  ``num_workers`` 0 and 2 (non-persistent workers, as the tutorial), the default memory format, AdamW over
  ``model.parameters()``. Eval: ``Resize + CenterCrop + ToTensor + Normalize`` under ``torch.no_grad``.

Both paths start from copies of the same model and use the same batch size. The training set has
``steps * batch`` PNGs (Fashion-MNIST 28 px images upsampled by the transforms), so one timed block is one epoch of
``steps`` optimizer steps. Each path first runs ``warmup`` steps (not timed); then the paths take turns, block by
block, ``repeats`` times, so that load from other processes on a shared machine hits them alike. Reported:
mean +- std of images/second, the per-repeat ratio thaw/plain, forward FLOPs per image
(``torch.utils.flop_counter.FlopCounterMode``), achieved GFLOP/s (train counted as 3x forward), and the peak
resident memory of each path (VmHWM, reset between paths through ``/proc/self/clear_refs``).

A second part runs ``thaw.api.fit`` on thaw's embedded sample (400 train + 200 val images) in subprocesses:
``linear`` vs ``full`` peak memory, the ``linear`` probe's time (feature cache + head epochs) vs one eval forward
pass over the same images, and the epoch time of ``last-k`` (k=2), which has no frozen-prefix cache yet.

This is a bench script, not library code: progress goes to stderr.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 10
BUILTIN = "efficientnet_lite0"
Result = dict[str, Any]


def log(msg: str) -> None:
    """Print one progress line to stderr."""
    print(f"[speed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- measurement helpers
def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB: VmHWM (resettable), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "runs"}`` of a list of measurements (std 0 for a single value)."""
    vals = [float(v) for v in values]
    return {
        "mean": statistics.fmean(vals) if vals else math.nan,
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "runs": vals,
    }


def forward_gflops(model: nn.Module, size: int) -> float:
    """Forward FLOPs of one image (a multiply-add counts 2), in GFLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        probe(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops()) / 1e9


def machine() -> dict[str, Any]:
    """CPU model, cores, torch version and threads (bench.baselines.machine_info) plus the load average."""
    from bench.baselines import machine_info

    info = machine_info()
    info["load_average_at_start"] = list(os.getloadavg())
    return info


# --------------------------------------------------------------------------------------------- data
def write_pngs(root: Path, n: int, seed: int = 0) -> Path:
    """Write ``n`` Fashion-MNIST training images as ``root/<class>/<index>.png`` (an ImageFolder).

    Falls back to thaw's embedded sample (cycled) when the IDX files are not installed.
    """
    from bench.make_sample_data import CLASS_NAMES, IDX_DIR, load_split, write_png

    root.mkdir(parents=True, exist_ok=True)
    if (IDX_DIR / "train-images-idx3-ubyte.gz").exists():
        images, labels = load_split("train", IDX_DIR)
        for i in np.random.default_rng(seed).choice(len(images), n, replace=False).tolist():
            write_png(images[i], root / CLASS_NAMES[int(labels[i])] / f"{i}.png")
        return root
    from thaw.data.sample import sample_data_dir

    files = sorted((sample_data_dir() / "train").rglob("*.png"))
    for j, src in zip(range(n), itertools.cycle(files), strict=False):
        dst = root / src.parent.name / f"{j}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return root


def build_model(name: str, size: int) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...], dict[str, Any], bool]:
    """The model a benchmark row uses: built-in Lite0 weights, or timm's random init (ViTs built for ``size``).

    Returns:
        ``(model, mean, std, data_config, random_init)``.
    """
    from thaw.models.load import load_model

    random_init = name != BUILTIN
    loaded = load_model(name, NUM_CLASSES, random_init=random_init, img_size=size if random_init else None)
    cfg = loaded.data_config
    return loaded.model, tuple(cfg["mean"]), tuple(cfg["std"]), cfg, random_init


# --------------------------------------------------------------------------------------------- the two paths
class ThawPath:
    """Runner's full-phase training path on decoded uint8 tensors, one fixed-size block at a time."""

    def __init__(
        self,
        model: nn.Module,
        root: Path,
        size: int,
        data_config: dict[str, Any],
        batch: int,
        random_init: bool,
        bn: str,
        amp: str = "auto",
    ) -> None:
        from thaw.config import FitConfig
        from thaw.data.cache import decode_all
        from thaw.data.sources import scan
        from thaw.data.transforms import Preprocess
        from thaw.models.groups import layer_groups
        from thaw.strategy.base import PlanContext
        from thaw.strategy.fixed import plan_fixed
        from thaw.train.optim import build_optimizer, steps_per_epoch
        from thaw.train.runner import Runner

        pre = Preprocess.from_data_config(data_config, size)
        t0 = time.perf_counter()
        self.data = decode_all(scan(root).samples, pre)
        self.decode_seconds = time.perf_counter() - t0
        groups = layer_groups(model)
        cfg = FitConfig(train=str(root), batch_size=batch, random_init=random_init, bn=bn, device="cpu", amp=amp)
        ctx = PlanContext(config=cfg.resolved(), groups=tuple(groups), num_train=len(self.data), num_classes=10)
        self.phase = plan_fixed("full", ctx)[0]
        self.runner = Runner(
            model=model,
            groups=groups,
            train_data=self.data,
            val_data=self.data,
            config=cfg,
            mean=pre.mean,
            std=pre.std,
            device=torch.device("cpu"),
        )
        self.bn_policy = self.runner.config.bn if self.phase.bn_policy == "auto" else self.phase.bn_policy
        self.runner.apply_phase(self.phase)
        # as Runner.run_phase: the optimizer over exactly the trainable groups, the per-step schedule
        spe = steps_per_epoch(len(self.data), batch)
        groups_opt = self.runner.optimizer_groups(self.phase)
        self.opt, self.sched, _ = build_optimizer(self.runner.config, self.phase, groups_opt, spe * 1000, spe)
        params = dict(model.named_parameters())
        self.grad_groups = {gi: [params[p] for p in groups[gi].param_names] for gi in self.phase.trainable}
        self.batch = batch
        self._batches = self._epochs()

    def _epochs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        runner = self.runner
        while True:  # Runner.run_phase's epoch loop, without validation and checkpoints
            torch.manual_seed(runner.epoch_seed())
            order = runner.epoch_order(len(self.data), shard=False)
            yield from runner.feed.train_batches(self.phase.augment, order)
            runner.global_epoch += 1

    def train(self, steps: int) -> int:
        """``steps`` optimizer steps through ``train_epoch``; returns the number of images."""
        from thaw.train.loop import train_epoch

        self.runner.set_modes(self.phase)
        stats = train_epoch(
            self.runner.model,
            itertools.islice(self._batches, steps),
            self.opt,
            self.sched,
            label_smoothing=self.runner.config.label_smoothing,
            class_weights=self.runner.class_weights,
            amp_dtype=self.runner.amp_dtype,
            device=self.runner.device,
            grad_groups=self.grad_groups,
        )
        return int(stats.images)

    def eval(self, steps: int) -> int:
        """One pass over ``steps`` batches of the decoded images (inference_mode, channels_last)."""
        from thaw.train.loop import evaluate, tensor_batches

        self.runner.model.eval()
        n = min(len(self.data), steps * self.batch)
        batches = tensor_batches(
            self.data.images[:n],
            self.data.labels[:n],
            self.batch,
            transform=self.runner.feed.normalize,
            device=self.runner.device,
        )
        stats, _ = evaluate(self.runner.model, batches, amp_dtype=self.runner.amp_dtype, device=self.runner.device)
        return int(stats.images)


class PlainPath:
    """The PyTorch transfer-learning tutorial's loop: ImageFolder + PIL transforms + DataLoader, default format."""

    def __init__(
        self,
        model: nn.Module,
        root: Path,
        size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        batch: int,
        workers: int,
    ) -> None:
        from torch.utils.data import DataLoader
        from torchvision import datasets

        from bench.baselines import tutorial_transforms

        self.model = model
        self.train_loader: DataLoader[Any] = DataLoader(
            datasets.ImageFolder(str(root), transform=tutorial_transforms(size, mean, std, train=True)),
            batch_size=batch,
            shuffle=True,
            num_workers=workers,
        )
        self.eval_loader: DataLoader[Any] = DataLoader(
            datasets.ImageFolder(str(root), transform=tutorial_transforms(size, mean, std, train=False)),
            batch_size=batch,
            shuffle=False,
            num_workers=workers,
        )
        self.criterion = nn.CrossEntropyLoss()
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def train(self, steps: int) -> int:
        """One epoch (``steps`` batches; fewer for warmup), as the tutorial's inner loop; returns images seen."""
        self.model.train()
        running_loss, corrects, seen = 0.0, 0, 0
        for inputs, labels in itertools.islice(self.train_loader, steps):
            self.opt.zero_grad()
            outputs = self.model(inputs)
            _, preds = torch.max(outputs, 1)
            loss = self.criterion(outputs, labels)
            loss.backward()
            self.opt.step()
            running_loss += loss.item() * inputs.size(0)
            corrects += int(torch.sum(preds == labels))
            seen += inputs.size(0)
        return seen

    def eval(self, steps: int) -> int:
        """One pass over ``steps`` eval batches under ``torch.no_grad``."""
        self.model.eval()
        seen = corrects = 0
        with torch.no_grad():
            for inputs, labels in itertools.islice(self.eval_loader, steps):
                corrects += int((self.model(inputs).argmax(1) == labels).sum())
                seen += inputs.size(0)
        return seen


# --------------------------------------------------------------------------------------------- workers
def bench_config(spec: dict[str, Any]) -> Result:
    """Measure one (model, size): thaw vs plain, train and eval, interleaved repeats (runs in a subprocess)."""
    name, size, batch, steps = spec["model"], int(spec["size"]), int(spec["batch"]), int(spec["steps"])
    repeats, warmup, root = int(spec["repeats"]), int(spec["warmup"]), Path(spec["data"])
    torch.manual_seed(0)
    base, mean, std, data_config, random_init = build_model(name, size)
    gflops = forward_gflops(base, size)
    paths: dict[str, ThawPath | PlainPath] = {}
    thaw = ThawPath(
        copy.deepcopy(base),
        root,
        size,
        data_config,
        batch,
        random_init,
        spec.get("bn", "auto"),
        spec.get("amp", "auto"),
    )
    paths["thaw"] = thaw
    for w in spec["workers"]:
        paths[f"plain_w{w}"] = PlainPath(copy.deepcopy(base), root, size, mean, std, batch, int(w))
    del base
    can_reset = reset_peak_rss()
    log(
        f"{name} {size}px: {gflops:.3f} GFLOPs/image, "
        f"thaw decoded {len(thaw.data)} images in {thaw.decode_seconds:.1f}s"
    )

    for key, path in paths.items():  # warmup: oneDNN primitive creation, allocator growth, lazy init
        path.train(warmup)
        path.eval(1)
        log(f"  warmed up {key}")
    train: dict[str, list[float]] = {k: [] for k in paths}
    evals: dict[str, list[float]] = {k: [] for k in paths}
    peaks: dict[str, float] = dict.fromkeys(paths, 0.0)

    def timed(key: str, fn: Callable[[int], int]) -> float:
        if can_reset:
            reset_peak_rss()
        t0 = time.perf_counter()
        images = fn(steps)
        seconds = time.perf_counter() - t0
        peaks[key] = max(peaks[key], peak_rss_mb())
        return images / seconds

    for r in range(repeats):
        for key, path in paths.items():
            train[key].append(timed(key, path.train))
        for key, path in paths.items():
            evals[key].append(timed(key, path.eval))
        log(
            f"  repeat {r + 1}/{repeats}: train "
            + ", ".join(f"{k} {v[-1]:.1f}" for k, v in train.items())
            + " img/s; eval "
            + ", ".join(f"{k} {v[-1]:.1f}" for k, v in evals.items())
        )

    out: Result = {
        "model": name,
        "size": size,
        "batch": batch,
        "steps": steps,
        "repeats": repeats,
        "warmup_steps": warmup,
        "images": len(thaw.data),
        "weights": "builtin ImageNet" if not random_init else "random init",
        "thaw_bn_policy": thaw.bn_policy,
        "thaw_amp": str(thaw.runner.amp_dtype),
        "thaw_augment": thaw.phase.augment,
        "thaw_decode_seconds": thaw.decode_seconds,
        "forward_gflops_per_image": gflops,
        "train_images_per_second": {k: mean_std(v) for k, v in train.items()},
        "eval_images_per_second": {k: mean_std(v) for k, v in evals.items()},
        "train_gflops_per_second": {k: mean_std([3 * gflops * x for x in v]) for k, v in train.items()},
        "eval_gflops_per_second": {k: mean_std([gflops * x for x in v]) for k, v in evals.items()},
        "peak_rss_mb": {k: round(v, 1) for k, v in peaks.items()},
        "peak_rss_per_path": can_reset,
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_ratio": {},
        "eval_ratio": {},
    }
    for key in paths:
        if key != "thaw":
            out["train_ratio"][key] = mean_std([a / b for a, b in zip(train["thaw"], train[key], strict=True)])
            out["eval_ratio"][key] = mean_std([a / b for a, b in zip(evals["thaw"], evals[key], strict=True)])
    return out


def fit_run(spec: dict[str, Any]) -> Result:
    """One ``thaw.api.fit`` on the embedded sample; wall time, phase and epoch seconds, peak RSS."""
    from thaw.api import fit
    from thaw.data.sample import sample_data_dir

    sample = sample_data_dir()
    out_dir = Path(spec["out_dir"])
    options: dict[str, Any] = {"k": int(spec["k"])} if spec["strategy"] == "last-k" else {}
    for key in ("augment", "prefix_cache"):
        if key in spec:
            options[key] = spec[key]
    t0 = time.perf_counter()
    result = fit(
        sample / "train",
        val=str(sample / "val"),
        strategy=spec["strategy"],
        img_size=int(spec["img_size"]),
        batch_size=int(spec["batch"]),
        epochs=int(spec.get("epochs", 1)),
        probe_epochs=1,
        patience=0,
        out=str(out_dir),
        overwrite=True,
        progress=lambda _line: None,
        **options,
    )
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    phases = result.summary["phases"]
    return {
        "strategy": spec["strategy"],
        **options,
        "img_size": int(spec["img_size"]),
        "batch": int(spec["batch"]),
        "images": result.summary["data"],
        "fit_wall_seconds": wall,
        "phase_seconds": sum(p["seconds"] for p in phases),
        "epoch_seconds": [r["seconds"] for r in rows],
        "train_images_per_second": [r["images_per_second"] for r in rows],
        "cached_features": [p["cached_features"] for p in phases],
        "prefix_cache": [p.get("prefix_cache", {}) for p in phases],
        "peak_rss_mb": peak_rss_mb(),
    }


def eval_pass(spec: dict[str, Any]) -> Result:
    """One eval forward pass of Lite0 over the embedded sample's train+val images, as thaw's runner evaluates.

    Times model load, decoding, the first (cold) pass and the mean of three warm passes.
    """
    from thaw.data.cache import decode_all
    from thaw.data.sample import sample_data_dir
    from thaw.data.sources import scan
    from thaw.data.transforms import Preprocess, normalize
    from thaw.models.load import load_model
    from thaw.train.loop import evaluate, tensor_batches

    size, batch = int(spec["img_size"]), int(spec["batch"])
    t0 = time.perf_counter()
    loaded = load_model(BUILTIN, NUM_CLASSES)
    t1 = time.perf_counter()
    pre = Preprocess.from_data_config(loaded.data_config, size)
    sample = sample_data_dir()
    train_scan = scan(sample / "train")
    splits = [decode_all(train_scan.samples, pre), decode_all(scan(sample / "val", train_scan.classes).samples, pre)]
    t2 = time.perf_counter()
    model = loaded.model.to(memory_format=torch.channels_last).eval()
    cpu = torch.device("cpu")

    def one_pass() -> float:
        start = time.perf_counter()
        # batches of 2 x batch_size (128 by default); the runner's CPU eval batch is 32 (Feed.eval_batch_size),
        # measured as fast, so this pass is the same work at the same speed
        for data in splits:
            evaluate(
                model,
                tensor_batches(
                    data.images,
                    data.labels,
                    batch * 2,
                    transform=lambda x: normalize(x, pre.mean, pre.std, channels_last=True),
                    device=cpu,
                ),
                device=cpu,
            )
        return time.perf_counter() - start

    cold = one_pass()
    warm = [one_pass() for _ in range(3)]
    return {
        "images": sum(len(d) for d in splits),
        "img_size": size,
        "model_load_seconds": t1 - t0,
        "decode_seconds": t2 - t1,
        "cold_pass_seconds": cold,
        "warm_pass_seconds": mean_std(warm),
    }


WORKERS: dict[str, Callable[[dict[str, Any]], Result]] = {"config": bench_config, "fit": fit_run, "eval": eval_pass}


def run_worker(kind: str, spec: dict[str, Any], timeout: float | None = None) -> Result:
    """Run one worker in a fresh Python process; its JSON result is the last line of its stdout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "bench.speed", "--worker", kind, "--spec", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {kind} {spec} failed with exit code {proc.returncode}")
    result: Result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["child_max_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return result


def fit_section(img_size: int, batch: int, workdir: Path, repeats: int = 3) -> Result:
    """Linear vs full peak memory, linear probe vs one eval pass, last-k epoch time.

    Every fit and eval pass runs in its own subprocess; the four take turns ``repeats`` times, so that the ratios
    are paired within a round (load from other processes on a shared machine drifts between rounds).
    """
    runs: list[dict[str, Result]] = []
    # last-k k=2 without augmentation (the frozen-prefix cache is exact only then), 3 epochs, cache on and off
    variants: dict[str, dict[str, Any]] = {
        "linear": {"strategy": "linear"},
        "full": {"strategy": "full"},
        "last-k": {"strategy": "last-k", "augment": "none", "epochs": 3, "prefix_cache": True},
        "last-k-uncached": {"strategy": "last-k", "augment": "none", "epochs": 3, "prefix_cache": False},
    }
    for r in range(repeats):
        run: dict[str, Result] = {}
        for name, variant in variants.items():
            out_dir = str(workdir / f"{name}-{r}")
            spec = {**variant, "k": 2, "img_size": img_size, "batch": batch, "out_dir": out_dir}
            run[name] = f = run_worker("fit", spec)
            log(
                f"fit {name}: wall {f['fit_wall_seconds']:.1f}s, phase {f['phase_seconds']:.1f}s, "
                f"epochs {[round(e, 2) for e in f['epoch_seconds']]}, peak RSS {f['peak_rss_mb']:.0f} MiB"
            )
        run["eval"] = ev = run_worker("eval", {"img_size": img_size, "batch": batch})
        log(f"eval pass over {ev['images']} images: cold {ev['cold_pass_seconds']:.2f}s")
        runs.append(run)
    return summarize_fits(runs)


def _steady(epoch_seconds: Sequence[float]) -> float:
    rest = list(epoch_seconds[1:]) or list(epoch_seconds)
    return sum(rest) / len(rest)


def summarize_fits(runs: Sequence[dict[str, Result]]) -> Result:
    """Means and paired ratios over rounds of ``{"linear", "full", "last-k", "eval"}`` results."""

    def each(fn: Callable[[dict[str, Result]], float]) -> dict[str, Any]:
        return mean_std([fn(run) for run in runs])

    def pipeline(run: dict[str, Result]) -> float:
        ev = run["eval"]
        return float(ev["model_load_seconds"] + ev["decode_seconds"] + ev["cold_pass_seconds"])

    def peak(strategy: str) -> dict[str, Any]:
        return mean_std([run[strategy]["peak_rss_mb"] for run in runs])

    first = runs[0]
    return {
        "img_size": first["linear"]["img_size"],
        "batch": first["linear"]["batch"],
        "images": first["linear"]["images"],
        "eval_images": first["eval"]["images"],
        "peak_rss_mb": {k: peak(k) for k in ("linear", "full", "last-k")},
        "linear_vs_full_peak_rss": each(lambda run: run["linear"]["peak_rss_mb"] / run["full"]["peak_rss_mb"]),
        "linear_probe_seconds": each(lambda run: run["linear"]["phase_seconds"]),
        "linear_fit_wall_seconds": each(lambda run: run["linear"]["fit_wall_seconds"]),
        "eval_pass_cold_seconds": each(lambda run: run["eval"]["cold_pass_seconds"]),
        "eval_pass_warm_seconds": each(lambda run: run["eval"]["warm_pass_seconds"]["mean"]),
        "load_decode_eval_seconds": each(pipeline),
        "linear_probe_vs_eval_pass": each(
            lambda run: run["linear"]["phase_seconds"] / run["eval"]["cold_pass_seconds"]
        ),
        "linear_probe_vs_warm_eval_pass": each(
            lambda run: run["linear"]["phase_seconds"] / run["eval"]["warm_pass_seconds"]["mean"]
        ),
        "linear_fit_wall_vs_load_decode_eval": each(lambda run: run["linear"]["fit_wall_seconds"] / pipeline(run)),
        # epochs after the first (the first pays one-time warm-up of the allocator and kernels on both paths)
        "last_k_epoch_seconds_cached": each(lambda run: _steady(run["last-k"]["epoch_seconds"])),
        "last_k_epoch_seconds_uncached": each(lambda run: _steady(run["last-k-uncached"]["epoch_seconds"])),
        "last_k_cached_vs_uncached_epoch": each(
            lambda run: _steady(run["last-k"]["epoch_seconds"]) / _steady(run["last-k-uncached"]["epoch_seconds"])
        ),
        "last_k_cache_build_seconds": each(
            lambda run: float(run["last-k"]["prefix_cache"][0].get("build_seconds", float("nan")))
        ),
        "last_k_phase_cached_vs_uncached": each(
            lambda run: run["last-k"]["phase_seconds"] / run["last-k-uncached"]["phase_seconds"]
        ),
        "full_epoch_seconds": each(lambda run: run["full"]["epoch_seconds"][0]),
        "runs": list(runs),
    }


# --------------------------------------------------------------------------------------------- report
def _pm(d: dict[str, Any], fmt: str = ".1f") -> str:
    return f"{d['mean']:{fmt}} ± {d['std']:{fmt}}"


def format_table(rows: Sequence[Result]) -> str:
    """A Markdown table of the per-configuration results."""
    if not rows:
        return ""
    plains = [k for k in rows[0]["train_images_per_second"] if k != "thaw"]
    head = ["model", "px", "GFLOPs"]
    head += ["train thaw"] + [f"train {k}" for k in plains] + [f"ratio vs {k}" for k in plains]
    head += ["eval thaw"] + [f"eval {k}" for k in plains] + [f"ratio vs {k}" for k in plains]
    head += ["train GFLOP/s thaw/" + "/".join(plains), "eval GFLOP/s thaw", "peak RSS MiB thaw/" + "/".join(plains)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        tr, ev = r["train_images_per_second"], r["eval_images_per_second"]
        cells = [r["model"], str(r["size"]), f"{r['forward_gflops_per_image']:.3f}"]
        cells += [_pm(tr["thaw"])] + [_pm(tr[k]) for k in plains]
        cells += [_pm(r["train_ratio"][k], ".2f") + "x" for k in plains]
        cells += [_pm(ev["thaw"])] + [_pm(ev[k]) for k in plains]
        cells += [_pm(r["eval_ratio"][k], ".2f") + "x" for k in plains]
        gf = r["train_gflops_per_second"]
        cells += ["/".join(f"{gf[k]['mean']:.0f}" for k in ["thaw", *plains])]
        cells += [f"{r['eval_gflops_per_second']['thaw']['mean']:.0f}"]
        cells += ["/".join(f"{r['peak_rss_mb'][k]:.0f}" for k in ["thaw", *plains])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_fit(section: Result) -> str:
    """Readable lines for the thaw.api.fit part."""
    rss = section["peak_rss_mb"]
    return "\n".join(
        [
            f"fit on the embedded sample ({section['eval_images']} train+val images, {section['img_size']} px, "
            f"batch {section['batch']}, efficientnet_lite0), mean ± std over {len(section['runs'])} rounds:",
            f"  peak RSS MiB: linear {_pm(rss['linear'], '.0f')}, full {_pm(rss['full'], '.0f')}, "
            f"last-k {_pm(rss['last-k'], '.0f')} -> linear/full {_pm(section['linear_vs_full_peak_rss'], '.2f')}x",
            f"  linear probe phase (feature cache + 1 head epoch) {_pm(section['linear_probe_seconds'], '.2f')}s vs "
            f"one eval pass {_pm(section['eval_pass_cold_seconds'], '.2f')}s cold / "
            f"{_pm(section['eval_pass_warm_seconds'], '.2f')}s warm -> "
            f"{_pm(section['linear_probe_vs_eval_pass'], '.2f')}x / "
            f"{_pm(section['linear_probe_vs_warm_eval_pass'], '.2f')}x",
            f"  linear fit() wall {_pm(section['linear_fit_wall_seconds'], '.2f')}s vs load+decode+eval pass "
            f"{_pm(section['load_decode_eval_seconds'], '.2f')}s -> "
            f"{_pm(section['linear_fit_wall_vs_load_decode_eval'], '.2f')}x",
            f"  last-k k=2, no augmentation, epoch seconds (train + val, epochs 2-3): frozen-prefix cache "
            f"{_pm(section['last_k_epoch_seconds_cached'], '.2f')} vs uncached "
            f"{_pm(section['last_k_epoch_seconds_uncached'], '.2f')} -> "
            f"{_pm(section['last_k_cached_vs_uncached_epoch'], '.2f')}x (cache built once in "
            f"{_pm(section['last_k_cache_build_seconds'], '.2f')}s; whole 3-epoch phase "
            f"{_pm(section['last_k_phase_cached_vs_uncached'], '.2f')}x)",
            f"  full fine-tuning epoch seconds {_pm(section['full_epoch_seconds'], '.2f')}",
        ]
    )


# --------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument(
        "--models", help="comma-separated timm names (default: efficientnet_lite0,resnet18,vit_tiny_patch16_224)"
    )
    p.add_argument("--sizes", help="comma-separated resolutions in pixels (default: 64,96,224)")
    p.add_argument("--batch", type=int, help="batch size (default: 64)")
    p.add_argument("--steps", type=int, help="optimizer steps per timed block, one epoch (default: 10)")
    p.add_argument("--repeats", type=int, help="timed blocks per path (default: 3)")
    p.add_argument("--warmup", type=int, help="untimed steps per path before the repeats (default: 3)")
    p.add_argument("--workers", default="0,2", help="DataLoader num_workers of the plain path(s)")
    p.add_argument("--thaw-bn", default="auto", help="BatchNorm policy of thaw's path (default: thaw's own choice)")
    p.add_argument("--thaw-amp", default="auto", help="mixed precision of thaw's path: auto (off on CPU), bf16, off")
    p.add_argument("--fit-size", type=int, default=96, help="img_size of the thaw.api.fit part")
    p.add_argument("--skip-fit", action="store_true", help="leave out the thaw.api.fit part")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: resnet18, 64 px, batch 8, 2 steps, 2 repeats, no fit part"
    )
    p.add_argument("--out", default="bench/out/speed.json")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults: dict[str, Any] = {
        "models": "efficientnet_lite0,resnet18,vit_tiny_patch16_224",
        "sizes": "64,96,224",
        "batch": 64,
        "steps": 10,
        "repeats": 3,
        "warmup": 3,
    }
    if args.quick:  # explicit options still win
        defaults.update(models="resnet18", sizes="64", batch=8, steps=2, repeats=2, warmup=1)
        args.skip_fit = True
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: Sequence[str] | None = None) -> Result | None:
    """Run the benchmark (or, with ``--worker``, one measurement in this process)."""
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.spec))), flush=True)
        return None
    models = [m for m in args.models.split(",") if m]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    workers = [int(w) for w in args.workers.split(",") if w]
    out = Path(args.out)

    def save(report: Result) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2), encoding="utf-8")

    report: Result = {
        "command": "python -m bench.speed " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "note": "shared machine: compare ratios measured in the same run, not absolute numbers across runs",
        "configs": [],
    }
    with tempfile.TemporaryDirectory(prefix="thaw-speed-") as tmp:
        data = write_pngs(Path(tmp) / "train", args.steps * args.batch)
        log(f"wrote {args.steps * args.batch} PNGs to {data}")
        for name in models:
            for size in sizes:
                spec = {
                    "model": name,
                    "size": size,
                    "batch": args.batch,
                    "steps": args.steps,
                    "repeats": args.repeats,
                    "warmup": args.warmup,
                    "workers": workers,
                    "bn": args.thaw_bn,
                    "amp": args.thaw_amp,
                    "data": str(data),
                }
                report["configs"].append(run_worker("config", spec))
                save(report)  # after every configuration: a long run interrupted keeps what it measured
        if not args.skip_fit:
            report["fit"] = fit_section(args.fit_size, args.batch, Path(tmp) / "fits", args.repeats)
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    save(report)
    print(format_table(report["configs"]))
    if "fit" in report:
        print(format_fit(report["fit"]))
    log(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
