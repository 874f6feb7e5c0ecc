"""The web page in a real browser: Debian's Chromium, driven by Playwright, against a real ``python -m app``.

No browser is downloaded: the test uses ``/usr/bin/chromium`` (``.ci/install-browser.sh`` installs it) and
skips with a reason when it is absent.
"""
from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.factories import blob_image, jpeg_bytes, png_bytes
from tests.server import free_port, wait_until_ready

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
INDEX_HTML = REPO / "app" / "static" / "index.html"
CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
API_KEY = "s3cret-key"

pytestmark = pytest.mark.slow
if not CHROMIUM.exists():
    pytest.skip(f"no browser at {CHROMIUM} (run .ci/install-browser.sh to install Debian's chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (a test extra) is not installed")


# ---------------------------------------------------------------- the server
def start_server(checkpoint: Path, log: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """Start ``python -m app`` on a free port, wait for /ready. stderr goes to ``log``: a pipe could fill."""
    port = free_port()
    environment = {**os.environ, "PETSEG_CHECKPOINT": str(checkpoint), "PETSEG_DEVICE": "cpu", **env}
    stderr = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=REPO, env=environment, stdout=subprocess.DEVNULL, stderr=stderr)
    stderr.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, url, 60, lambda: log.read_text())
    except RuntimeError:
        stop_server(proc)
        raise
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> str:
    proc, url = start_server(tiny_checkpoint, tmp_path_factory.mktemp("server") / "stderr.log")
    request.addfinalizer(lambda: stop_server(proc))
    return url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        # A persistent context is the way to give Chromium a fresh user data dir of our own.
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True,
            viewport={"width": 1280, "height": 860}, accept_downloads=True)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    page = browser.new_page()
    page.set_default_timeout(30_000)
    console_errors: list[str] = []
    page.on("pageerror", lambda exc: console_errors.append(str(exc)))
    yield page
    page.close()
    assert not console_errors, f"JavaScript errors on the page: {console_errors}"


# ---------------------------------------------------------------- helpers
def direct_segment(url: str, photo: Path, threshold: float = 0.5, **headers: str) -> dict:
    response = httpx.post(f"{url}/segment", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
                          data={"threshold": str(threshold)}, headers=headers, timeout=60)
    response.raise_for_status()
    return response.json()


def shown_percent(page, selector: str) -> float:
    text = page.text_content(selector) or ""
    assert text.endswith("%"), f"{selector} shows {text!r}, not a percentage"
    return float(text.rstrip("%"))


def assert_same_numbers(page, answer: dict) -> None:
    """The page shows one decimal of a percentage: equal to the API's answer to that precision."""
    for selector, key in (("#fg-prob", "foreground_probability"), ("#fg-frac", "foreground_fraction")):
        assert shown_percent(page, selector) == pytest.approx(answer[key] * 100, abs=0.05 + 1e-9), selector


def set_threshold(page, value: float) -> None:
    page.eval_on_selector("#threshold", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', "
                                        "{bubbles: true})); }", str(value))


def wait_for_text(page, selector: str, text: str) -> None:
    page.wait_for_function("([s, t]) => document.querySelector(s).textContent.trim() === t",
                           arg=[selector, text])


def decode_png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "pet.jpg"
    path.write_bytes(jpeg_bytes(blob_image(160, 120, seed=5)[0]))
    return path


# ---------------------------------------------------------------- tests
def test_page_segments_scores_and_downloads(server: str, page, photo: Path, tmp_path: Path) -> None:
    direct = direct_segment(server, photo)

    page.goto(server + "/")
    page.wait_for_selector("#model .chip b")  # the model line from GET /model
    model_line = page.text_content("#model")
    assert "resnet34_unet" in model_line and "cpu" in model_line and "epoch 1" in model_line
    assert "validation Dice 0.500" in model_line

    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#overlay[data-ready='1']")
    page.wait_for_function("/\\d/.test(document.querySelector('#fg-prob').textContent)")
    assert_same_numbers(page, direct)
    assert page.text_content("#dice") == "–"
    assert "ms" in page.text_content("#time") and "total" in page.text_content("#time")
    assert page.is_visible("#overlay") and page.is_visible("#mask")
    overlay_size = page.eval_on_selector("#overlay", "c => [c.width, c.height]")
    assert overlay_size == [160, 120]

    # The slider re-runs segmentation (debounced) with the new threshold.
    stricter = direct_segment(server, photo, threshold=0.55)
    set_threshold(page, 0.55)
    assert page.text_content("#threshold-value") == "0.55"
    wait_for_text(page, "#fg-frac", f"{stricter['foreground_fraction'] * 100:.1f}%")
    assert_same_numbers(page, stricter)
    set_threshold(page, 0.5)
    wait_for_text(page, "#fg-frac", f"{direct['foreground_fraction'] * 100:.1f}%")

    # The service's own mask as ground truth: Dice is perfect.
    mask = np.asarray(decode_png(base64.b64decode(direct["mask_png"])))
    truth = tmp_path / "truth.png"
    truth.write_bytes(png_bytes(mask))
    page.set_input_files("#gt", str(truth))
    wait_for_text(page, "#dice", "1.000")
    assert page.is_visible("#gt-clear")

    # Downloads: the mask as the API returned it, and a full-size RGBA cutout.
    with page.expect_download() as download_info:
        page.click("#download-mask")
    download = download_info.value
    assert download.suggested_filename == "pet_mask.png"
    assert Path(download.path()).read_bytes() == base64.b64decode(direct["mask_png"])
    page.wait_for_selector("#cutout[data-ready='1']")  # the download is the preview's own file
    with page.expect_download() as download_info:
        page.click("#download-cutout")
    download = download_info.value
    assert download.suggested_filename == "pet_cutout.png"
    cutout = decode_png(Path(download.path()).read_bytes())
    assert cutout.mode == "RGBA" and cutout.size == (160, 120)
    assert not page.is_visible("#error")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS / "ui-mobile.png"), full_page=True)


def test_page_takes_a_dropped_file_and_shows_api_errors_readably(server: str, page, photo: Path,
                                                                   tmp_path: Path) -> None:
    page.goto(server + "/")
    # Drag and drop: a DataTransfer carrying the photo, dropped on the zone.
    page.evaluate("""([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], name, {type: 'image/jpeg'}));
        const zone = document.querySelector('#drop-file');
        zone.dispatchEvent(new DragEvent('dragenter', {dataTransfer: data, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
    }""", [base64.b64encode(photo.read_bytes()).decode(), photo.name])
    page.wait_for_selector("#overlay[data-ready='1']")
    assert_same_numbers(page, direct_segment(server, photo))
    assert page.text_content("#file-name") == "pet.jpg"

    bogus = tmp_path / "notes.txt"
    bogus.write_text("this is not a photo")
    page.set_input_files("#file", str(bogus))
    page.wait_for_selector("#error:not([hidden])")
    message = page.text_content("#error")
    assert message.startswith("Error 415: ") and "not an image format" in message
    assert page.text_content("#fg-prob") == "–"  # the previous photo's numbers are gone
    assert page.get_attribute("#download-mask", "aria-disabled") == "true"

    # A FastAPI validation error (detail is a list) reads as "field: message".
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#overlay[data-ready='1']")
    page.eval_on_selector("#threshold", "el => { el.min = '-1'; el.value = '-0.5'; "
                                        "el.dispatchEvent(new Event('input', {bubbles: true})); }")
    page.wait_for_selector("#error:not([hidden])")
    message = page.text_content("#error")
    assert message.startswith("Error 422: threshold: ") and "[object Object]" not in message
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-error.png"), full_page=True)


def test_page_asks_for_an_api_key_when_the_service_wants_one(tiny_checkpoint: Path, tmp_path: Path, page,
                                                             photo: Path) -> None:
    proc, url = start_server(tiny_checkpoint, tmp_path / "stderr.log", PETSEG_API_KEY=API_KEY)
    try:
        # The page itself is static; serve it from the file so this test does not depend on whether the
        # service lets GET / through without a key.
        page.route(url + "/", lambda route: route.fulfill(path=str(INDEX_HTML), content_type="text/html"))
        page.goto(url + "/")
        page.wait_for_selector("#key-box:not([hidden])")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#error:not([hidden])")
        assert page.text_content("#error").startswith("Error 401: ")

        page.fill("#api-key", API_KEY)
        page.click("#key-box button[type=submit]")
        page.wait_for_selector("#overlay[data-ready='1']")
        assert_same_numbers(page, direct_segment(url, photo, **{"X-API-Key": API_KEY}))
        page.wait_for_selector("#model .chip b")
        assert not page.is_visible("#error")
    finally:
        stop_server(proc)


def preview_bytes(page) -> bytes:
    """The cutout preview's file, as the page holds it (a blob: URL)."""
    return base64.b64decode(page.evaluate("""async () => {
        const bytes = new Uint8Array(await (await fetch(document.querySelector('#cutout').src)).arrayBuffer());
        let text = '';
        for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
        return btoa(text);
    }"""))


def wait_for_new_preview(page, previous_src: str) -> None:
    page.wait_for_function("(old) => { const img = document.querySelector('#cutout');"
                           " return img.src && img.src !== old && img.dataset.ready === '1'; }", arg=previous_src)


def direct_image(url: str, photo: Path, **form: str) -> bytes:
    response = httpx.post(f"{url}/segment?format=png", files={"image": (photo.name, photo.read_bytes(),
                                                                        "image/jpeg")},
                          data={"threshold": "0.5", **form}, timeout=60)
    response.raise_for_status()
    return response.content


def test_page_cutout_preview_follows_soft_edges_background_and_crop(server: str, page, photo: Path) -> None:
    page.goto(server + "/")
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#cutout[data-ready='1']")
    # Soft edges by default: the same file the API gives for output=alpha, on the checkerboard.
    assert preview_bytes(page) == direct_image(server, photo, output="alpha")
    assert page.text_content("#cutout-size") == "160×120"

    src = page.get_attribute("#cutout", "src")
    page.eval_on_selector("#bg-colour", "el => { el.value = '#00ff00'; "
                                        "el.dispatchEvent(new Event('input', {bubbles: true})); }")
    wait_for_new_preview(page, src)
    assert not page.is_checked("#bg-transparent")
    coloured = preview_bytes(page)
    assert coloured == direct_image(server, photo, output="alpha", background="#00ff00")
    assert decode_png(coloured).mode == "RGB"

    src = page.get_attribute("#cutout", "src")
    page.uncheck("#soft")
    wait_for_new_preview(page, src)
    assert preview_bytes(page) == direct_image(server, photo, output="cutout", background="#00ff00")

    assert page.is_disabled("#crop-margin")
    src = page.get_attribute("#cutout", "src")
    page.check("#crop")
    page.fill("#crop-margin", "2")
    page.wait_for_function("() => document.querySelector('#cutout-size').textContent.includes('cropped')")
    wait_for_new_preview(page, src)
    page.wait_for_timeout(600)  # the margin's debounce: let the last request land
    page.wait_for_selector("#cutout[data-ready='1']")
    expected = direct_image(server, photo, output="cutout", background="#00ff00", crop="true", crop_margin="2")
    assert preview_bytes(page) == expected
    width, height = decode_png(expected).size
    assert page.text_content("#cutout-size") == f"{width}×{height} · cropped"
    with page.expect_download() as download_info:
        page.click("#download-cutout")
    assert Path(download_info.value.path()).read_bytes() == expected
    assert not page.is_visible("#error")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-cutout.png"), full_page=True)


def test_page_shows_the_crop_refusal_readably(server: str, page, photo: Path) -> None:
    page.goto(server + "/")
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#cutout[data-ready='1']")
    page.uncheck("#soft")  # the hard cutout follows the threshold (the soft alpha does not)
    page.check("#crop")
    # every text the error line shows from here on: the refusal must not blink away and back
    page.evaluate("""() => { window.errorTexts = [];
        new MutationObserver(() => window.errorTexts.push(document.querySelector('#error').textContent))
            .observe(document.querySelector('#error'), {childList: true}); }""")
    set_threshold(page, 1.0)  # nothing is pet: nothing to crop to
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error").startswith("Error 422: crop: no pet found in the image (at threshold 1)")
    assert page.is_visible("#cutout-empty")
    wait_for_text(page, "#status", "Done · threshold 1.00")  # the mask request came back fine...
    page.wait_for_timeout(500)  # ...and the cutout request it starts has had time to answer
    texts = page.evaluate("window.errorTexts")
    assert texts and all(text.startswith("Error 422: crop") for text in texts), texts
