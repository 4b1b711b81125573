"""Data audit: what was used, what was skipped and why, duplicates, class balance.

The audit is the answer to "where did my images go?": for every split, ``files_seen == images_used +
number of skipped entries``, and every skipped file is listed with its reason.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from thaw.data.cache import DecodedImages
from thaw.data.decode import display_path
from thaw.data.types import Skipped

__all__ = ["IMBALANCE_NOTE_RATIO", "build_audit", "format_audit"]

#: ``format_audit`` notes class imbalance when the largest train class is this many times the smallest.
IMBALANCE_NOTE_RATIO = 3.0


def build_audit(
    splits: Mapping[str, DecodedImages],
    classes: Sequence[str],
    scan_skipped: Mapping[str, Sequence[Skipped]],
    files_seen: Mapping[str, int],
) -> dict[str, Any]:
    """Summarise the data of a run as a JSON-ready dict (written to ``audit.json``).

    When validation is carved out of the training folder, give the train part the decode skips
    (``decoded.subset(train_idx, keep_skipped=True)``) and count the val images out of the train folder's
    files: ``files_seen={"train": scan.files_seen - len(val_idx), "val": len(val_idx)}``.

    Args:
        splits: Decoded images per split name ("train", "val", "test"), in display order.
        classes: Class names; labels index into them.
        scan_skipped: Files the scan passed over, per split.
        files_seen: Files the scan met, per split.

    Returns:
        A dict with keys ``classes`` ({class: {split: count}}), ``skipped`` (list of {path, reason, split,
        stage}), ``duplicates`` (groups of byte-identical files: {hash, paths, splits, classes}),
        ``cross_split_duplicates`` (groups spanning several splits), ``within_split_duplicates``,
        ``imbalance`` (largest / smallest train class count; None when a class has no train image),
        ``imbalance_classes`` ({largest, smallest}), ``files_seen`` and ``images_used`` ({split: n}), and
        ``unaccounted`` ({split: files_seen - images_used - skipped}, all zero when nothing was lost).
    """
    names = list(splits)
    counts = {name: {split: 0 for split in names} for name in classes}
    for split, data in splits.items():
        for label, n in enumerate(torch.bincount(data.labels, minlength=len(classes)).tolist()):
            counts[classes[label]][split] = n

    skipped: list[dict[str, str]] = []
    skipped_per_split: dict[str, int] = defaultdict(int)
    for split in names + [s for s in scan_skipped if s not in splits]:
        for item in scan_skipped.get(split, ()):
            skipped.append({"path": item.path, "reason": item.reason, "split": split, "stage": "scan"})
            skipped_per_split[split] += 1
        if split in splits:
            for item in splits[split].skipped:
                skipped.append({"path": item.path, "reason": item.reason, "split": split, "stage": "decode"})
                skipped_per_split[split] += 1

    members: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # hash -> [(split, path, class)]
    for split, data in splits.items():
        for digest, path, label in zip(data.hashes, data.paths, data.labels.tolist(), strict=True):
            members[digest].append((split, display_path(path), classes[label]))
    duplicates = [
        {
            "hash": digest,
            "paths": [path for _, path, _ in group],
            "splits": [split for split, _, _ in group],
            "classes": [name for _, _, name in group],
        }
        for digest, group in members.items()
        if len(group) > 1
    ]
    cross = sum(1 for group in duplicates if len(set(group["splits"])) > 1)

    train_split = "train" if "train" in splits else (names[0] if names else None)
    imbalance: float | None = None
    imbalance_classes: dict[str, str] | None = None
    if train_split is not None and classes:
        train_counts = {name: counts[name][train_split] for name in classes}
        largest = max(train_counts, key=lambda name: train_counts[name])
        smallest = min(train_counts, key=lambda name: train_counts[name])
        if train_counts[smallest] > 0:
            imbalance = round(train_counts[largest] / train_counts[smallest], 3)
        imbalance_classes = {"largest": largest, "smallest": smallest}

    used = {split: len(data) for split, data in splits.items()}
    seen = {split: int(files_seen.get(split, used.get(split, 0) + skipped_per_split[split])) for split in names}
    for split in files_seen:
        seen.setdefault(split, int(files_seen[split]))
    return {
        "classes": counts,
        "files_seen": seen,
        "images_used": used,
        "unaccounted": {split: seen[split] - used.get(split, 0) - skipped_per_split[split] for split in seen},
        "skipped": skipped,
        "duplicates": duplicates,
        "cross_split_duplicates": cross,
        "within_split_duplicates": len(duplicates) - cross,
        "imbalance": imbalance,
        "imbalance_split": train_split,
        "imbalance_classes": imbalance_classes,
    }


def format_audit(audit: Mapping[str, Any]) -> list[str]:
    """Console lines for an audit from ``build_audit``.

    Lists images per split and per class, every skipped file with its reason, a warning per group of
    identical files found in more than one split, and a note when the train classes are imbalanced.

    Args:
        audit: The dict returned by ``build_audit``.

    Returns:
        Lines without trailing newlines.
    """
    lines: list[str] = []
    used: Mapping[str, int] = audit.get("images_used", {})
    seen: Mapping[str, int] = audit.get("files_seen", {})
    skipped: Sequence[Mapping[str, str]] = audit.get("skipped", [])
    per_split_skipped: dict[str, int] = defaultdict(int)
    for item in skipped:
        per_split_skipped[item["split"]] += 1
    parts = [
        f"{split} {used.get(split, 0)}"
        + (f" ({per_split_skipped[split]} of {seen.get(split, 0)} files skipped)" if per_split_skipped[split] else "")
        for split in seen
    ]
    lines.append("images: " + ", ".join(parts))

    counts: Mapping[str, Mapping[str, int]] = audit.get("classes", {})
    if counts:
        splits = list(used) or list(seen)
        cells = [f"{name} {'/'.join(str(per.get(s, 0)) for s in splits)}" for name, per in counts.items()]
        header = f"classes ({'/'.join(splits)}): "
        wrapped = textwrap.wrap(", ".join(cells), width=110, break_long_words=False, break_on_hyphens=False)
        lines.extend(header + line if i == 0 else " " * len(header) + line for i, line in enumerate(wrapped))

    for item in skipped:
        lines.append(f"skipped [{item['split']}] {item['path']}: {item['reason']}")

    for group in audit.get("duplicates", []):
        if len(set(group["splits"])) > 1:
            pairs = " == ".join(
                f"{path} [{split}]" for path, split in zip(group["paths"], group["splits"], strict=True)
            )
            lines.append(f"warning: identical files in several splits (evaluation would be optimistic): {pairs}")
    within = int(audit.get("within_split_duplicates", 0))
    if within:
        lines.append(f"note: {within} group(s) of identical files within a split (see audit.json 'duplicates')")

    ratio = audit.get("imbalance")
    names = audit.get("imbalance_classes") or {}
    split = audit.get("imbalance_split") or "train"
    if ratio is not None and ratio > IMBALANCE_NOTE_RATIO:
        lines.append(
            f"note: class imbalance {ratio:.1f}x in {split} (largest '{names.get('largest')}' "
            f"{counts.get(names.get('largest', ''), {}).get(split, '?')}, smallest '{names.get('smallest')}' "
            f"{counts.get(names.get('smallest', ''), {}).get(split, '?')}): consider more images of the small classes"
        )
    elif ratio is None and names:
        lines.append(f"note: class '{names.get('smallest')}' has no {split} images")
    return lines
