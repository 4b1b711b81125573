"""The bad-input corpus through `thaw fit`, the way a user meets it: finishes, and the console names every skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.data.conftest import Corpus
from thaw.cli import main


def test_fit_on_the_bad_input_corpus_lists_every_skipped_file(
    corpus: Corpus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "fit",
            str(corpus.train),
            "--val",
            str(corpus.val),
            "--model",
            "test_efficientnet",
            "--random-init",
            "--img-size",
            "32",
            "--strategy",
            "linear",
            "--probe-epochs",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    audit = json.loads((out / "audit.json").read_text())
    skipped = audit["skipped"]
    expected_skips = {name: reason for name, reason in corpus.expected.items() if reason != "ok"}
    by_name = {Path(s["path"]).name: s["reason"] for s in skipped if s["split"] == "train"}
    assert set(by_name) == set(expected_skips)
    for name, fragment in expected_skips.items():
        assert fragment in by_name[name], (name, by_name[name])
    for s in skipped:  # the console summary names each skipped file with its reason
        assert s["path"] in err and s["reason"] in err
    # nothing lost: every file seen is either used or skipped with a reason
    for split, seen in audit["files_seen"].items():
        assert seen == audit["images_used"][split] + sum(1 for s in skipped if s["split"] == split)
    assert audit["cross_split_duplicates"] == 1  # val/good/copy.jpg is train/good/plain0.jpg
    assert "copy.jpg" in err
