"""Baseline recipes a user would run instead of thaw, timed under the same wall-clock budget.

Command (appends one JSON line per (method, seed) run)::

    python -m bench.baselines --task fashion100 --seeds 0,1,2 \\
        --methods linear_probe,plain_finetune,fastai_fine_tune,scratch --budget 180 --out bench/out/results.jsonl

Every method takes a task folder (train/, val/, test/ of class folders, see bench/fashion.py), a budget in
seconds (training and validation count; the final test pass does not), an image size (28 px images are
upsampled bilinearly, grayscale replicated to 3 channels) and a seed, and returns a flat dict::

    {method, task, seed, test_acc_best_val, test_acc_last, best_val_acc, epochs, steps, wall_seconds,
     budget_share, train_images_per_second, notes}

The number of classes is the number of class folders under ``train/``. ``flip`` (default True) says whether a
horizontal flip preserves the task's labels; the ``tutorial``, ``scratch`` and ``fastai_fine_tune`` recipes flip only
then (bench/tasks.py sets it per task: not for digits).

Pretrained methods use the built-in offline EfficientNet-Lite0 ImageNet weights through thaw's own loader.
Progress goes to stderr (this is a bench script, not library code).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

MODEL_NAME = "efficientnet_lite0"
NUM_CLASSES = 10  # default of load_pretrained; every recipe passes the task's own class count
#: The sklearn probe's C grid (the protocol, ../shared/BENCHMARKS.md).
PROBE_CS = (0.01, 0.1, 1.0, 10.0)
Result = dict[str, Any]


def log(msg: str) -> None:
    """Print one progress line to stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine_info() -> dict[str, Any]:
    """CPU model, core count, torch version and thread count of this machine."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def task_name(task_dir: Path) -> str:
    """``bench/data/fashion100/seed0`` -> ``fashion100``; any other folder -> its own name."""
    task_dir = Path(task_dir)
    return task_dir.parent.name if task_dir.name.startswith("seed") else task_dir.name


def num_classes_of(task_dir: Path) -> int:
    """Number of class folders under ``task_dir/train``."""
    return sum(1 for p in (Path(task_dir) / "train").iterdir() if p.is_dir())


def load_pretrained(num_classes: int = NUM_CLASSES) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...]]:
    """The offline EfficientNet-Lite0 ImageNet model from thaw's loader, with a fresh ``num_classes`` head.

    Returns:
        ``(model, mean, std)``; mean/std are the normalisation the weights were trained with, as the loader's
        ``data_config`` reports it (the tutorial's "ImageNet normalisation" means exactly that for its model).
    """
    from thaw.models.load import load_model

    lm = load_model(MODEL_NAME, num_classes=num_classes)
    cfg = lm.data_config
    return lm.model, tuple(cfg["mean"]), tuple(cfg["std"])


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy; return a generator for DataLoader shuffling."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


def tutorial_transforms(size: int, mean: tuple[float, ...], std: tuple[float, ...], train: bool) -> transforms.Compose:
    """The PyTorch transfer-learning tutorial's PIL transforms, at ``size`` instead of 224.

    Eval is Resize(size)+CenterCrop(size): for square 28 px inputs that is a plain bilinear upsample.
    """
    norm = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    if train:
        return transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), *norm])
    return transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), *norm])


def folder_loader(
    root: Path,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    train: bool,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> DataLoader[Any]:
    """torchvision ImageFolder (its PIL loader converts grayscale to RGB) with the tutorial transforms.

    ``num_workers=0``: on 2 cores, worker processes compete with torch's compute threads, and decoding
    28 px PNGs costs far less than a training step.
    """
    ds = datasets.ImageFolder(str(root), transform=tutorial_transforms(size, mean, std, train))
    return DataLoader(ds, batch_size=batch_size, shuffle=train, num_workers=0, generator=generator)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader[Any]) -> float:
    """Top-1 accuracy of ``model`` over ``loader`` (eval mode)."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


@torch.inference_mode()
def pooled_features(model: nn.Module, loader: DataLoader[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logit pooled features (timm ``forward_head(pre_logits=True)``) and labels."""
    model.eval()
    feats, labels = [], []
    for x, y in loader:
        f = model.forward_head(model.forward_features(x), pre_logits=True)  # type: ignore[operator]
        feats.append(f.numpy())
        labels.append(y.numpy())
    return np.concatenate(feats), np.concatenate(labels)


def result(method: str, task_dir: Path, seed: int, **values: Any) -> Result:
    """Assemble a result dict with the keys every method reports."""
    out: Result = {"method": method, "task": task_name(task_dir), "seed": seed}
    for key in (
        "test_acc_best_val",
        "test_acc_last",
        "best_val_acc",
        "epochs",
        "wall_seconds",
        "train_images_per_second",
        "notes",
    ):
        out[key] = values.pop(key)
    out["steps"] = values.pop("steps", None)
    budget = values.get("budget_seconds")
    out["budget_share"] = out["wall_seconds"] / budget if budget else None
    out.update(values)
    return out


# --------------------------------------------------------------------------------------------- linear probe
def linear_probe(task_dir: Path, budget: float, size: int = 96, seed: int = 0, flip: bool = True) -> Result:
    """Frozen pooled features + sklearn logistic regression, C picked on validation.

    One feature pass over train/val/test (eval transforms), StandardScaler, then LogisticRegression for each C
    of ``PROBE_CS`` (lbfgs); the best C by validation accuracy is scored on test. ``budget`` is only reported
    against (the probe takes well under a minute); ``flip`` is unused (no augmentation).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    seed_everything(seed)
    task_dir = Path(task_dir)
    t0 = time.perf_counter()
    model, mean, std = load_pretrained(num_classes_of(task_dir))
    loaders = {s: folder_loader(task_dir / s, size, mean, std, train=False, batch_size=64) for s in ("train", "val")}
    xs: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray] = {}
    for split, loader in loaders.items():
        xs[split], ys[split] = pooled_features(model, loader)
    feature_seconds = time.perf_counter() - t0
    log(f"linear_probe: features {xs['train'].shape} in {feature_seconds:.1f}s")

    t1 = time.perf_counter()
    scaler = StandardScaler().fit(xs["train"])
    tr, va = scaler.transform(xs["train"]), scaler.transform(xs["val"])
    best: tuple[float, float, Any] = (-1.0, 0.0, None)
    unconverged = 0
    for c in PROBE_CS:
        with warnings.catch_warnings(record=True) as caught:
            # A capped max_iter is part of a budgeted recipe; count non-convergence instead of failing.
            warnings.simplefilter("always", ConvergenceWarning)
            clf = LogisticRegression(C=c, max_iter=1000).fit(tr, ys["train"])
        unconverged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        acc = float(clf.score(va, ys["val"]))
        log(f"linear_probe: C={c:g} val_acc={acc:.4f}")
        if acc > best[0]:
            best = (acc, c, clf)
    fit_seconds = time.perf_counter() - t1
    wall = time.perf_counter() - t0

    test_loader = folder_loader(task_dir / "test", size, mean, std, train=False, batch_size=64)
    xt, yt = pooled_features(model, test_loader)
    test_acc = float(best[2].score(scaler.transform(xt), yt))
    n_train = len(ys["train"])
    notes = f"C={best[1]:g} chosen on val; StandardScaler; lbfgs max_iter=1000"
    if unconverged:
        notes += f"; {unconverged} fit(s) hit max_iter"
    if wall > budget:
        notes += f"; over budget ({wall:.0f}s > {budget:.0f}s)"
    return result(
        "linear_probe",
        task_dir,
        seed,
        test_acc_best_val=test_acc,
        test_acc_last=test_acc,
        best_val_acc=best[0],
        epochs=None,
        wall_seconds=wall,
        train_images_per_second=n_train / feature_seconds,  # feature-extraction throughput (eval, train split)
        notes=notes,
        feature_seconds=feature_seconds,
        fit_seconds=fit_seconds,
        best_C=best[1],
        image_size=size,
        budget_seconds=budget,
    )


# ------------------------------------------------------------------------- plain_finetune (old, documented)
def tutorial_loop(
    method: str,
    model: nn.Module,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    task_dir: Path,
    budget: float,
    size: int,
    seed: int,
    notes: str,
    t0: float,
) -> Result:
    """The loop behind ``plain_finetune`` (figures of 2026-11-28/29 in docs/benchmarks.md): kept as it ran.

    All layers train; SGD lr 0.01 momentum 0.9 (no weight decay), batch 32, cross-entropy, ImageFolder + PIL
    ``RandomResizedCrop`` + flip every epoch, default memory format. After epoch 1 the epochs that fit the budget
    are estimated as ``floor(budget / epoch-1 time)`` and the learning rate follows a cosine over them. Validation
    after every epoch; the best-validation weights and the last weights are both scored on test. The protocol's
    loop is ``tutorial`` below.
    """
    task_dir = Path(task_dir)
    gen = seed_everything(seed)
    train_loader = folder_loader(task_dir / "train", size, mean, std, train=True, batch_size=32, generator=gen)
    val_loader = folder_loader(task_dir / "val", size, mean, std, train=False, batch_size=64)
    base_lr = 0.01
    optimizer = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()

    total_epochs: int | None = None
    best_val, best_state, best_epoch = -1.0, copy.deepcopy(model.state_dict()), 0
    train_seconds = 0.0
    train_images = steps = 0
    epoch = 0
    stopped_early = False
    while total_epochs is None or epoch < total_epochs:
        if total_epochs is not None:
            # The epoch count is only known after epoch 1, so the closed-form cosine (what CosineAnnealingLR
            # computes) is applied per epoch rather than through a scheduler built up front.
            lr = 0.5 * base_lr * (1 + math.cos(math.pi * epoch / total_epochs))
            for group in optimizer.param_groups:
                group["lr"] = lr
        te = time.perf_counter()
        model.train()
        loss_sum = 0.0
        for x, y in train_loader:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().item() * len(y)
            train_images += len(y)
            steps += 1
        train_seconds += time.perf_counter() - te
        val_acc = evaluate(model, val_loader)
        epoch += 1
        epoch_seconds = time.perf_counter() - te
        if val_acc > best_val:
            best_val, best_state, best_epoch = val_acc, copy.deepcopy(model.state_dict()), epoch
        elapsed = time.perf_counter() - t0
        if total_epochs is None:
            total_epochs = max(1, int((budget - (te - t0)) // epoch_seconds))
            log(f"{method}: epoch 1 took {epoch_seconds:.1f}s -> {total_epochs} epochs fit in {budget:.0f}s")
        n_train = len(train_loader.dataset)  # type: ignore[arg-type]
        log(
            f"{method}: epoch {epoch}/{total_epochs} lr={optimizer.param_groups[0]['lr']:.4g} "
            f"train_loss={loss_sum / n_train:.4f} val_acc={val_acc:.4f} elapsed={elapsed:.1f}s"
        )
        if epoch < total_epochs and elapsed + epoch_seconds > budget * 1.05:
            stopped_early = True
            break
    wall = time.perf_counter() - t0

    test_loader = folder_loader(task_dir / "test", size, mean, std, train=False, batch_size=64)
    return _loop_result(
        method,
        task_dir,
        seed,
        model,
        lambda: evaluate(model, test_loader),
        best_state,
        (best_val, best_epoch, epoch, total_epochs, stopped_early),
        notes,
        steps=steps,
        wall_seconds=wall,
        train_images_per_second=train_images / train_seconds,
        image_size=size,
        budget_seconds=budget,
    )


def plain_finetune(task_dir: Path, budget: float, size: int = 96, seed: int = 0, flip: bool = True) -> Result:
    """The first tutorial recipe (RandomResizedCrop, default memory format): kept for the documented figures.

    ``flip`` is ignored (this recipe always flipped); the protocol's loop is ``tutorial``.
    """
    t0 = time.perf_counter()
    seed_everything(seed)  # the new head's init depends on it
    model, mean, std = load_pretrained(num_classes_of(task_dir))
    notes = (
        "torchvision tutorial loop: ImageFolder+PIL transforms, SGD 0.01 mom 0.9, cosine, bs 32, no wd; "
        f"the weights' own normalisation mean={mean} std={std}"
    )
    return tutorial_loop("plain_finetune", model, mean, std, task_dir, budget, size, seed, notes, t0)


# ------------------------------------------------------------------------------ tutorial (the protocol's)
class DecodedFolder(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """An ImageFolder decoded once: PIL ``convert("RGB")``, Resize(size) + CenterCrop(size), kept as uint8 CHW.

    Training items get pad-and-crop (``RandomCrop(size, padding=size // 8)``, zero fill) and, when ``flip``,
    ``RandomHorizontalFlip``; then float and the weights' normalisation. What a user who read the tutorial writes
    once decoding shows up in the profile.
    """

    def __init__(
        self,
        root: Path,
        size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        train: bool,
        flip: bool,
    ) -> None:
        folder = datasets.ImageFolder(str(root))
        geometry = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])
        self.images = torch.stack([geometry(folder.loader(path)) for path, _ in folder.samples])
        self.labels = [label for _, label in folder.samples]
        aug: list[Any] = []
        if train:
            aug.append(transforms.RandomCrop(size, padding=size // 8))
            if flip:
                aug.append(transforms.RandomHorizontalFlip())
        self.augment = transforms.Compose(aug) if aug else None
        self.normalize = transforms.Normalize(mean, std)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        if self.augment is not None:
            x = self.augment(x)
        return self.normalize(x.float().div_(255)), self.labels[i]


def protocol_loop(
    method: str,
    model: nn.Module,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    task_dir: Path,
    budget: float,
    size: int,
    seed: int,
    flip: bool,
    notes: str,
    t0: float,
) -> Result:
    """The tutorial loop exactly as ../shared/BENCHMARKS.md defines it, under a wall-clock budget from ``t0``.

    channels_last model and batches; SGD lr 0.01 momentum 0.9, no weight decay; batch 32; BatchNorm in train mode
    (``model.train()``); pad-and-crop augmentation (+ horizontal flip when ``flip``); evaluation every epoch. Epoch 1
    is timed (train + validation) and the epochs that fit the rest of the budget give the cosine's length (applied
    per epoch, annealing towards zero at the last one). The budget counts model loading, decoding, training and
    validation; the final test passes (best-validation weights and last weights) do not count.
    """
    task_dir = Path(task_dir)
    gen = seed_everything(seed)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    train_ds = DecodedFolder(task_dir / "train", size, mean, std, train=True, flip=flip)
    val_ds = DecodedFolder(task_dir / "val", size, mean, std, train=False, flip=False)
    train_loader = DataLoader(train_ds, batch_size=32, shuffle=True, num_workers=0, generator=gen)
    val_loader = DataLoader(val_ds, batch_size=64, shuffle=False, num_workers=0)
    base_lr = 0.01
    optimizer = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=0.9, weight_decay=0.0)
    criterion = nn.CrossEntropyLoss()

    total_epochs: int | None = None
    best_val, best_state, best_epoch = -1.0, copy.deepcopy(model.state_dict()), 0
    train_seconds = 0.0
    train_images = steps = epoch = 0
    stopped_early = False
    while total_epochs is None or epoch < total_epochs:
        if total_epochs is not None:
            lr = 0.5 * base_lr * (1 + math.cos(math.pi * epoch / total_epochs))
            for group in optimizer.param_groups:
                group["lr"] = lr
        te = time.perf_counter()
        model.train()
        loss_sum = 0.0
        for x, y in train_loader:
            x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().item() * len(y)
            train_images += len(y)
            steps += 1
        train_seconds += time.perf_counter() - te
        val_acc = evaluate_cl(model, val_loader)
        epoch += 1
        epoch_seconds = time.perf_counter() - te
        if val_acc > best_val:
            best_val, best_state, best_epoch = val_acc, copy.deepcopy(model.state_dict()), epoch
        elapsed = time.perf_counter() - t0
        if total_epochs is None:
            total_epochs = max(1, int((budget - (te - t0)) // epoch_seconds))
            log(f"{method}: epoch 1 took {epoch_seconds:.1f}s -> {total_epochs} epochs fit in {budget:.0f}s")
        log(
            f"{method}: epoch {epoch}/{total_epochs} lr={optimizer.param_groups[0]['lr']:.4g} "
            f"train_loss={loss_sum / len(train_ds):.4f} val_acc={val_acc:.4f} elapsed={elapsed:.1f}s"
        )
        if epoch < total_epochs and elapsed + epoch_seconds > budget * 1.05:
            stopped_early = True
            break
    wall = time.perf_counter() - t0

    test_loader = DataLoader(
        DecodedFolder(task_dir / "test", size, mean, std, train=False, flip=False), batch_size=64, num_workers=0
    )
    return _loop_result(
        method,
        task_dir,
        seed,
        model,
        lambda: evaluate_cl(model, test_loader),
        best_state,
        (best_val, best_epoch, epoch, total_epochs, stopped_early),
        notes,
        steps=steps,
        wall_seconds=wall,
        train_images_per_second=train_images / train_seconds,
        planned_epochs=total_epochs,
        flip=flip,
        image_size=size,
        budget_seconds=budget,
    )


@torch.inference_mode()
def evaluate_cl(model: nn.Module, loader: DataLoader[Any]) -> float:
    """Top-1 accuracy with channels_last batches (eval mode)."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x.contiguous(memory_format=torch.channels_last)).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def tutorial(task_dir: Path, budget: float, size: int = 96, seed: int = 0, flip: bool = True) -> Result:
    """The protocol's tutorial loop on the pretrained Lite0 (thaw's offline weights) with a fresh head."""
    t0 = time.perf_counter()
    seed_everything(seed)  # the new head's init depends on it
    model, mean, std = load_pretrained(num_classes_of(task_dir))
    notes = (
        "protocol tutorial loop: decoded once, pad-and-crop"
        + (" + hflip" if flip else " (no flip)")
        + ", channels_last, SGD 0.01 mom 0.9, no wd, cosine over the epochs that fit, bs 32, BN train mode; "
        f"normalisation mean={mean} std={std}"
    )
    return protocol_loop("tutorial", model, mean, std, task_dir, budget, size, seed, flip, notes, t0)


def scratch(task_dir: Path, budget: float, size: int = 96, seed: int = 0, flip: bool = True) -> Result:
    """The protocol's tutorial loop from timm's random initialisation (thaw's loader, ``random_init``)."""
    from thaw.models.load import load_model

    t0 = time.perf_counter()
    seed_everything(seed)
    lm = load_model(MODEL_NAME, num_classes=num_classes_of(task_dir), random_init=True)
    mean, std = tuple(lm.data_config["mean"]), tuple(lm.data_config["std"])
    notes = f"random init (timm default), the protocol tutorial loop; normalisation mean={mean} std={std}"
    return protocol_loop("scratch", lm.model, mean, std, task_dir, budget, size, seed, flip, notes, t0)


# ----------------------------------------------------------------------------------------------- fastai
def _train_step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int = 2) -> float:
    """Seconds per forward+backward+SGD step of ``model`` (after one warm-up step) on one batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)
    model.train()
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward untyped here
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return float(np.mean(times))


def fastai_fine_tune(task_dir: Path, budget: float, size: int = 96, seed: int = 0, flip: bool = True) -> Result:
    """fastai's ``vision_learner`` + ``fine_tune(epochs, base_lr=2e-3)`` recipe, run with fastai itself.

    The learner is fastai's own for the timm arch ``efficientnet_lite0`` (fastai's pooled head, its two-group
    splitter, Adam, wd 0.01, ``train_bn``), built with ``pretrained=False`` because fastai would download the
    weights; the body then receives the offline ImageNet weights from thaw's loader and the ImageNet
    normalisation is added as fastai would. Data: ``ImageDataLoaders.from_folder`` with ``Resize(size)`` and
    ``aug_transforms(do_flip=flip)`` (fastai's default flips; a user turns that off for digits), fastai's default
    batch size 64.

    ``fine_tune`` is run as its two documented steps (freeze + one-cycle epoch at slice(2e-3), pct_start 0.99;
    unfreeze + one-cycle over ``epochs`` at slice(1e-5, 1e-3), pct_start 0.3, div 5), because the number of
    unfrozen epochs that fit the budget is only known after the frozen epoch: it is estimated from that epoch's
    time scaled by a measured unfrozen/frozen step-time ratio.
    """
    with warnings.catch_warnings():
        # fastai decorates a few layers with torch.jit.script at import, which torch 2.10+ flags as deprecated.
        warnings.simplefilter("ignore", FutureWarning)
        import fastai
        from fastai.callback.core import Callback, CancelFitException
        from fastai.data.transforms import get_image_files, parent_label
        from fastai.vision.all import ImageDataLoaders, Normalize, Resize, accuracy, aug_transforms, vision_learner

    task_dir = Path(task_dir)
    t0 = time.perf_counter()
    seed_everything(seed)
    n_classes = num_classes_of(task_dir)
    pretrained, mean, std = load_pretrained(n_classes)
    # fastai drops the last partial training batch; tiny smoke-test tasks have fewer than 64 images.
    batch_size = min(64, len(get_image_files(task_dir / "train")))
    dls = ImageDataLoaders.from_folder(
        task_dir,
        train="train",
        valid="val",
        item_tfms=Resize(size),
        batch_tfms=[*aug_transforms(do_flip=flip), Normalize.from_stats(list(mean), list(std))],
        bs=batch_size,
        num_workers=0,
        seed=seed,
    )
    learn = vision_learner(dls, MODEL_NAME, pretrained=False, normalize=False, n_out=n_classes, metrics=accuracy)
    body = learn.model[0].model
    state = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("classifier.")}
    missing, unexpected = body.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights do not fit fastai's body: missing {missing}, unexpected {unexpected}")

    class Timer(Callback):  # type: ignore[misc]
        """Records train/valid seconds, keeps the best-validation weights, enforces the budget."""

        order = 60  # after Recorder (50), so this epoch's metrics are in recorder.values

        def __init__(self) -> None:
            self.train_seconds = 0.0
            self.train_images = 0
            self.steps = 0
            self.last_train = self.last_valid = 0.0
            self.best_val, self.best_state, self.epochs = -1.0, None, 0
            self.stopped_early = False
            self.deadline = math.inf

        def before_train(self) -> None:
            self._t = time.perf_counter()

        def after_batch(self) -> None:
            if self.training:
                self.train_images += len(self.yb[0])
                self.steps += 1

        def after_train(self) -> None:
            self.last_train = time.perf_counter() - self._t
            self.train_seconds += self.last_train
            self._v = time.perf_counter()

        def after_validate(self) -> None:
            self.last_valid = time.perf_counter() - self._v

        def after_epoch(self) -> None:
            self.epochs += 1
            train_loss, valid_loss, acc = self.recorder.values[-1]
            if acc > self.best_val:
                self.best_val, self.best_state = acc, copy.deepcopy(self.learn.model.state_dict())
            elapsed = time.perf_counter() - t0
            log(
                f"fastai_fine_tune: epoch {self.epochs} train_loss={train_loss:.4f} "
                f"val_acc={acc:.4f} elapsed={elapsed:.1f}s"
            )
            if elapsed > self.deadline and self.epoch + 1 < self.n_epoch:
                self.stopped_early = True
                raise CancelFitException()

    timer = Timer()
    learn.add_cb(timer)
    base_lr = 2e-3
    with learn.no_bar(), learn.no_logging():
        # fine_tune, step 1: frozen body, one one-cycle epoch.
        learn.freeze()
        learn.fit_one_cycle(1, slice(base_lr), pct_start=0.99)
        # Estimate an unfrozen epoch: frozen train time x (unfrozen / frozen step time) + validation time.
        xb, yb = (t.as_subclass(torch.Tensor) for t in learn.dls.one_batch())  # drop fastai's tensor types
        probe = copy.deepcopy(learn.model)
        frozen_step = _train_step_seconds(probe, xb, yb)
        for p in probe.parameters():
            p.requires_grad_(True)
        ratio = _train_step_seconds(probe, xb, yb) / frozen_step
        del probe
        epoch_estimate = timer.last_train * ratio + timer.last_valid
        remaining = budget - (time.perf_counter() - t0)
        epochs = max(1, int(remaining // epoch_estimate))
        log(f"fastai_fine_tune: unfrozen epoch ~{epoch_estimate:.1f}s (ratio {ratio:.2f}) -> {epochs} epochs")
        timer.deadline = budget * 1.05 - epoch_estimate
        # fine_tune, step 2: halve base_lr, unfreeze, discriminative one-cycle.
        base_lr /= 2
        learn.unfreeze()
        learn.fit_one_cycle(epochs, slice(base_lr / 100, base_lr), pct_start=0.3, div=5.0)
    wall = time.perf_counter() - t0
    learn.remove_cb(timer)  # get_preds fires epoch events too

    test_items = get_image_files(task_dir / "test")
    test_dl = learn.dls.test_dl(test_items, with_labels=True)

    def test_accuracy() -> float:
        with learn.no_bar(), learn.no_logging():
            preds, targs = learn.get_preds(dl=test_dl)
        return float((preds.argmax(1) == targs).float().mean())

    assert all(parent_label(p) in learn.dls.vocab for p in test_items[:5])
    test_last = test_accuracy()
    learn.model.load_state_dict(timer.best_state)
    test_best = test_accuracy()

    notes = (
        f"fastai {fastai.__version__} itself (vision_learner + fine_tune steps, base_lr 2e-3, bs {batch_size}, "
        f"aug_transforms do_flip={flip}); offline Lite0 weights via thaw loader; {epochs} unfrozen epochs planned"
    )
    if timer.stopped_early:
        notes += "; stopped at the budget (one-cycle not finished)"
    return result(
        "fastai_fine_tune",
        task_dir,
        seed,
        test_acc_best_val=test_best,
        test_acc_last=test_last,
        best_val_acc=float(timer.best_val),
        epochs=timer.epochs,
        steps=timer.steps,
        wall_seconds=wall,
        train_images_per_second=timer.train_images / timer.train_seconds,
        notes=notes,
        flip=flip,
        image_size=size,
        budget_seconds=budget,
    )


def thaw_fit(
    task_dir: Path, strategy: str, budget: float, size: int, seed: int, out: Path, progress: Callable[[str], None] = log
) -> Any:
    """``thaw.fit`` on a task folder as every thaw benchmark runs it (40-epoch cap, the budget sizes the schedule)."""
    from thaw.api import fit

    return fit(
        task_dir / "train",
        val=str(task_dir / "val"),
        test=str(task_dir / "test"),
        strategy=strategy,
        img_size=size,
        seed=seed,
        time_budget=budget,
        epochs=40,
        out=str(out),
        overwrite=True,
        progress=progress,
    )


def thaw_strategy(strategy: str) -> Callable[..., Result]:
    """thaw itself (``thaw.fit``) with one strategy, under the same wall-clock budget as the baselines.

    thaw's budget counts from the start of ``fit`` (decoding and model loading included), so it is the stricter
    one. ``epochs`` is only a cap: the cosine schedule is shortened to what the measured epoch time fits.
    """

    def run(task_dir: Path, budget: float, size: int = 96, seed: int = 0, flip: bool = True) -> Result:
        start = time.perf_counter()
        out = Path("bench/out/runs") / f"{task_dir.parent.name}-{task_dir.name}-{strategy}"
        res = thaw_fit(task_dir, strategy, budget, size, seed, out)
        s = res.summary
        phases = "; ".join(f"{p['name']} {p['epochs']}ep ({p['stopped']})" for p in s["phases"])
        return {
            "method": f"thaw_{strategy}",
            "task": task_dir.parent.name,
            "seed": seed,
            "test_acc_best_val": res.test_accuracy,
            "test_acc_last": None,
            "best_val_acc": res.best_val_accuracy,
            "epochs": s["epochs"],
            "steps": s.get("steps"),
            "wall_seconds": time.perf_counter() - start,
            "budget_share": (time.perf_counter() - start) / budget,
            "train_images_per_second": s["train_images_per_second"],
            "notes": f"thaw {strategy}: {phases}; run dir {out}",
        }

    return run


METHODS: dict[str, Callable[..., Result]] = {
    "linear_probe": linear_probe,
    "tutorial": tutorial,
    "plain_finetune": plain_finetune,
    "scratch": scratch,
    "fastai_fine_tune": fastai_fine_tune,
    **{f"thaw_{name}": thaw_strategy(name) for name in ("auto", "full", "lp-ft", "last-k", "linear", "gradual")},
}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    from bench.tasks import TASKS, materialize

    parser = argparse.ArgumentParser(description="Run baseline recipes on one benchmark task (bench/tasks.py).")
    parser.add_argument("--task", choices=sorted(TASKS), default="fashion100")
    parser.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated from {', '.join(METHODS)}")
    parser.add_argument("--budget", type=float, default=180.0, help="seconds of training+validation per run")
    parser.add_argument("--size", type=int, default=None, help="input resolution in pixels (default: the task's)")
    parser.add_argument("--root", type=Path, default=Path("bench/data"), help="where task folders are written")
    parser.add_argument("--out", type=Path, default=Path("bench/out/results.jsonl"))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}: choose from {', '.join(METHODS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.baselines " + " ".join(sys.argv[1:] if argv is None else argv)
    task = TASKS[args.task]
    size = args.size or task.img_size
    for seed in [int(s) for s in args.seeds.split(",")]:
        task_dir = materialize(args.task, seed, args.root)
        for method in methods:
            log(f"{method} on {args.task} seed {seed}, budget {args.budget:.0f}s, {size}px")
            res = METHODS[method](task_dir, args.budget, size=size, seed=seed, flip=task.flip)
            res.update(machine=machine_info(), command=command, time=time.strftime("%Y-%m-%dT%H:%M:%S"))
            with args.out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(res) + "\n")
            log(
                f"{method} seed {seed}: test(best val)={res['test_acc_best_val']:.4f} "
                f"test(last)={_fmt(res['test_acc_last'])} epochs={res['epochs']} wall={res['wall_seconds']:.0f}s"
            )


def _loop_result(
    method: str,
    task_dir: Path,
    seed: int,
    model: nn.Module,
    test_accuracy: Callable[[], float],
    best_state: dict[str, torch.Tensor],
    progress: tuple[float, int, int, int, bool],
    notes: str,
    **extra: Any,
) -> dict[str, Any]:
    """The result row of an epoch loop: test accuracy of the last and of the best-validation weights.

    ``progress`` is (best val accuracy, best epoch, epochs run, planned epochs, stopped at the budget).
    """
    best_val, best_epoch, epoch, total_epochs, stopped_early = progress
    test_last = test_accuracy()
    model.load_state_dict(best_state)
    test_best = test_accuracy()
    notes += f"; best epoch {best_epoch}/{epoch}"
    if stopped_early:
        notes += f"; stopped at the budget before the planned {total_epochs} epochs (cosine not finished)"
    return result(
        method,
        task_dir,
        seed,
        test_acc_best_val=test_best,
        test_acc_last=test_last,
        best_val_acc=best_val,
        epochs=epoch,
        notes=notes,
        best_epoch=best_epoch,
        **extra,
    )


if __name__ == "__main__":
    main()
