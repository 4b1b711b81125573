"""Decode every image once into a uint8 tensor store, and a light Dataset over it.

Decoding JPEGs dominates the cost of small-data fine-tuning on CPU; doing it once and keeping
preprocessed uint8 (3, S, S) tensors (a quarter of float32's memory) makes every later epoch cheap.
Large sets go to a numpy memmap on disk instead of RAM.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from thaw.data.decode import DecodeError, decode_image, display_path
from thaw.data.transforms import Preprocess
from thaw.data.types import Sample, Skipped

__all__ = ["DecodedImages", "ImageDataset", "decode_all", "file_sha1"]

logger = logging.getLogger(__name__)


def file_sha1(path: str, chunk_size: int = 1 << 20) -> str:
    """SHA-1 of a file's bytes (identifies byte-identical duplicates)."""
    digest = hashlib.sha1(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _memmap_tensor(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.memmap(path, dtype=np.uint8, mode="w+", shape=shape)
    return torch.from_numpy(array)


@dataclass
class DecodedImages:
    """Preprocessed images of one split, in sample order.

    Attributes:
        images: uint8 tensor (N, 3, S, S), in RAM or backed by a memmap file.
        labels: int64 tensor (N,).
        paths: File path of each image (as scanned; may hold surrogate escapes, see ``display_path``).
        hashes: SHA-1 hex digest of each file's bytes.
        skipped: Files that failed to decode, with the reason.
        memmap_path: The file backing ``images`` when it lives on disk, else None.
    """

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    hashes: list[str]
    skipped: list[Skipped] = field(default_factory=list)
    memmap_path: Path | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int], *, keep_skipped: bool = False) -> DecodedImages:
        """The images at ``indices`` (in that order), as a new ``DecodedImages``.

        Args:
            indices: Positions to keep.
            keep_skipped: Carry this set's ``skipped`` list over. Use it on exactly one part when splitting
                one decoded folder in two (e.g. the train part), so the audit lists each skipped file once.

        Returns:
            The subset. A memmap-backed set gives a memmap-backed subset (a new file next to the original),
            so splitting a large set does not pull it into RAM.
        """
        index = torch.as_tensor(list(indices), dtype=torch.int64)
        memmap_path = None
        if self.memmap_path is not None:
            tag = hashlib.sha1(index.numpy().tobytes(), usedforsecurity=False).hexdigest()[:12]
            memmap_path = self.memmap_path.with_name(f"{self.memmap_path.stem}-{tag}{self.memmap_path.suffix}")
            images = _memmap_tensor(memmap_path, (len(index), *self.images.shape[1:]))
            for start in range(0, len(index), 256):  # bounded RAM: copy in chunks
                images[start : start + 256] = self.images[index[start : start + 256]]
        else:
            images = self.images[index]
        return DecodedImages(
            images=images,
            labels=self.labels[index],
            paths=[self.paths[i] for i in index.tolist()],
            hashes=[self.hashes[i] for i in index.tolist()],
            skipped=list(self.skipped) if keep_skipped else [],
            memmap_path=memmap_path,
        )


def decode_all(
    samples: Sequence[Sample],
    preprocess: Preprocess,
    *,
    num_threads: int | None = None,
    memmap_path: Path | None = None,
    memmap_threshold_bytes: int = 2 * 1024**3,
    progress: Callable[[int, int], None] | None = None,
) -> DecodedImages:
    """Decode and preprocess every sample once, in a thread pool, keeping the input order.

    Pillow releases the GIL while decoding and resizing, so threads scale without the copying cost of
    processes. Files that fail to decode become ``Skipped`` entries (with ``DecodeError.reason``) and are
    left out of the tensors.

    Args:
        samples: Files to decode, with their labels.
        preprocess: Resize/crop to uint8 (3, S, S).
        num_threads: Worker threads (default: the CPUs this process may use).
        memmap_path: Where to put the images when they would exceed ``memmap_threshold_bytes``; None keeps
            them in RAM whatever the size.
        memmap_threshold_bytes: Size of N*3*S*S above which ``memmap_path`` is used.
        progress: Called from the calling thread as ``progress(done, total)`` after each file.

    Returns:
        The decoded images; ``len(result) + len(result.skipped) == len(samples)``.

    Example:
        >>> decoded = decode_all(scan("data/train").samples, Preprocess.from_data_config(cfg))
    """
    total = len(samples)
    size = preprocess.size
    shape = (total, 3, size, size)
    nbytes = total * 3 * size * size
    use_memmap = memmap_path is not None and nbytes > memmap_threshold_bytes
    if use_memmap:
        assert memmap_path is not None
        logger.info("decoded images need %.1f GB: storing them in %s", nbytes / 1e9, memmap_path)
        images = _memmap_tensor(memmap_path, shape)
    else:
        images = torch.empty(shape, dtype=torch.uint8)

    hashes: list[str | None] = [None] * total
    reasons: dict[int, str] = {}

    def work(i: int) -> None:
        path = samples[i].path
        try:
            tensor = preprocess(decode_image(path))
            hashes[i] = file_sha1(path)
        except DecodeError as err:
            reasons[i] = err.reason
            return
        except OSError as exc:  # the file vanished or became unreadable between decode and hashing
            reasons[i] = f"cannot read file ({exc.strerror or exc})"
            return
        images[i].copy_(tensor)

    if num_threads is None:
        num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, num_threads), thread_name_prefix="thaw-decode") as pool:
        futures = [pool.submit(work, i) for i in range(total)]
        for done, future in enumerate(as_completed(futures), start=1):
            future.result()  # re-raise bugs (not bad files) in the calling thread
            if progress is not None:
                progress(done, total)

    keep = [i for i in range(total) if i not in reasons]
    # Compact in place (rows only move forward), so neither RAM nor the memmap needs a second copy.
    for j, i in enumerate(keep):
        if i != j:
            images[j] = images[i]
    images = images[: len(keep)]
    skipped = [Skipped(display_path(samples[i].path), reasons[i]) for i in sorted(reasons)]
    for item in skipped:
        logger.debug("skipped %s: %s", item.path, item.reason)
    logger.info("decoded %d of %d images (%d skipped)", len(keep), total, len(skipped))
    kept_hashes = [hashes[i] for i in keep]
    assert all(h is not None for h in kept_hashes)
    return DecodedImages(
        images=images,
        labels=torch.tensor([samples[i].label for i in keep], dtype=torch.int64),
        paths=[samples[i].path for i in keep],
        hashes=[h for h in kept_hashes if h is not None],
        skipped=skipped,
        memmap_path=memmap_path if use_memmap else None,
    )


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Map-style dataset over ``DecodedImages``: returns ``(uint8 image (3, S, S), label)``.

    Args:
        data: The decoded images.
        augment: Optional transform applied to each uint8 image (see ``make_augment``).
    """

    def __init__(self, data: DecodedImages, augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.images = data.images
        self.labels = data.labels
        self.augment = augment

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.augment is not None:
            image = self.augment(image)
        return image, int(self.labels[index])
