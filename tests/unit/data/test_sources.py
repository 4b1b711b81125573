"""scan: folders and CSV manifests, every file accounted for, errors that say what to do."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from thaw.data.sources import scan
from thaw.data.types import Sample, Skipped
from thaw.errors import DataError

from .conftest import Corpus, save_image


def by_name(skipped: list[Skipped]) -> dict[str, str]:
    return {os.path.basename(s.path): s.reason for s in skipped}


def test_folder_basic(make_folder: Callable[..., Path]) -> None:
    root = make_folder({"dogs": 2, "cats": 3})
    result = scan(root)
    assert result.classes == ["cats", "dogs"]
    assert [s.label for s in result.samples] == [0, 0, 0, 1, 1]
    assert result.samples[0] == Sample(str(root / "cats" / "0.png"), 0)
    assert result.skipped == []
    assert result.files_seen == 5
    assert scan(str(root)) == result  # str and Path both work


def test_corpus_every_entry_accounted(corpus: Corpus) -> None:
    result = scan(corpus.train)
    assert result.classes == ["good", "ünïcode label with spaces"]
    assert len(result.samples) + len(result.skipped) == result.files_seen
    reasons = by_name(result.skipped)
    for name, expected in corpus.expected.items():
        if name in reasons:
            assert expected in reasons[name], name
    # scan-time reasons are all there; the rest are decode-time problems or fine images
    assert reasons == {
        "stray.png": "not inside a class folder",
        ".DS_Store": "hidden file",
        "._plain0.jpg": "hidden file",
        "dangling.jpg": "broken symlink (its target does not exist)",
        "loop": "symlink loop (links back to a parent folder)",
        "readme.txt": "unsupported extension '.txt' (supported: .jpg .jpeg .png .bmp .webp .tif .tiff .gif)",
        "self.jpg": "symlink loop",
    }
    names = {os.path.basename(s.path) for s in result.samples}
    assert "inside.png" in names and "folder.jpg" not in names  # a directory named like an image
    assert "caf\udce9.png" in names  # the raw (surrogate-escaped) name, which opens the file
    assert not any(".git" in s.path for s in result.skipped + result.samples)  # type: ignore[operator]


def test_class_folder_symlink_is_followed(make_folder: Callable[..., Path], tmp_path: Path) -> None:
    root = make_folder({"a": 1, "b": 1})
    extra = make_folder({"c": 2}, name="elsewhere")
    (root / "c").symlink_to(extra / "c", target_is_directory=True)
    (root / "a" / "more").symlink_to(extra / "c", target_is_directory=True)
    result = scan(root)
    assert result.classes == ["a", "b", "c"]
    assert sum(s.label == 0 for s in result.samples) == 3  # nested links are followed, not only loops cut


def test_scan_against_training_classes(make_folder: Callable[..., Path]) -> None:
    val = make_folder({"dogs": 2}, name="val")
    result = scan(val, classes=["cats", "dogs", "owls"])
    assert result.classes == ["cats", "dogs", "owls"]
    assert {s.label for s in result.samples} == {1}  # val may miss classes and have one class


def test_unknown_class_names_both_lists(make_folder: Callable[..., Path]) -> None:
    val = make_folder({"dogs": 1, "wolves": 1}, name="val")
    with pytest.raises(DataError, match=r"'wolves'.*known classes: 'cats', 'dogs'"):
        scan(val, classes=["cats", "dogs"])


def test_missing_path() -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan("/nonexistent/thaw/data")


def test_not_a_folder_or_csv(tmp_path: Path) -> None:
    save_image(tmp_path / "x.png")
    with pytest.raises(DataError, match="neither a folder nor a .csv"):
        scan(tmp_path / "x.png")


def test_no_class_folders(tmp_path: Path) -> None:
    save_image(tmp_path / "data" / "a.png")
    (tmp_path / "data" / ".git").mkdir()
    with pytest.raises(DataError, match="no class folders under .*one subfolder per class"):
        scan(tmp_path / "data")


def test_empty_class_folder(make_folder: Callable[..., Path]) -> None:
    root = make_folder({"cats": 2, "dogs": 2})
    (root / "owls").mkdir()
    (root / "owls" / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError, match=r"class folder '.*owls' has no images: add images or remove the folder"):
        scan(root)
    assert len(scan(root, classes=["cats", "dogs", "owls"]).samples) == 4  # fine for val/test


def test_single_class(make_folder: Callable[..., Path]) -> None:
    root = make_folder({"cats": 2})
    with pytest.raises(DataError, match="found one class 'cats' under .*at least two class folders"):
        scan(root)


def test_no_images_at_all(tmp_path: Path) -> None:
    (tmp_path / "val" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        scan(tmp_path / "val", classes=["cats", "dogs"])


# ------------------------------------------------------------------------------------------------------ CSV


def test_csv_manifest(corpus: Corpus) -> None:
    result = scan(corpus.manifest)
    assert result.classes == ["good", "sea lion 🦭"]
    assert [s.label for s in result.samples] == [0, 0, 1]
    assert all(os.path.exists(s.path) for s in result.samples)
    assert sorted(s.reason for s in result.skipped) == ["row 5: file not found", "row 6: empty label"]
    assert result.files_seen == 5


def test_csv_against_training_classes(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("label,path\ncats,a.png\n\n")
    assert scan(tmp_path / "m.csv", classes=["cats", "dogs"]).samples == [Sample(str(tmp_path / "a.png"), 0)]
    with pytest.raises(DataError, match=r"'cats'; known classes: 'owls'"):
        scan(tmp_path / "m.csv", classes=["owls"])


def test_csv_header_missing(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("file,class\na.png,cats\n")
    with pytest.raises(DataError, match="header row with columns 'path,label' \\(found: file,class\\)"):
        scan(tmp_path / "m.csv")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="found: nothing"):
        scan(tmp_path / "e.csv")


def test_csv_single_label_and_no_rows(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,cats\n")
    with pytest.raises(DataError, match="found one class 'cats'"):
        scan(tmp_path / "m.csv")
    (tmp_path / "n.csv").write_text("path,label\nmissing.png,cats\n")
    with pytest.raises(DataError, match="no usable images"):
        scan(tmp_path / "n.csv")


def test_csv_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_bytes(b"path,label\ncaf\xe9.png,x\n")
    with pytest.raises(DataError, match="not UTF-8"):
        scan(tmp_path / "m.csv")


def test_find_images_and_predict_follow_the_scanner_rules(corpus: Corpus, tmp_path: Path) -> None:
    """`thaw predict FOLDER` finds exactly what `thaw fit` finds in a class folder, and skips the rest alike."""
    from thaw.data.sources import find_images
    from thaw.inference import collect_images

    good = corpus.train / "good"
    scanned = scan(corpus.train)
    in_good = [s.path for s in scanned.samples if s.label == scanned.classes.index("good")]
    skipped_in_good = [s for s in scanned.skipped if s.path.startswith(str(good) + os.sep)]

    samples, skipped = find_images(good)
    assert [s.path for s in samples] == in_good and {s.label for s in samples} == {0}
    assert skipped == skipped_in_good
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert "hidden file" in reasons[".DS_Store"] and "symlink loop" in reasons["loop"]
    assert "broken symlink" in reasons["dangling.jpg"] and "unsupported extension" in reasons["readme.txt"]

    (good / "__MACOSX").mkdir()
    save_image(good / "__MACOSX" / "ghost.png")  # archive debris: not data, as in scan
    (good / ".cache").mkdir()
    save_image(good / ".cache" / "thumb.png")
    linked = tmp_path / "linked"
    linked.symlink_to(good, target_is_directory=True)  # a linked folder is followed
    files, passed_over = collect_images([linked, tmp_path / "nope.jpg", good / "plain0.jpg"])
    found = [os.path.relpath(f, linked) for f in files[:-1]]
    assert found == [os.path.relpath(p, good) for p in in_good]
    assert files[-1] == str(good / "plain0.jpg")  # a file named explicitly is taken as given
    assert not any("ghost" in f or "thumb" in f for f in files)
    assert Skipped(str(tmp_path / "nope.jpg"), "file not found") in passed_over
    assert len(passed_over) == len(skipped_in_good) + 1
