from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from thaw.errors import CheckpointError
from thaw.report.html import MAX_TOP_LOSSES, THUMBNAIL_SIZE, write_report

from .conftest import write_jsonl

SECTIONS = ["overview", "curves", "timeline", "heatmaps", "confusion", "per-class", "reliability", "top-losses",
            "audit", "warnings"]  # fmt: skip
PLOTS = ["curves", "timeline", "group_drift", "grad_norm", "confusion", "reliability"]


class Page(HTMLParser):
    """Collects the section ids, every <img> and every attribute that could load something from elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.sections.append(str(a.get("id")))
        if tag == "img":
            self.images.append(a)
        for name in ("src", "href"):
            if a.get(name) and tag != "img":
                self.links.append(str(a[name]))
        if tag in ("link", "iframe", "object", "embed") or (tag == "script" and a.get("src")):
            self.links.append(f"<{tag}>")


def parse(path: Path) -> tuple[str, Page]:
    text = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    return text, page


def decode_data_uri(uri: str) -> Image.Image:
    match = re.fullmatch(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", uri)
    assert match, uri[:60]
    image = Image.open(BytesIO(base64.b64decode(match.group(2), validate=True)))
    image.load()  # raises when the data is not a complete image
    assert image.format == {"png": "PNG", "jpeg": "JPEG"}[match.group(1)]
    return image


def test_full_report_has_every_section_and_only_embedded_images(make_run: Callable[..., Path]) -> None:
    run = make_run()
    out = write_report(run)
    assert out == run / "report.html"
    text, page = parse(out)
    assert page.sections == SECTIONS
    assert all(link.startswith("#") for link in page.links), page.links  # nav anchors only, nothing external
    assert "http://" not in text and "https://" not in text
    assert sorted(p.stem for p in (run / "plots").glob("*.png")) == sorted(PLOTS)

    plots = [img for img in page.images if "plot" in (img.get("class") or "")]
    thumbs = [img for img in page.images if "plot" not in (img.get("class") or "")]
    assert len(plots) == len(PLOTS)
    # 24 tiles shown, one of which has its file deleted.
    assert len(thumbs) == MAX_TOP_LOSSES - 1
    for img in page.images:
        assert img.get("alt"), str(img.get("src"))[:40]
        image = decode_data_uri(str(img["src"]))
        if img in thumbs:
            assert max(image.size) <= THUMBNAIL_SIZE
    assert {decode_data_uri(str(t["src"])).format for t in thumbs} == {"PNG", "JPEG"}  # tiny PNGs + a photo
    assert text.count('class="tile"') == MAX_TOP_LOSSES
    assert "image not found" in text
    assert out.stat().st_size < 1_500_000


def test_report_content_is_escaped_and_complete(make_run: Callable[..., Path]) -> None:
    text, _ = parse(write_report(make_run()))
    assert "fox &amp; &lt;hen&gt;" in text
    assert "<hen>" not in text and "scheduled by strategy <" not in text
    overview = text[text.index('id="overview"') : text.index('id="curves"')]
    for expected in ["test_efficientnet", "timm (pretrained=False)", "auto", "train 120", "val 30", "test 40",
                     "12 min 34 s", "Skipped files</th><td>2", "30.00%", "64 px"]:  # fmt: skip
        assert expected in overview, expected
    assert "macro-F1" in overview and "ECE" in overview
    timeline = text[text.index('id="timeline"') : text.index('id="heatmaps"')]
    for expected in ["linear probe", "last-2", "stages.2, head", "0.001", "80.00%", "thaw stages.2",
                     "logme_stages.2 = 1.2340", "gradient signal highest"]:  # fmt: skip
        assert expected in timeline, expected
    audit = text[text.index('id="audit"') : text.index('id="warnings"')]
    for expected in ["truncated JPEG", "/data/train/dog/notes.txt", "a1b2c3d4e5f6", "/data/val/cat/9.png",
                     "1 across splits", "1.08"]:  # fmt: skip
        assert expected in audit, expected
    warnings = text[text.index('id="warnings"') :]
    assert "has only 40 training images" in warnings and "epoch(s) 9" in warnings
    assert "(test split)" in text


def test_top_losses_are_most_confidently_wrong_first(make_run: Callable[..., Path]) -> None:
    text, _ = parse(write_report(make_run()))
    gallery = text[text.index('id="top-losses"') : text.index('id="audit"')]
    confidences = [float(c) for c in re.findall(r"pred: <b[^>]*>[^<]*</b> \(([\d.]+)%\)", gallery)]
    assert len(confidences) == MAX_TOP_LOSSES
    assert confidences == sorted(confidences, reverse=True)
    assert confidences[0] == pytest.approx(94.0) and confidences[-1] == pytest.approx(48.0)
    assert "photo.jpg" in gallery[: gallery.index("deleted_since.png")]  # 94% before 92%
    assert "most confidently wrong of 28 misclassified images (of 40 evaluated)" in gallery


def test_run_without_test_set_uses_val_predictions(make_run: Callable[..., Path]) -> None:
    run = make_run(test=False)
    assert not (run / "eval.json").exists()
    text, page = parse(write_report(run))
    assert page.sections == SECTIONS
    assert "no test set" in text and "(val split)" in text
    assert (run / "plots" / "confusion.png").is_file()  # metrics computed from predictions.jsonl
    assert "test <span class='muted'>none</span>" in text


def test_run_without_optional_files(make_run: Callable[..., Path]) -> None:
    run = make_run()
    for name in ("predictions.jsonl", "eval.json", "audit.json"):
        (run / name).unlink()
    text, page = parse(write_report(run))
    assert page.sections == SECTIONS
    assert "No evaluation in this run" in text and "No predictions.jsonl" in text and "No audit.json" in text
    assert not (run / "plots" / "confusion.png").exists()
    for img in page.images:
        decode_data_uri(str(img["src"]))


def test_old_run_with_minimal_keys(make_run: Callable[..., Path]) -> None:
    """An older run: summary without groups, names, lrs or decisions; metrics without per-group measurements."""
    run = make_run()
    summary = json.loads((run / "summary.json").read_text())
    summary = {k: summary[k] for k in ("strategy", "model", "classes", "best_val_accuracy", "test_accuracy")}
    summary["phases"] = [{"index": 0, "trainable_groups": ["head"], "epochs": 2, "best_val_accuracy": 0.5,
                          "reason": "linear"}]  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    write_jsonl(run / "metrics.jsonl", [{"epoch": e, "phase": 0, "val_accuracy": 0.5} for e in (1, 2)])
    (run / "eval.json").unlink()
    text, page = parse(write_report(run))
    assert page.sections == SECTIONS
    assert "No per-group drift or gradient measurements" in text
    assert (run / "plots" / "timeline.png").is_file() and not (run / "plots" / "grad_norm.png").exists()


def test_summary_only_and_truncated_metrics(make_run: Callable[..., Path]) -> None:
    run = make_run()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "phase": 0, "val_accuracy": 0.5}\n{"epoch": 2, "pha')
    text, _ = parse(write_report(run))
    assert (run / "plots" / "curves.png").is_file()
    (run / "metrics.jsonl").unlink()
    text, _ = parse(write_report(run))
    assert "No per-epoch metrics" in text
    assert (run / "plots" / "timeline.png").is_file()  # drawn from the summary's phases


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        write_report(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="neither summary.json nor metrics.jsonl"):
        write_report(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read .*summary.json"):
        write_report(tmp_path)


@pytest.mark.parametrize("role", ["final", "repeat", "repeat-loser-early"])
def test_the_race_table_says_how_the_winner_was_used(make_run: Callable[..., Path], role: str) -> None:
    """auto's race: the loser's verdict, and the winner continued (``final``) or repeated for a soup (``repeat``),
    with the rung whose early fit decided it when that was the loser's."""
    run = make_run()
    summary = json.loads((run / "summary.json").read_text())
    verdict = {"verdict": "dropped on validation loss: accuracy within noise", "accuracy_diff_lower_bound": -0.1}
    race = {"role": role.removesuffix("-loser-early"), "recipe": "partial", "race": {"2": verdict}}
    if role.startswith("repeat"):
        race |= {"repeats": 4, "rung_min_val_loss_epoch": 6, "rung_epochs": 88}
    if role == "repeat-loser-early":
        race["fitted_early_recipe"] = "full"
    summary["phases"] = [
        {"index": 0, "name": "linear-probe", "trainable_groups": ["head"], "epochs": 7},
        *[
            {
                "index": i,
                "name": f"race-{r}",
                "trainable_groups": ["head"],
                "epochs": 50,
                "planned_seconds": 25.0,
                "seconds": 23.5,
                "selected_val_accuracy": 0.8,
                "selected_val_loss": 0.7,
                "signals": {"role": "candidate", "recipe": r},
            }  # fmt: skip
            for i, r in ((1, "partial"), (2, "full"))
        ],
        {"index": 3, "name": "auto-partial", "trainable_groups": ["head"], "epochs": 90, "signals": race},
    ]
    (run / "summary.json").write_text(json.dumps(summary))
    text, _ = parse(write_report(run))
    table = text[text.index("The race") :]
    assert "dropped on validation loss" in table
    if role.startswith("repeat"):
        assert "repeated 4 time(s) for a weight soup" in table and "epoch 6 of 88" in table
        assert ("(the full rung" in table) is (role == "repeat-loser-early")
    else:
        assert "continued for the rest of the budget" in table
