"""Frozen-prefix cache: the cut is found and verified per architecture, and cached training equals uncached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from thaw.models.groups import layer_groups, module_groups
from thaw.strategy.base import Phase
from thaw.train.prefix import ActivationStore, PrefixPlan, SuffixForward, plan_prefix, prefix_activations
from thaw.train.runner import Runner

from .test_runner import _runner


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=3).eval()


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet", "test_vit"])
def test_every_cut_reproduces_the_logits(name: str) -> None:
    """For each possible first trainable group, the suffix run on cached activations gives the model's logits."""
    model = _model(name)
    groups = layer_groups(model)
    owner = module_groups(model, groups)
    size = 32 if name != "test_vit" else model.pretrained_cfg["input_size"][-1]
    x = torch.randn(5, 3, size, size)
    with torch.inference_mode():
        full = model(x)
    found = 0
    for first in range(1, len(groups)):
        plan = plan_prefix(model, owner, first, x[:2])
        if isinstance(plan, str):
            assert plan  # a refusal always says why
            continue
        found += 1
        # nothing that trains may sit in the replaced part
        trainable = {n for gi in range(first, len(groups)) for n in groups[gi].param_names}
        for mod in plan.replaced:
            assert not any(p.startswith(mod + ".") for p in trainable), (first, mod)
        acts = prefix_activations(model, plan, [x[:3], x[3:]])
        assert acts.shape == (5, *plan.act_shape)
        with torch.inference_mode(), SuffixForward(model, plan) as suffix:
            cut = suffix(acts)
        torch.testing.assert_close(cut, full, rtol=1e-4, atol=1e-5)
        # the stand-ins are gone afterwards: the plain model runs as before
        with torch.inference_mode():
            torch.testing.assert_close(model(x), full)
    assert found >= len(groups) // 2, f"{name}: only {found} of {len(groups) - 1} cuts are cacheable"


def test_refuses_a_cut_that_is_not_exact() -> None:
    """A model whose prefix output is used again after the cut (a long skip) is detected by verification."""

    class LongSkip(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(4, 4)
            self.b = torch.nn.Linear(4, 4)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return self.head(self.b(h) + x)  # x reaches past the cut at a

    model = LongSkip()
    groups = layer_groups(model)
    owner = module_groups(model, groups)
    verdict = plan_prefix(model, owner, 1, torch.randn(3, 4))
    assert isinstance(verdict, str) and "not exact" in verdict


def _last_k_phase(r: Runner, **kw: object) -> Phase:
    head = len(r.groups) - 1
    options: dict[str, object] = {"augment": "none", **kw}
    return Phase("last", trainable=(head - 2, head - 1, head), epochs=3, lr=1e-2, patience=0, **options)  # type: ignore[arg-type]


def test_cached_last_k_phase_matches_uncached() -> None:
    """Same seed, no augmentation: the prefix-cached phase gives the same metrics and weights as the uncached one."""
    results = []
    for cache in (True, False):
        r = _runner(label_smoothing=0.0, prefix_cache=cache)
        res = r.run_phase(0, _last_k_phase(r), [])
        assert res.extra["prefix_cache"]["used"] is cache
        results.append((res.best_val_accuracy, res.best_val_loss, res.last_train_loss, r.model.state_dict()))
    (a_acc, a_loss, a_tr, a_sd), (b_acc, b_loss, b_tr, b_sd) = results
    assert a_acc == b_acc
    torch.testing.assert_close(a_loss, b_loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a_tr, b_tr, rtol=1e-4, atol=1e-5)
    for k in a_sd:
        torch.testing.assert_close(a_sd[k], b_sd[k], rtol=1e-4, atol=1e-5, msg=k)


def test_random_augmentation_trains_uncached_unless_views_are_asked_for() -> None:
    r = _runner()
    res = r.run_phase(0, _last_k_phase(r, augment="light"), [])
    info = res.extra["prefix_cache"]
    assert info["used"] is False and "--cache-views" in info["reason"]

    r = _runner(cache_views=2)
    res = r.run_phase(0, _last_k_phase(r, augment="light"), [])
    info = res.extra["prefix_cache"]
    assert info["used"] is True and info["views"] == 2


def test_bn_statistics_that_move_forbid_the_cache() -> None:
    r = _runner()
    res = r.run_phase(0, _last_k_phase(r, bn_policy="train-all"), [])
    info = res.extra["prefix_cache"]
    assert info["used"] is False and "BatchNorm" in info["reason"]


def test_large_caches_spill_to_a_memory_mapped_file_with_the_same_result(tmp_path: Path) -> None:
    metrics = []
    for ram in (2048, 0):
        r = _runner(label_smoothing=0.0, cache_ram_mb=ram)
        r.run_dir = tmp_path / f"run{ram}"
        res = r.run_phase(0, _last_k_phase(r), [])
        metrics.append((res.best_val_accuracy, res.best_val_loss))
    spilled = sorted((tmp_path / "run0" / "cache" / "activations").glob("*.f32"))
    assert len(spilled) == 2  # train and validation activations
    for f in spilled:
        assert json.loads(f.with_suffix(".json").read_text())["complete"] is True
    assert not (tmp_path / "run2048" / "cache").exists()
    assert metrics[0][0] == metrics[1][0]
    torch.testing.assert_close(metrics[0][1], metrics[1][1], rtol=1e-5, atol=1e-6)


def test_store_reuses_only_completed_files_with_the_same_key(tmp_path: Path) -> None:
    store = ActivationStore(tmp_path, max_bytes=0)
    calls = []

    def build(value: float):  # type: ignore[no-untyped-def]
        def run(out: torch.Tensor | None) -> torch.Tensor:
            calls.append(value)
            assert out is not None
            out.fill_(value)
            return out

        return run

    a = store.get("k1", (2, 3), build(1.0))
    again = ActivationStore(tmp_path, max_bytes=0).get("k1", (2, 3), build(9.0))
    assert calls == [1.0] and torch.equal(a, again)
    (tmp_path / "k2.f32").write_bytes(b"\0" * 24)  # an interrupted build: data without its sidecar
    b = store.get("k2", (2, 3), build(2.0))
    assert calls == [1.0, 2.0] and float(b[0, 0]) == 2.0


def test_cache_key_follows_weights_transform_and_images() -> None:
    from thaw.train.prefix import cache_key, digest

    model = _model("test_efficientnet")
    owner = module_groups(model, layer_groups(model))
    plan = plan_prefix(model, owner, 3, torch.randn(2, 3, 32, 32))
    assert isinstance(plan, PrefixPlan)
    images = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    base = cache_key(model, plan, digest(images), {"augment": "none"})
    assert base == cache_key(model, plan, digest(images.clone()), {"augment": "none"})
    assert base != cache_key(model, plan, digest(images), {"augment": "light", "view": 0})
    other = images.clone()
    other[0, 0, 0, 0] ^= 1
    assert base != cache_key(model, plan, digest(other), {"augment": "none"})
    with torch.no_grad():
        next(model.get_submodule(plan.replaced[0]).parameters()).add_(1e-3)
    assert base != cache_key(model, plan, digest(images), {"augment": "none"})


def test_compile_wraps_only_uncached_phases(monkeypatch: pytest.MonkeyPatch) -> None:
    """--compile hands the forward of an uncached phase to torch.compile; cached phases keep the eager suffix."""
    compiled: list[object] = []

    def fake_compile(fn: object, **_kw: object) -> object:
        compiled.append(fn)
        return fn  # eager stand-in for inductor: what is compiled is the point here, not the compiler

    monkeypatch.setattr(torch, "compile", fake_compile)
    r = _runner(compile=True)
    head = len(r.groups) - 1
    r.run_phase(0, Phase("full", trainable=tuple(range(head + 1)), epochs=1, lr=1e-3, augment="none", patience=0), [])
    assert compiled == [r.model]
    r.run_phase(1, _last_k_phase(r), [])  # prefix-cached: not compiled
    assert compiled == [r.model]
