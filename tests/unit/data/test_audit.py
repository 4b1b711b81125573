"""build_audit / format_audit, and the whole scan -> decode -> audit path on the bad-input corpus."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from thaw.data.audit import build_audit, format_audit
from thaw.data.cache import decode_all
from thaw.data.sources import scan
from thaw.data.split import stratified_split
from thaw.data.transforms import Preprocess

from .conftest import Corpus, save_image

PRE = Preprocess(16, 0.875, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_corpus_end_to_end(corpus: Corpus) -> None:
    train = scan(corpus.train)
    val = scan(corpus.val, classes=train.classes)
    splits = {"train": decode_all(train.samples, PRE, num_threads=2), "val": decode_all(val.samples, PRE)}
    audit = build_audit(
        splits,
        train.classes,
        {"train": train.skipped, "val": val.skipped},
        {"train": train.files_seen, "val": val.files_seen},
    )
    text = json.dumps(audit, ensure_ascii=False)
    text.encode("utf-8")  # no lone surrogates from the non-UTF-8 file name
    assert json.loads(text) == audit

    # nothing silently lost
    for split in ("train", "val"):
        n_skipped = sum(item["split"] == split for item in audit["skipped"])
        assert audit["files_seen"][split] == audit["images_used"][split] + n_skipped
        assert audit["unaccounted"][split] == 0
    assert audit["files_seen"] == {"train": 28, "val": 2}

    # each corpus file is decoded or listed with the expected reason
    reasons = {os.path.basename(item["path"]): item["reason"] for item in audit["skipped"]}
    used = {os.path.basename(p) for p in splits["train"].paths}
    for name, expected in corpus.expected.items():
        if expected == "ok":
            assert name in used or name.replace("\\xe9", "\udce9") in used, name
        else:
            assert expected in reasons[name], (name, reasons.get(name))
    stages = {os.path.basename(item["path"]): item["stage"] for item in audit["skipped"]}
    assert stages["bomb.png"] == "decode" and stages["readme.txt"] == "scan"

    assert audit["classes"] == {
        "good": {"train": 7, "val": 1},
        "ünïcode label with spaces": {"train": 9, "val": 1},
    }
    assert audit["cross_split_duplicates"] == 1
    cross = [g for g in audit["duplicates"] if len(set(g["splits"])) > 1]
    assert [os.path.basename(p) for p in cross[0]["paths"]] == ["plain0.jpg", "copy.jpg"]
    assert cross[0]["splits"] == ["train", "val"] and cross[0]["classes"] == ["good", "good"]

    lines = format_audit(audit)
    assert lines[0] == "images: train 16 (12 of 28 files skipped), val 2"
    assert sum(line.startswith("skipped [train]") for line in lines) == 12
    assert any("bomb.png: image has 900 Mpx" in line for line in lines)
    assert any(line.startswith("warning: identical files") and "copy.jpg [val]" in line for line in lines)
    assert not any("imbalance" in line for line in lines)


def test_csv_corpus(corpus: Corpus) -> None:
    result = scan(corpus.manifest)
    audit = build_audit(
        {"train": decode_all(result.samples, PRE)}, result.classes, {"train": result.skipped}, {"train": 5}
    )
    assert audit["classes"] == {"good": {"train": 2}, "sea lion 🦭": {"train": 1}}
    assert audit["unaccounted"] == {"train": 0} and audit["imbalance"] == 2.0
    json.dumps(audit)


def test_carved_validation_split_accounts_for_every_file(make_folder: Callable[..., Path]) -> None:
    root = make_folder({"a": 20, "b": 4})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "b" / "notes.txt").write_text("x")
    result = scan(root)
    decoded = decode_all(result.samples, PRE)
    train_idx, val_idx = stratified_split(decoded.labels.tolist(), 0.25, seed=0)
    audit = build_audit(
        {"train": decoded.subset(train_idx, keep_skipped=True), "val": decoded.subset(val_idx)},
        result.classes,
        {"train": result.skipped},
        {"train": result.files_seen - len(val_idx), "val": len(val_idx)},
    )
    assert audit["unaccounted"] == {"train": 0, "val": 0}
    assert len(audit["skipped"]) == 2
    assert audit["classes"] == {"a": {"train": 15, "val": 5}, "b": {"train": 3, "val": 1}}
    assert audit["imbalance"] == 5.0 and audit["imbalance_classes"] == {"largest": "a", "smallest": "b"}
    note = [line for line in format_audit(audit) if "imbalance" in line]
    assert note == [
        "note: class imbalance 5.0x in train (largest 'a' 15, smallest 'b' 3): "
        "consider more images of the small classes"
    ]


def test_duplicates_within_and_across_splits(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for cls in ("x", "y"):
            save_image(tmp_path / split / cls / "same.png", color=(1, 1, 1))  # identical bytes everywhere
            save_image(tmp_path / split / cls / "own.png", color=(len(split), ord(cls), 5))  # all distinct
    for cls in ("x", "y"):
        save_image(tmp_path / "train" / cls / "twin.png", color=(9, 9, 9))  # identical within train only
    train = scan(tmp_path / "train")
    test = scan(tmp_path / "test", classes=train.classes)
    audit = build_audit(
        {"train": decode_all(train.samples, PRE), "test": decode_all(test.samples, PRE)},
        train.classes,
        {},
        {"train": train.files_seen, "test": test.files_seen},
    )
    groups = {os.path.basename(g["paths"][0]): g for g in audit["duplicates"]}
    assert set(groups) == {"same.png", "twin.png"}
    assert groups["same.png"]["splits"] == ["train", "train", "test", "test"]
    assert groups["same.png"]["classes"] == ["x", "y", "x", "y"]  # also a label conflict, visible here
    assert groups["twin.png"]["splits"] == ["train", "train"]
    assert audit["cross_split_duplicates"] == 1 and audit["within_split_duplicates"] == 1
    lines = format_audit(audit)
    assert sum(line.startswith("warning: identical files") for line in lines) == 1
    assert "note: 1 group(s) of identical files within a split (see audit.json 'duplicates')" in lines


def test_missing_train_class_is_noted(make_folder: Callable[..., Path]) -> None:
    result = scan(make_folder({"a": 2}, name="t"), classes=["a", "b"])
    audit = build_audit({"train": decode_all(result.samples, PRE)}, result.classes, {}, {"train": 2})
    assert audit["imbalance"] is None
    assert "note: class 'b' has no train images" in format_audit(audit)
