from __future__ import annotations

from pathlib import Path

import pytest

from thaw.config import FitConfig, default_batch_size, parse_duration
from thaw.errors import ConfigError


def test_defaults_validate_and_round_trip_yaml(tmp_path: Path) -> None:
    cfg = FitConfig.from_dict({"train": "data/train", "strategy": "last-k", "k": 3, "time_budget": "5m"})
    assert cfg.time_budget == 300.0
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert FitConfig.from_yaml(path) == cfg
    assert FitConfig.from_yaml(path, k=1).k == 1


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as err:
        FitConfig.from_dict({"train": "x", "strategy": "lastk", "epochs": 0, "lr": -1.0, "val_fraction": 1.5})
    msg = str(err.value)
    assert "did you mean 'last-k'" in msg
    assert "--epochs" in msg and "--lr" in msg and "--val-fraction" in msg


def test_unknown_option_suggests_the_right_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        FitConfig.from_dict({"train": "x", "epoch": 3})


def test_groups_strategy_needs_groups() -> None:
    with pytest.raises(ConfigError, match="--groups"):
        FitConfig.from_dict({"train": "x", "strategy": "groups"})


@pytest.mark.parametrize(("text", "seconds"), [("300", 300.0), ("90s", 90.0), ("5m", 300.0), ("1.5h", 5400.0)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_garbage() -> None:
    with pytest.raises(ConfigError, match="duration"):
        parse_duration("five minutes")


def test_patience_defaults_to_a_quarter_of_the_phase() -> None:
    from thaw.config import phase_patience

    cfg = FitConfig.from_dict({"train": "x"})
    assert phase_patience(cfg, 8) == 3 and phase_patience(cfg, 40) == 10
    assert phase_patience(cfg, 20, minimum=5) == 5
    assert phase_patience(cfg.replace(patience=2), 40) == 2  # an explicit value is used as given
    assert phase_patience(cfg.replace(patience=0), 40) == 0  # off


def test_models_is_an_auto_choice_among_pretrained_backbones() -> None:
    cfg = FitConfig.from_dict({"train": "x", "strategy": "auto", "models": " a, b,,a ,c"})
    assert cfg.model_candidates() == ["a", "b", "c"]  # order kept, blanks and repeats dropped
    assert FitConfig.from_dict({"train": "x"}).model_candidates() == []
    with pytest.raises(ConfigError, match="--models is an auto decision"):
        FitConfig.from_dict({"train": "x", "strategy": "full", "models": "a,b"})
    with pytest.raises(ConfigError, match="drop --weights"):
        FitConfig.from_dict({"train": "x", "strategy": "auto", "models": "a,b", "weights": "w.safetensors"})
    with pytest.raises(ConfigError, match="at least one model name"):
        FitConfig.from_dict({"train": "x", "strategy": "auto", "models": " , "})


@pytest.mark.parametrize(
    ("images", "size"),
    [(1, 16), (40, 16), (100, 16), (255, 16), (256, 32), (300, 32), (511, 32), (512, 64), (1000, 64), (60000, 64)],
)
def test_default_batch_size_is_the_largest_power_of_two_giving_eight_steps(images: int, size: int) -> None:
    assert default_batch_size(images) == size


def test_the_batch_size_left_to_thaw_is_chosen_from_the_data_and_a_given_one_is_kept() -> None:
    cfg = FitConfig.from_dict({"train": "x"})
    assert cfg.batch_size is None and cfg.resolved().batch_size is None  # unknown until the data is
    with pytest.raises(RuntimeError, match="chosen from the data"):
        _ = cfg.batch
    assert cfg.resolved(num_train=300).batch == 32
    assert cfg.replace(batch_size=8).resolved(num_train=300).batch == 8
    with pytest.raises(ConfigError, match="--batch-size must be at least 1"):
        cfg.replace(batch_size=0)


def test_auto_is_the_default_strategy() -> None:
    assert FitConfig(train="x").strategy == "auto"


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({}, []),
        ({"epochs": 30}, ["--epochs 30 has no effect with --strategy auto (the default)"]),
        ({"epochs": 30, "strategy": "lp-ft"}, []),
        ({"k": 4, "strategy": "lp-ft"}, ["--k 4 has no effect with --strategy lp-ft (only last-k use it)"]),
        ({"k": 4, "strategy": "last-k", "probe_epochs": 3}, ["--probe-epochs 3 has no effect with --strategy last-k"]),
        ({"gradual_epochs": 2, "strategy": "full"}, ["--gradual-epochs 2 has no effect with --strategy full"]),
        ({"epochs": 5, "strategy": "linear"}, ["--epochs 5 has no effect with --strategy linear"]),
        ({"groups": "blocks.6", "strategy": "groups", "epochs": 5}, []),
    ],
)
def test_options_the_strategy_does_not_read_are_said(changes: dict[str, object], said: list[str]) -> None:
    """An option set away from its default that the chosen strategy ignores gets a sentence (api.fit logs it and
    summary.json lists it under warnings); defaults and options the strategy reads get none."""
    got = FitConfig(train="x", **changes).ignored_options()  # type: ignore[arg-type]
    assert len(got) == len(said) and all(g.startswith(s) for g, s in zip(got, said, strict=True)), got
