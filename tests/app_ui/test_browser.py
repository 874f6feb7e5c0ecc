"""The web page in a real browser: Debian's Chromium driven by Playwright against a real server process."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.factories import blob_image, jpeg_bytes, png_bytes
from tests.server import REPO, running_server

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test extra")
if not CHROMIUM.exists():
    pytest.skip(f"no browser at {CHROMIUM} (.ci/install-browser.sh installs Debian's chromium)",
                allow_module_level=True)

LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path):
    with running_server(tiny_checkpoint) as url:
        yield url


@pytest.fixture
def page(tmp_path: Path):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        yield context.new_page()
        browser.close()


def test_page_segments_an_upload_and_scores_a_ground_truth(server: str, page, tmp_path: Path) -> None:
    photo = tmp_path / "pet.jpg"
    photo.write_bytes(jpeg_bytes(blob_image(160, 120, seed=5)[0]))
    direct = httpx.post(f"{server}/segment", files={"image": photo.read_bytes()}, timeout=60).json()

    page.goto(server + "/")
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#overlay[data-ready='1']", timeout=60_000)
    assert page.text_content("#fg-prob") == f"{direct['foreground_probability'] * 100:.1f}%"
    assert page.text_content("#fg-frac") == f"{direct['foreground_fraction'] * 100:.1f}%"
    assert page.get_attribute("#download-mask", "aria-disabled") == "false"
    assert page.get_attribute("#download-cutout", "aria-disabled") == "false"

    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(direct["mask_png"]))))
    truth = tmp_path / "truth.png"
    truth.write_bytes(png_bytes(mask))
    page.set_input_files("#gt", str(truth))
    page.wait_for_function("document.querySelector('#dice').textContent === '1.000'", timeout=60_000)
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    page.screenshot(path=str(artifacts / "ui.png"), full_page=True)


def test_page_shows_api_errors_readably(server: str, page, tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("this is not a photo")
    page.goto(server + "/")
    page.set_input_files("#file", str(bogus))
    page.wait_for_selector("#error.show", timeout=60_000)
    message = page.text_content("#error")
    assert message.startswith("Error 415") and "not an image format" in message
