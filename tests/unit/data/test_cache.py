"""decode_all, DecodedImages and ImageDataset."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from thaw.data.cache import DecodedImages, ImageDataset, decode_all
from thaw.data.sources import scan
from thaw.data.transforms import Preprocess, make_augment
from thaw.data.types import Sample, Skipped

from .conftest import save_image

PRE = Preprocess(16, 1.0, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def colored_samples(tmp_path: Path, n: int) -> list[Sample]:
    samples = []
    for i in range(n):
        path = save_image(tmp_path / f"{i}.png", (16, 16), (i * 10, 0, 0))
        samples.append(Sample(str(path), i % 2))
    return samples


def test_order_labels_hashes_and_skips(tmp_path: Path) -> None:
    samples = colored_samples(tmp_path, 12)
    (tmp_path / "bad.jpg").write_bytes(b"")
    samples.insert(5, Sample(str(tmp_path / "bad.jpg"), 1))
    calls: list[tuple[int, int]] = []
    data = decode_all(samples, PRE, num_threads=3, progress=lambda done, total: calls.append((done, total)))
    assert len(data) == 12 and data.images.shape == (12, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.images[:, 0, 0, 0].tolist() == [i * 10 for i in range(12)]  # input order kept, bad one removed
    assert data.labels.tolist() == [i % 2 for i in range(12)] and data.labels.dtype == torch.int64
    assert data.paths == [s.path for s in samples if "bad" not in s.path]
    assert data.hashes[3] == hashlib.sha1(Path(data.paths[3]).read_bytes()).hexdigest()
    assert [(Path(s.path).name, s.reason) for s in data.skipped] == [("bad.jpg", "empty file (0 bytes)")]
    assert calls[-1] == (13, 13) and len(calls) == 13
    assert data.memmap_path is None


def test_memmap_store(tmp_path: Path) -> None:
    samples = colored_samples(tmp_path, 6)
    (tmp_path / "bad.png").write_text("<html></html>")
    samples.insert(0, Sample(str(tmp_path / "bad.png"), 0))
    mm = tmp_path / "cache" / "train.u8"
    data = decode_all(samples, PRE, memmap_path=mm, memmap_threshold_bytes=100)
    assert data.memmap_path == mm and mm.exists()
    on_disk = np.fromfile(mm, dtype=np.uint8)[: data.images.numel()].reshape(tuple(data.images.shape))
    assert torch.equal(torch.from_numpy(on_disk), data.images)  # compacted in the file itself
    data.images[0, 0, 0, 0] = 77  # the tensor is the file's mapping, not a RAM copy
    assert np.fromfile(mm, dtype=np.uint8, count=1)[0] == 77
    data.images[0, 0, 0, 0] = 0
    in_ram = decode_all(samples, PRE)
    assert torch.equal(data.images, in_ram.images)
    # under the threshold the memmap path is not used
    assert decode_all(samples, PRE, memmap_path=tmp_path / "small.u8").memmap_path is None
    assert not (tmp_path / "small.u8").exists()
    sub = data.subset([4, 0])
    assert sub.memmap_path is not None and sub.memmap_path != mm and sub.memmap_path.exists()
    assert torch.equal(sub.images, in_ram.images[[4, 0]])


def test_subset(tmp_path: Path) -> None:
    data = decode_all(colored_samples(tmp_path, 5), PRE)
    data.skipped.append(Skipped("gone.jpg", "file not found"))
    sub = data.subset([3, 1])
    assert isinstance(sub, DecodedImages) and len(sub) == 2
    assert sub.labels.tolist() == [1, 1] and sub.paths == [data.paths[3], data.paths[1]]
    assert sub.hashes == [data.hashes[3], data.hashes[1]]
    assert torch.equal(sub.images, data.images[[3, 1]])
    assert sub.skipped == [] and data.subset([0], keep_skipped=True).skipped == data.skipped


def test_dataset_with_loader_and_augment(make_folder: Callable[..., Path]) -> None:
    result = scan(make_folder({"a": 3, "b": 3}, size=(30, 20)))
    data = decode_all(result.samples, PRE)
    ds = ImageDataset(data, augment=make_augment("light", 16))
    image, label = ds[4]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and label == 1 and isinstance(label, int)
    batches = list(DataLoader(ds, batch_size=4))
    assert batches[0][0].shape == (4, 3, 16, 16) and batches[0][1].tolist() == [0, 0, 0, 1]
    assert len(ImageDataset(data)) == 6 and torch.equal(ImageDataset(data)[0][0], data.images[0])
