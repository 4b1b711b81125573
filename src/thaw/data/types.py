"""Plain records shared by the data package."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["IMAGE_EXTENSIONS", "Sample", "Skipped", "ScanResult"]

#: Extensions thaw tries to decode (lower case, with the dot).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


@dataclass(frozen=True)
class Sample:
    """One labelled image file."""

    path: str
    label: int


@dataclass(frozen=True)
class Skipped:
    """A file that was seen but not used, and why."""

    path: str
    reason: str


@dataclass
class ScanResult:
    """What a data source yielded: usable samples, class names, and every file it passed over."""

    samples: list[Sample]
    classes: list[str]
    skipped: list[Skipped] = field(default_factory=list)
    files_seen: int = 0
