"""End to end in a real headless Chromium: data by upload, train auto, watch progress, report, try, take away.

Playwright drives the system's Chromium (Debian's ``chromium`` package); Playwright's own browser downloads are not
used. Set THAW_APP_SCREENSHOTS=docs/app to write the screenshots of docs/app.md while the test runs.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.conftest import SAMPLE_CLASSES, sample_images

CHROMIUM = next(
    (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p is not None), None
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)"),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser test needs playwright: pip install -e '.[dev]'"
)

SHOTS = os.environ.get("THAW_APP_SCREENSHOTS")
PER_CLASS = 20


@pytest.fixture
def live_app(tmp_path: Path) -> Iterator[str]:
    """The real app served by uvicorn on a free local port, in a thread."""
    import uvicorn

    from thaw.app.server import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(tmp_path / "app", trusted_hosts=["127.0.0.1", "localhost"])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(60)
    sock.close()


def shot(page: object, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def test_label_train_inspect_try_and_take_away_in_a_browser(live_app: str, tmp_path: Path) -> None:
    import timm
    import torch

    expect = sync_api.expect
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(live_app)

        # --- Data: a project with three classes, images uploaded per class
        page.fill("#new-project-name", "fashion")
        page.click("text=Create project")
        for cls in SAMPLE_CLASSES:
            page.fill("#new-class-name", cls)
            page.click("text=Add class")
            card = page.locator(f".class-card[data-class='{cls}']")
            expect(card).to_be_visible()
            card.locator("input[accept='image/*']").set_input_files([str(p) for p in sample_images(cls, PER_CLASS)])
            expect(card.locator(".count")).to_have_text(f"{PER_CLASS} images", timeout=30_000)
        expect(page.locator(".class-card .thumb img")).to_have_count(3 * PER_CLASS)
        # a file that is not an image: refused with its reason, nothing lost
        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        page.locator(".class-card[data-class='Bag'] input[accept='image/*']").set_input_files(str(bad))
        expect(page.locator("#message")).to_contain_text("notes.png: not a usable image")
        expect(page.locator(".class-card[data-class='Bag'] .count")).to_have_text(f"{PER_CLASS} images")
        expect(page.locator("#audit")).to_contain_text("ready to train")
        page.click("#message-close")
        shot(page, "data")

        # --- Train: auto with a 20 s budget at 64 px; progress updates live
        page.click("#tabs a[data-tab=train]")
        page.locator("#budget").fill("1")
        expect(page.locator("#budget-label")).to_have_text("20 s")
        page.select_option("#img-size", "64")
        page.click("#train-button")
        expect(page.locator("#run-status")).to_have_text("training", timeout=15_000)
        # an epoch number pushed by SSE (cached probe epochs are fast: the page may skip from none to several)
        expect(page.locator("#p-epoch")).to_have_text(re.compile(r"^[1-9][0-9]*$"), timeout=240_000)
        expect(page.locator("#p-phase")).not_to_have_text("–")
        expect(page.locator("#run-status")).to_have_text("finished", timeout=300_000)
        expect(page.locator("#p-log")).to_contain_text("decision (phase 1):")
        assert int(page.locator("#p-epoch").inner_text()) >= 2
        shot(page, "train")

        # --- Inspect: the run's report and the list of runs
        page.click("#open-report-button")
        expect(page.locator("#runs-table tbody tr")).to_have_count(1)
        expect(page.locator("#runs-table tbody tr td").nth(1)).to_have_text("finished")
        report = page.frame_locator("#report-frame")
        expect(report.locator("h2", has_text="Confusion matrix")).to_be_visible(timeout=30_000)
        expect(report.locator("h2", has_text="Thaw timeline")).to_be_visible()
        shot(page, "inspect")

        # --- Try: an unseen test image gets a top-k prediction with probabilities
        page.click("#tabs a[data-tab=try]")
        expect(page.locator("#try-run option")).to_have_count(1)
        page.set_input_files("#try-files", str(sample_images("Trouser", 1, split="test")[0]))
        first = page.locator(".prediction").first
        expect(first).to_be_visible(timeout=60_000)
        expect(first.locator(".bar")).to_have_count(3)
        assert first.locator(".bar .label").first.inner_text() in SAMPLE_CLASSES
        assert first.locator(".bar .p").first.inner_text().endswith("%")
        shot(page, "try")

        # --- Take away: the model folder as a zip, reloaded in plain timm; the equivalent command line
        page.click("#tabs a[data-tab=takeaway]")
        command = page.locator("#command-line").inner_text()
        assert command.startswith("thaw fit ") and "--strategy auto" in command
        assert "--time-budget 20s" in command and "--img-size 64" in command
        with page.expect_download() as info:
            page.click("#download-zip")
        archive = tmp_path / "model.zip"
        info.value.save_as(archive)
        shot(page, "takeaway")
        assert errors == []
        browser.close()

    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path / "unzipped")
    model = timm.create_model(f"local-dir:{tmp_path / 'unzipped' / 'model'}", pretrained=True)
    assert sorted(model.pretrained_cfg["label_names"]) == sorted(SAMPLE_CLASSES)  # type: ignore[index]
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
