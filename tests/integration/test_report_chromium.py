"""Render report.html in headless Chromium: every image decodes in a real browser and the page draws."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from thaw.report.html import write_report

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_COPY = Path("/tmp/report_screenshot.png")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)"
)


def chromium(user_data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={user_data}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def test_report_renders_in_headless_chromium(make_run: Callable[..., Path], tmp_path: Path) -> None:
    report = write_report(make_run())
    expected_images = report.read_text(encoding="utf-8").count("<img ")
    url = report.resolve().as_uri()

    dom = chromium(tmp_path / "profile-dom", "--dump-dom", url).stdout
    match = re.search(r'<body[^>]*data-images-ok="(\w+)"', dom)
    assert match, "the inline check script did not run: " + dom[:300]
    assert match.group(1) == "true", "some <img> did not decode in Chromium"
    count = re.search(r'data-images-count="(\d+)"', dom)
    assert count and int(count.group(1)) == expected_images > 20

    shot = tmp_path / "report.png"
    chromium(tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,4000", url)
    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        pixels = np.asarray(im.convert("L"), dtype=float)
    # Non-trivial: the page is mostly white but has text and plots all the way down.
    assert pixels.std() > 20
    assert (pixels[:2000] < 128).mean() > 0.01 and (pixels[2000:] < 128).mean() > 0.01
    try:
        shutil.copyfile(shot, SCREENSHOT_COPY)  # for a person to look at; not needed by the assertions
    except OSError:
        pass
