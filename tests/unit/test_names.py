"""The one "did you mean" helper, and the places that use it."""

from __future__ import annotations

import pytest

from thaw.config import FitConfig
from thaw.errors import ConfigError
from thaw.names import did_you_mean


def test_did_you_mean() -> None:
    strategies = ["linear", "last-k", "full", "lp-ft", "auto"]
    assert did_you_mean("lp_ft", strategies) == " (did you mean 'lp-ft'?)"
    assert did_you_mean("zzz", strategies) == ""
    assert did_you_mean("lastk", iter(strategies)) == " (did you mean 'last-k'?)"  # any iterable, read once
    # closest first: resnet50 (one letter missing) before resnet18
    assert did_you_mean("resnt50", ["vit_small", "resnet18", "resnet50"], n=2) == (
        " (did you mean 'resnet50' or 'resnet18'?)"
    )
    assert (
        did_you_mean("ab", ["abc", "abd", "abe"], n=3) == " (did you mean 'abe', 'abd' or 'abc'?)"
    )  # ties: difflib's order
    assert did_you_mean("fll", ["full"], cutoff=0.95) == ""


def test_config_reports_every_typo_with_a_hint() -> None:
    with pytest.raises(ConfigError) as info:
        FitConfig.from_dict({"train": "x", "epoch": 3, "augmnt": "light"})
    assert str(info.value) == (
        "unknown option 'epoch' (did you mean 'epochs'?); unknown option 'augmnt' (did you mean 'augment'?)"
    )
    with pytest.raises(ConfigError, match=r"--augment 'lite' is not one of none, crop, light, strong \(did you mean"):
        FitConfig(train="x", augment="lite").validate()
