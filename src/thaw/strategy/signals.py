"""Measurements that decide what to thaw: LogME, probe accuracy, per-stage features, gradient norms, weight drift.

All of them look at a model without training it:

* ``logme`` scores how well frozen features explain the labels (You et al. 2021, "LogME: Practical Assessment of
  Pre-trained Models for Transfer Learning"): the log marginal likelihood (evidence) of a Bayesian linear model.
* ``probe_score`` is the cross-validated accuracy of a k-NN and of a logistic-regression probe on those features.
* ``stage_features`` collects pooled features at every layer-group boundary in one forward pass, so the measures
  above can be compared stage by stage (how far from the pretraining distribution the data is).
* ``relative_grad_norms`` is Auto-RGN's signal (Lee et al. 2023, "Surgical Fine-Tuning Improves Adaptation to
  Distribution Shifts"): ||grad|| / ||weights|| per layer group.
* ``weight_drift`` is how far fine-tuning moved each group from its pretrained weights.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import eigh
from threadpoolctl import threadpool_limits
from torch import nn

from thaw.data.transforms import normalize
from thaw.models.groups import LayerGroup, module_groups
from thaw.train.loop import relative_grad_norm, weight_drift

__all__ = [
    "logme",
    "probe_score",
    "stage_features",
    "hook_modules",
    "relative_grad_norms",
    "weight_drift",
]

logger = logging.getLogger(__name__)

#: Relative change of alpha and beta below which the LogME fixed-point iteration has converged.
LOGME_TOL = 1e-10
#: Iteration cap of the LogME fixed point (the official code stops at 11, short of convergence when N < D).
LOGME_MAX_ITER = 1000


# ------------------------------------------------------------------------------------------------------------ LogME
def _spectrum(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero eigenvalues ``sigma`` of F^T F and the targets' coordinates ``z`` on the matching left singular vectors.

    Uses the eigendecomposition of the smaller Gram matrix (N x N or D x D), so N=1000, D=1280 costs one
    1000 x 1000 symmetric eigenproblem. LAPACK's ``evr`` driver is used because it is several times faster than
    numpy's default (``evd``) for the eigenvectors on few cores.

    Returns:
        ``sigma`` (k,) and ``z`` (k, C) with ``z = U_k^T Y``, k = numerical rank of F.
    """
    n, d = features.shape
    gram = features @ features.T if n <= d else features.T @ features
    sigma, vectors = eigh(gram, driver="evr")
    keep = sigma > sigma.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps
    sigma, vectors = sigma[keep], vectors[:, keep]
    if n <= d:
        return sigma, vectors.T @ targets
    # u_i = F v_i / s_i, so u_i^T y = v_i^T F^T y / s_i
    return sigma, (vectors.T @ (features.T @ targets)) / np.sqrt(sigma)[:, None]


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of features for classification labels: the evidence per image, averaged over one-vs-rest targets.

    For each class c, the target is y = 1[label == c] and the model y = F w + noise with prior w ~ N(0, I/alpha)
    and noise precision beta. Alpha and beta maximise the evidence (MacKay's fixed point, iterated to
    convergence), and the score is the maximised log evidence divided by N, averaged over classes, as in the
    paper. Higher is better; compare scores on the same images only.

    Unlike the official fixed-point code this keeps the (D - k) * log(alpha) term of log|alpha I + beta F^T F| (k =
    rank of F) when N < D, which otherwise inflates scores as D grows, and it iterates to convergence instead of
    stopping after 11 steps. The result is invariant to rescaling the features.

    Args:
        features: (N, D) features.
        labels: (N,) integer class labels.

    Returns:
        The LogME score (float).

    Raises:
        ValueError: shapes that do not match, or fewer than two images.

    Example:
        >>> score = logme(stage_features(model, groups, images, mean, std)["pre_logits"], labels)
    """
    f = np.asarray(features, dtype=np.float64)
    y_int = np.asarray(labels).reshape(-1)
    if f.ndim != 2 or f.shape[0] != y_int.shape[0]:
        raise ValueError(f"logme needs features (N, D) and labels (N,), got {f.shape} and {y_int.shape}")
    n = f.shape[0]
    if n < 2:
        raise ValueError("logme needs at least two images")
    classes = np.unique(y_int)
    targets = (y_int[:, None] == classes[None, :]).astype(np.float64)  # (N, C) one-vs-rest
    # One BLAS thread (as in probe_score): faster for these sizes, and much faster on a busy machine.
    with threadpool_limits(limits=1, user_api="blas"):
        sigma, z = _spectrum(f, targets)
    if sigma.size == 0:  # all-zero features: the evidence of pure noise, alpha -> inf
        sigma, z = np.zeros(1), np.zeros((1, targets.shape[1]))
    sig = sigma[:, None]
    z2 = z**2  # (k, C)
    rest = np.maximum((targets**2).sum(axis=0) - z2.sum(axis=0), 0.0)  # |y|^2 outside the column space of F

    # Iterate on lam = alpha / beta and beta: m = V diag(s / (lam + sigma)) z does not depend on beta, and every
    # quantity stays finite when the optimum is at alpha -> inf (features that carry no information about y).
    top = float(sigma.max(initial=0.0)) or 1.0
    lam_lo, lam_hi = top * 1e-15, top * 1e15  # beyond these the evidence no longer changes in float64

    def terms(lam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        denom = lam[None, :] + sig
        gamma = (sig / denom).sum(axis=0)
        m2 = (sig * z2 / denom**2).sum(axis=0)  # |m|^2
        res2 = ((lam[None, :] / denom) ** 2 * z2).sum(axis=0) + rest  # |F m - y|^2
        return gamma, m2, res2

    tiny = np.finfo(np.float64).tiny
    lam = np.ones(targets.shape[1])
    beta = np.ones(targets.shape[1])
    change = math.inf
    for _ in range(LOGME_MAX_ITER):
        gamma, m2, res2 = terms(lam)
        new_beta = np.maximum(n - gamma, tiny) / np.maximum(res2, tiny)
        new_alpha = gamma / np.maximum(m2, tiny)
        new_lam = np.clip(new_alpha / new_beta, lam_lo, lam_hi)
        change = max(float(np.max(np.abs(new_lam - lam) / lam)), float(np.max(np.abs(new_beta - beta) / beta)))
        lam, beta = new_lam, new_beta
        if change < LOGME_TOL:
            break
    else:
        logger.debug("LogME fixed point stopped after %d iterations (relative change %.2e)", LOGME_MAX_ITER, change)
    gamma, m2, res2 = terms(lam)
    alpha = lam * beta
    # (D/2) log(alpha) - (1/2) log|A| with log|A| = sum_k log(alpha + beta sigma_k) + (D - k) log(alpha)
    # reduces to -(1/2) sum_k log(1 + sigma_k / lam): exact, and finite as alpha -> inf.
    evidence = (
        n / 2.0 * np.log(beta)
        - n / 2.0 * np.log(2 * np.pi)
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - 0.5 * np.log1p(sig / lam[None, :]).sum(axis=0)
    )
    return float(np.mean(evidence / n))


# ------------------------------------------------------------------------------------------------------ probe score
def probe_score(
    features: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0, linear: bool = True
) -> dict[str, Any]:
    """Cross-validated accuracy of a k-NN (k=5, cosine) and a logistic-regression probe on frozen features.

    Stratified k-fold; the number of folds drops to the size of the smallest class when a class has fewer images
    (at least 2 folds). With a class of a single image nothing can be cross-validated and both accuracies are NaN.

    Args:
        features: (N, D) features.
        labels: (N,) integer class labels.
        folds: Number of folds.
        seed: Shuffling seed of the folds.
        linear: Also fit the logistic-regression probe (the slower of the two); False leaves it NaN.

    Returns:
        ``{"knn_accuracy", "linear_accuracy", "folds"}`` (accuracies as fractions in 0..1).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    _, counts = np.unique(y, return_counts=True)
    n_folds = min(folds, int(counts.min())) if counts.size else 0
    if n_folds < 2 or len(counts) < 2:
        logger.info("probe_score: a class has fewer than 2 images (or only one class): no cross-validation")
        return {"knn_accuracy": math.nan, "linear_accuracy": math.nan, "folds": 0}
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    smallest_train = len(y) - math.ceil(len(y) / n_folds)
    knn = KNeighborsClassifier(n_neighbors=min(5, smallest_train), metric="cosine", algorithm="brute")
    linear_probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    # One BLAS thread: the probes' matrix products are small, and OpenBLAS's thread hand-offs on every lbfgs step
    # made the logistic regression 30x slower on a busy 2-core machine (5 s instead of 0.16 s per fit).
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        # A probe that has not fully converged after max_iter is still a fair (slightly pessimistic) measure.
        warnings.simplefilter("ignore", ConvergenceWarning)
        knn_acc = float(np.mean(cross_val_score(knn, x, y, cv=cv, error_score="raise")))
        linear_acc = (
            float(np.mean(cross_val_score(linear_probe, x, y, cv=cv, error_score="raise"))) if linear else math.nan
        )
    return {"knn_accuracy": knn_acc, "linear_accuracy": linear_acc, "folds": n_folds}


# -------------------------------------------------------------------------------------------------- stage features
def _subtree_groups(model: nn.Module, owners: Mapping[str, int]) -> dict[str, set[int]]:
    """Module name -> set of group indices of the parameters/buffers in its subtree."""
    out: dict[str, set[int]] = {name: set() for name, _ in model.named_modules()}
    for owner, group in owners.items():
        parts = owner.split(".") if owner else []
        out[""].add(group)
        for depth in range(1, len(parts) + 1):
            out[".".join(parts[:depth])].add(group)
    return out


def hook_modules(model: nn.Module, groups: Sequence[LayerGroup]) -> dict[str, int]:
    """The coarsest modules that belong to exactly one layer group: where a group's output can be observed.

    A module is taken when every parameter under it belongs to one group and its parent mixes groups (e.g.
    ``blocks.3`` of an EfficientNet, ``layer2`` of a ResNet, ``conv_stem`` and ``bn1`` for a stem). A module
    without parameters (an activation, a pooling) whose parent mixes groups joins the group of the sibling
    registered before it, so a ResNet stem ends after its ``act1`` and ``maxpool``.

    Args:
        model: the model.
        groups: ``layer_groups(model)``.

    Returns:
        Module name -> group index, in registration order.
    """
    subtree = _subtree_groups(model, module_groups(model, groups))
    chosen: dict[str, int] = {}

    def visit(prefix: str, module: nn.Module) -> None:
        previous: int | None = None
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            owned = subtree.get(name, set())
            if len(owned) == 1:
                previous = next(iter(owned))
                chosen[name] = previous
            elif not owned:
                if previous is not None:
                    chosen[name] = previous
            else:
                visit(name, child)
                previous = max(owned)

    if len(subtree[""]) == 1:
        chosen[""] = next(iter(subtree[""]))
    else:
        visit("", model)
    return chosen


def _pool(output: torch.Tensor) -> torch.Tensor:
    """Global average pool: (B, C, H, W) over H, W; (B, T, C) token outputs over T; (B, C) as is."""
    if output.dim() == 4:
        return output.mean(dim=(2, 3))
    if output.dim() == 3:
        return output.mean(dim=1)
    return output.reshape(output.shape[0], -1)


def _forward_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    forward_features = getattr(model, "forward_features", None)
    out = forward_features(x) if callable(forward_features) else model(x)
    assert isinstance(out, torch.Tensor)
    return out


def _pre_logits(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    forward_head = getattr(model, "forward_head", None)
    if callable(forward_head):
        out = forward_head(features, pre_logits=True)
        assert isinstance(out, torch.Tensor)
        return _pool(out)
    return _pool(features)


def stage_features(
    model: nn.Module,
    groups: Sequence[LayerGroup],
    images_uint8: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Pooled features at every layer-group boundary and before the classifier, in one forward pass.

    Forward hooks on ``hook_modules`` record the output of the last module each non-head group runs inside
    ``forward_features``; it is globally average-pooled (mean over H x W for NCHW maps, over tokens for
    (B, T, C) outputs). ``pre_logits`` is ``model.forward_head(model.forward_features(x), pre_logits=True)``. The
    model runs in eval mode under ``torch.inference_mode``; its training mode is restored afterwards. Models whose
    stages output NHWC maps (e.g. Swin) would be pooled over the wrong axes; timm CNNs and ViTs are NCHW / BTC.

    Args:
        model: a timm model (or any module; without ``forward_features`` the full forward is used).
        groups: ``layer_groups(model)``; the last one (the head) has no boundary feature.
        images_uint8: (N, 3, S, S) uint8 images.
        mean: normalisation mean (0..1 scale), from the model's data config.
        std: normalisation std.
        batch_size: images per forward batch.

    Returns:
        Group name -> float32 (N, C_g) features for every non-head group the forward pass ran, plus "pre_logits".
    """
    hooks = hook_modules(model, groups)
    head = len(groups) - 1
    modules = dict(model.named_modules())
    latest: dict[int, torch.Tensor] = {}
    recording = [False]

    def make_hook(group: int) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not recording[0]:
                return
            if isinstance(output, (tuple, list)):
                output = next((o for o in output if isinstance(o, torch.Tensor)), None)
            if isinstance(output, torch.Tensor) and output.dim() >= 2:
                latest[group] = output

        return hook

    handles = [modules[name].register_forward_hook(make_hook(g)) for name, g in hooks.items() if g != head and name]
    chunks: dict[str, list[np.ndarray]] = {}
    names = [g.name for g in groups]
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, int(images_uint8.shape[0]), batch_size):
                batch = images_uint8[start : start + batch_size].to(device)
                x = normalize(batch, mean, std, channels_last=True)
                latest.clear()
                recording[0] = True
                feats = _forward_features(model, x)
                recording[0] = False
                pooled = {names[g]: _pool(t) for g, t in sorted(latest.items())}
                pooled["pre_logits"] = _pre_logits(model, feats)
                for key, value in pooled.items():
                    chunks.setdefault(key, []).append(value.float().cpu().numpy())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    order = [n for n in names if n in chunks] + ["pre_logits"]
    return {key: np.concatenate(chunks[key]) for key in order if key in chunks}


# ---------------------------------------------------------------------------------------------------- gradients
def _group_params(model: nn.Module, groups: Sequence[LayerGroup]) -> list[tuple[str, list[torch.nn.Parameter]]]:
    params = dict(model.named_parameters())
    return [(g.name, [params[p] for p in g.param_names if p in params]) for g in groups]


def relative_grad_norms(
    model: nn.Module,
    groups: Sequence[LayerGroup],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> dict[str, float]:
    """Relative gradient norm ||g|| / ||theta|| of each layer group, averaged over minibatches (Auto-RGN).

    Every parameter temporarily requires grad; the model runs in eval mode, so BatchNorm statistics do not change
    and dropout is off. No optimizer step is taken. Afterwards ``requires_grad`` flags and each module's training
    mode are restored and gradients are cleared (``grad = None``).

    Args:
        model: the model (its head should be the one that will be fine-tuned, e.g. after a linear probe).
        groups: ``layer_groups(model)``.
        batches: (inputs, targets) minibatches; inputs already normalised floats on the model's device.
        loss_fn: loss of (logits, targets).

    Returns:
        Group name -> mean relative gradient norm (0.0 for a group whose weights are all zero).

    Raises:
        ValueError: ``batches`` is empty.
    """
    grouped = _group_params(model, groups)
    flags = {id(p): p.requires_grad for p in model.parameters()}
    modes = {m: m.training for m in model.modules()}
    sums = {name: 0.0 for name, _ in grouped}
    count = 0
    try:
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = None
        model.eval()
        for inputs, targets in batches:
            with torch.enable_grad():
                loss = loss_fn(model(inputs), targets)
                loss.backward()  # type: ignore[no-untyped-call]
            for name, ps in grouped:
                sums[name] += relative_grad_norm(ps) or 0.0
            for p in model.parameters():
                p.grad = None
            count += 1
    finally:
        for p in model.parameters():
            p.grad = None
            p.requires_grad_(flags[id(p)])
        for m, mode in modes.items():
            m.training = mode
    if count == 0:
        raise ValueError("relative_grad_norms needs at least one minibatch")
    return {name: total / count for name, total in sums.items()}
