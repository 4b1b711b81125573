"""Signals: LogME against a slow, explicit reference; probes; stage features; gradient norms; weight drift."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import timm
import torch
import torch.nn.functional as F

from thaw.data.transforms import normalize
from thaw.models.groups import layer_groups
from thaw.strategy.signals import (
    hook_modules,
    logme,
    probe_score,
    relative_grad_norms,
    stage_features,
    weight_drift,
)


# --------------------------------------------------------------------------------------------------------- LogME
def _evidence(f: np.ndarray, y: np.ndarray, log_alpha: float, log_beta: float) -> float:
    """Log evidence of the Bayesian linear model, with A = alpha I + beta F^T F built explicitly (D x D)."""
    alpha, beta = math.exp(log_alpha), math.exp(log_beta)
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    sign, logdet = np.linalg.slogdet(a)
    assert sign > 0
    return float(
        n / 2 * np.log(beta)
        + d / 2 * np.log(alpha)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * np.sum((f @ m - y) ** 2)
        - alpha / 2 * m @ m
        - 0.5 * logdet
    )


def _logme_reference(f: np.ndarray, y: np.ndarray) -> float:
    """Maximise the explicit evidence over (log alpha, log beta) with scipy from several starts, per class."""
    scores = []
    for c in np.unique(y):
        target = (y == c).astype(np.float64)
        best = -math.inf
        for start in [(0.0, 0.0), (3.0, -1.0), (-3.0, 2.0)]:
            res = scipy.optimize.minimize(
                lambda p, t=target: -_evidence(f, t, p[0], p[1]),
                start,
                method="Nelder-Mead",
                options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 20000, "maxfev": 40000},
            )
            best = max(best, -float(res.fun))
        scores.append(best / f.shape[0])
    return float(np.mean(scores))


def _clustered(n: int, d: int, classes: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centers = rng.normal(size=(classes, d))
    return centers[y] + spread * rng.normal(size=(n, d)), y


@pytest.mark.parametrize(("n", "d"), [(40, 64), (200, 16), (30, 30)])
@pytest.mark.parametrize("spread", [0.7, None])
def test_logme_matches_explicit_reference(n: int, d: int, spread: float | None) -> None:
    if spread is None:  # pure noise: the optimum is at alpha -> infinity
        rng = np.random.default_rng(n + d)
        f, y = rng.normal(size=(n, d)), rng.integers(0, 3, size=n)
    else:
        f, y = _clustered(n, d, 3, spread, seed=n)
    assert abs(logme(f, y) - _logme_reference(f, y)) < 1e-5


def test_logme_scale_invariant_and_informative() -> None:
    f, y = _clustered(60, 100, 4, 0.5, seed=1)
    noise = np.random.default_rng(2).normal(size=f.shape)
    assert logme(f, y) == pytest.approx(logme(f * 37.0, y), abs=1e-8)
    assert logme(f, y) > logme(noise, y) + 0.1


def test_logme_does_not_reward_extra_noise_dimensions() -> None:
    # N < D: appending pure-noise dimensions must not raise the score (the dropped (D-k) log alpha term would)
    f, y = _clustered(40, 8, 3, 0.5, seed=3)
    padded = np.hstack([f, 0.01 * np.random.default_rng(4).normal(size=(40, 200))])
    assert logme(padded, y) <= logme(f, y) + 1e-6


def test_logme_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="features"):
        logme(np.zeros((5, 3)), np.zeros(4, dtype=int))


# ------------------------------------------------------------------------------------------------------- probes
def test_probe_score_separable_vs_noise() -> None:
    f, y = _clustered(90, 20, 3, 0.1, seed=5)
    good = probe_score(f, y)
    assert good["knn_accuracy"] > 0.95 and good["linear_accuracy"] > 0.95 and good["folds"] == 5
    noise = np.random.default_rng(6).normal(size=(90, 20))
    bad = probe_score(noise, y)
    assert bad["knn_accuracy"] < 0.6 and bad["linear_accuracy"] < 0.6


def test_probe_score_reduces_folds_and_handles_singletons() -> None:
    f, y = _clustered(9, 5, 3, 0.1, seed=7)
    assert probe_score(f, y)["folds"] == 3
    y_single = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
    out = probe_score(np.vstack([f, f[:1]]), y_single)
    assert out["folds"] == 0 and math.isnan(out["linear_accuracy"])


# ---------------------------------------------------------------------------------------------- stage features
@pytest.fixture(scope="module", params=["test_efficientnet", "test_resnet", "test_vit"])
def tiny_model(request: pytest.FixtureRequest) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(request.param, pretrained=False, num_classes=3).eval()


def _images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_stage_features_shapes_and_pre_logits(tiny_model: torch.nn.Module) -> None:
    groups = layer_groups(tiny_model)
    images = _images(7, 160 if "VisionTransformer" in type(tiny_model).__name__ else 64)
    tiny_model.train()
    feats = stage_features(tiny_model, groups, images, (0.5,) * 3, (0.25,) * 3, batch_size=3)
    assert tiny_model.training  # mode restored
    assert all(not m._forward_hooks for m in tiny_model.modules())  # hooks removed
    assert list(feats) == [g.name for g in groups[:-1]] + ["pre_logits"]
    assert all(v.shape[0] == 7 and v.dtype == np.float32 and np.isfinite(v).all() for v in feats.values())
    tiny_model.eval()
    with torch.no_grad():
        x = normalize(images, (0.5,) * 3, (0.25,) * 3)
        expected = tiny_model.forward_head(tiny_model.forward_features(x), pre_logits=True)
    np.testing.assert_allclose(feats["pre_logits"], expected.numpy(), rtol=1e-4, atol=1e-4)
    one_batch = stage_features(tiny_model, groups, images, (0.5,) * 3, (0.25,) * 3, batch_size=64)
    for key, value in feats.items():
        np.testing.assert_allclose(value, one_batch[key], rtol=1e-4, atol=1e-4)


def test_stage_features_are_group_outputs() -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    groups = layer_groups(model)
    hooks = hook_modules(model, groups)
    assert hooks["act1"] == hooks["maxpool"] == 0 and hooks["layer2"] == 2  # param-free stem modules join the stem
    images = _images(4)
    feats = stage_features(model, groups, images, (0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        x = normalize(images, (0.5,) * 3, (0.5,) * 3)
        stem = model.maxpool(model.act1(model.bn1(model.conv1(x))))
        layer2 = model.layer2(model.layer1(stem))
    np.testing.assert_allclose(feats["stem"], stem.mean(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats["layer2"], layer2.mean(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5)

    vit = timm.create_model("test_vit", pretrained=False, num_classes=3).eval()
    vit_feats = stage_features(vit, layer_groups(vit), _images(2, 160), (0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        # the stem ends after the position embedding (cls token included) and norm_pre, as (B, T, C) tokens
        tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(normalize(_images(2, 160), (0.5,) * 3, (0.5,) * 3))))
        assert tokens.dim() == 3
    np.testing.assert_allclose(vit_feats["stem"], tokens.mean(dim=1).numpy(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------- gradient norms and drift
def test_relative_grad_norms_restores_state_and_matches_manual() -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    groups = layer_groups(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("classifier"))
    model.train()
    bn_before = model.bn1.running_mean.clone()
    x = normalize(_images(4), (0.5,) * 3, (0.5,) * 3)
    y = torch.tensor([0, 1, 2, 0])
    rgn = relative_grad_norms(model, groups, [(x, y), (x, y)])
    assert list(rgn) == [g.name for g in groups] and all(v > 0 for v in rgn.values())
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for _, p in model.named_parameters()] == [
        n.startswith("classifier") for n, _ in model.named_parameters()
    ]
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(model.bn1.running_mean, bn_before)

    # manual: one batch in eval mode, every parameter differentiated
    model.eval()
    params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))
    by_name = dict(zip(params, grads, strict=True))
    for g in groups:
        gn = math.sqrt(sum(float(by_name[p].double().pow(2).sum()) for p in g.param_names))
        wn = math.sqrt(sum(float(params[p].detach().double().pow(2).sum()) for p in g.param_names))
        assert rgn[g.name] == pytest.approx(gn / wn, rel=1e-4)
    with pytest.raises(ValueError, match="minibatch"):
        relative_grad_norms(model, groups, [])


def test_weight_drift() -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    groups = layer_groups(model)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(v == 0.0 for v in weight_drift(model, start, groups).values())
    with torch.no_grad():
        model.layer2[0].conv1.weight.mul_(1.5)
    drift = weight_drift(model, start, groups)
    layer2 = next(g for g in groups if g.name == "layer2")
    norm = math.sqrt(sum(float(start[p].double().pow(2).sum()) for p in layer2.param_names))
    expected = 0.5 * float(start["layer2.0.conv1.weight"].double().norm()) / norm
    assert drift["layer2"] == pytest.approx(expected, rel=1e-6)
    assert drift["layer1"] == 0.0 and drift["head"] == 0.0
