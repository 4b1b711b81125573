from __future__ import annotations

from PIL import Image

from thaw.data.sample import SAMPLE_CLASSES, SAMPLE_CREDIT, sample_data_dir

EXPECTED = {"train": 40, "val": 20, "test": 30}


def test_sample_dir_has_three_splits_of_ten_classes() -> None:
    root = sample_data_dir()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["test", "train", "val"]
    for split, per_class in EXPECTED.items():
        classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
        assert classes == sorted(SAMPLE_CLASSES), split
        for name in classes:
            assert len(list((root / split / name).glob("*.png"))) == per_class, (split, name)


def test_splits_are_disjoint_within_train_source() -> None:
    root = sample_data_dir()
    for name in SAMPLE_CLASSES:
        train = {p.name for p in (root / "train" / name).glob("*.png")}
        val = {p.name for p in (root / "val" / name).glob("*.png")}
        assert train.isdisjoint(val), name


def test_images_are_28px_grayscale() -> None:
    root = sample_data_dir()
    for path in list((root / "train" / "Bag").glob("*.png"))[:5]:
        with Image.open(path) as im:
            assert im.mode == "L"
            assert im.size == (28, 28)


def test_total_size_under_2mb_and_licence_present() -> None:
    root = sample_data_dir()
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 2_000_000
    licence = (root / "LICENSE.txt").read_text(encoding="utf-8")
    assert "MIT" in licence and "Zalando" in licence
    assert (root / "README.txt").is_file()
    assert "Fashion-MNIST" in SAMPLE_CREDIT
