"""Layer groups from timm's group_matcher, the fallback for plain modules, and group selection."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
from torch import nn

from thaw.errors import ConfigError
from thaw.models.groups import LayerGroup, format_groups, layer_groups, module_groups, select_groups

EXPECTED = {
    "test_efficientnet": ["stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "head"],
    "test_resnet": ["stem", "layer1", "layer2", "layer3", "layer4", "head"],
    "test_vit": ["stem", *(f"blocks.{i}" for i in range(6)), "head"],
    "efficientnet_lite0": ["stem", *(f"blocks.{i}" for i in range(7)), "head"],
    "resnet18": ["stem", "layer1", "layer2", "layer3", "layer4", "head"],
}


def _check_partition(model: nn.Module, groups: list[LayerGroup]) -> None:
    names = [p for g in groups for p in g.param_names]
    params = dict(model.named_parameters())
    assert sorted(names) == sorted(params)  # every parameter in exactly one group
    assert len(names) == len(set(names))
    for g in groups:
        assert g.num_params == sum(params[p].numel() for p in g.param_names) > 0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_timm_models(name: str) -> None:
    with torch.device("meta"):  # structure only: no memory, no init time
        model = timm.create_model(name, pretrained=False)
    groups = layer_groups(model)
    assert [g.name for g in groups] == EXPECTED[name]
    _check_partition(model, groups)
    head_params = {n for n, p in model.named_parameters() if any(p is q for q in model.get_classifier().parameters())}
    assert head_params <= set(groups[-1].param_names)
    # order follows the forward pass: parameters appear group after group
    order = [n for n, _ in model.named_parameters()]
    first = [order.index(g.param_names[0]) for g in groups]
    assert first[:-1] == sorted(first[:-1])


def test_merged_matches_stay_in_the_last_stage() -> None:
    groups = layer_groups(timm.create_model("test_efficientnet"))
    assert {"conv_head.weight", "bn2.weight"} <= set(groups[-2].param_names)  # MATCH_PREV_GROUP
    assert groups[-1].param_names == ("classifier.weight", "classifier.bias")
    vit = layer_groups(timm.create_model("test_vit"))
    assert "norm.weight" in vit[-2].param_names and vit[0].param_names[0] == "cls_token"


def test_module_groups_cover_buffers() -> None:
    model = timm.create_model("test_efficientnet")
    groups = layer_groups(model)
    mapping = module_groups(model, groups)
    owners = {n for n, m in model.named_modules() if list(m.parameters(False)) or list(m.buffers(False))}
    assert set(mapping) == owners
    assert mapping["bn1"] == 0 and mapping["blocks.2.0.bn1"] == 3 and mapping["bn2"] == 5 and mapping["classifier"] == 6


def test_buffer_only_batchnorm_follows_its_block() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, affine=False), nn.ReLU()),
        nn.BatchNorm2d(4, affine=False),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    groups = layer_groups(model)
    assert [g.name for g in groups] == ["0", "1", "head"]
    mapping = module_groups(model, groups)
    assert mapping["1.1"] == 1  # inside block 1: its parent's parameters
    assert mapping["2"] == 1  # top-level, no parameters around it: the nearest module before it
    assert mapping["4"] == 2


def test_fallback_on_plain_sequential(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    )
    with caplog.at_level(logging.INFO, logger="thaw.models.groups"):
        groups = layer_groups(model)
    assert [g.name for g in groups] == ["0", "1", "head"]
    assert groups[-1].param_names == ("5.weight", "5.bias")
    assert "no timm group_matcher" in caplog.text
    _check_partition(model, groups)


def test_fallback_expands_a_single_big_container() -> None:
    body = nn.Sequential(*(nn.Conv2d(4, 4, 1) for _ in range(4)))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = body
            self.classifier = nn.Linear(4, 2)
            self.scale = nn.Parameter(torch.ones(1))  # owned by the root

    model = Net()
    groups = layer_groups(model)
    assert [g.name for g in groups] == ["features.0", "features.1", "features.2", "features.3", "head"]
    _check_partition(model, groups)


def test_select_groups() -> None:
    groups = layer_groups(timm.create_model("test_resnet"))
    assert select_groups(groups, "stem,head") == [0, 5]
    assert select_groups(groups, ["layer4", "-1", "5"]) == [4, 5]
    assert select_groups(groups, "re:layer[34]") == [3, 4]
    assert select_groups(groups, "0") == [0]
    with pytest.raises(ConfigError, match="did you mean 'layer1'"):
        select_groups(groups, "layr1")
    with pytest.raises(ConfigError, match="out of range"):
        select_groups(groups, "6")
    with pytest.raises(ConfigError, match="matches no layer group"):
        select_groups(groups, "re:blocks")
    with pytest.raises(ConfigError, match="bad regular expression"):
        select_groups(groups, "re:(")
    with pytest.raises(ConfigError, match="no layer groups selected"):
        select_groups(groups, " ")


def test_format_groups() -> None:
    groups = [LayerGroup("stem", ("a",), 10), LayerGroup("body", ("b",), 60), LayerGroup("head", ("c",), 30)]
    lines = format_groups(groups).splitlines()
    assert lines[0].split() == ["idx", "name", "params", "%", "cum%", "from", "head"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["0", "stem", "10", "10.0%", "100.0%"]
    assert lines[3].split() == ["1", "body", "60", "60.0%", "90.0%"]
    assert lines[4].split() == ["2", "head", "30", "30.0%", "30.0%"]
    assert lines[5].split() == ["total", "100"]
    # numbers right-aligned under their header, names left-aligned
    assert lines[2].index("stem") == lines[0].index("name") and lines[2].endswith("100.0%")
    assert len(lines[0]) == len(lines[2]) and lines[0].endswith("cum% from head")
    big = format_groups([LayerGroup("blocks.0", ("a",), 1_234_567), LayerGroup("head", ("b",), 1000)])
    assert "1,234,567" in big and big.splitlines()[-1].split() == ["total", "1,235,567"]
