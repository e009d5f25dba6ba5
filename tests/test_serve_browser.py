"""The web page in a real browser: Playwright for Python driving Debian's chromium (/usr/bin/chromium).

A server runs on a free localhost port with a real SegFormer-B0 (random weights made decisive, 128x128 input). The
tests upload a real photo and check the image the page shows against the API's own answer and the photo, switch
views, download, show errors, stream chromium's fake webcam over the WebSocket, lay the page out on a phone-sized
screen, and ask for an API key. Skipped when chromium or playwright is missing; no browser is ever downloaded.

Set PEOPLESEG_SCREENSHOT_DIR to keep the screenshots (photo.png, phone.png, webcam.png) for a person to look at.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="needs playwright for Python"),
    pytest.mark.skipif(importlib.util.find_spec("uvicorn") is None, reason="needs the serve extra (uvicorn)"),
]

PHOTO = Path(__file__).parent / "data" / "astronaut.jpg"
FAKE_MEDIA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
TIMEOUT_MS = 30_000


class ThreadedServer:
    """uvicorn serving `app` on a free localhost port, in a thread of this process."""

    def __init__(self, app: object) -> None:
        import uvicorn

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="peopleseg-test-server", daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.perf_counter() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.perf_counter() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def _app(**config: object) -> object:
    from test_serve import decisive_segmenter

    from peopleseg.serve import ServeConfig, create_app

    return create_app(ServeConfig(**config), decisive_segmenter())


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer(_app(max_upload_mb=1.0)) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FAKE_MEDIA)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: object, server: ThreadedServer) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    context.grant_permissions(["camera"], origin=server.url)
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    yield opened
    context.close()


def _shown_bytes(page: object, selector: str = "#result") -> bytes:
    """The bytes of the image the page shows (its blob URL, fetched inside the page)."""
    values = page.evaluate(
        """async (selector) => {
            const response = await fetch(document.querySelector(selector).src);
            return Array.from(new Uint8Array(await response.arrayBuffer()));
        }""",
        selector,
    )
    return bytes(values)


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _screenshot(page: object, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("PEOPLESEG_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    assert _decode(path.read_bytes()).shape[0] > 100
    return path


def _api(server: ThreadedServer, fmt: str, **params: str) -> bytes:
    import httpx

    files = {"file": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")}
    response = httpx.post(f"{server.url}/v1/segment", params={"format": fmt, **params}, files=files, timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def _wait_for_view(page: object, view: str) -> None:
    page.wait_for_selector(f'#result[data-state="ready"][data-format="{view}"]')


def test_a_dropped_photo_shows_the_people_highlighted(page: object, server: ThreadedServer, tmp_path: Path) -> None:
    page.goto(server.url)
    page.wait_for_function("document.getElementById('model').textContent.includes('segformer_b0')")
    page.set_input_files("#file", str(PHOTO))
    _wait_for_view(page, "overlay")

    shown = _shown_bytes(page)
    assert shown == _api(server, "overlay")  # the page shows exactly what the API answers
    overlay = _decode(shown).astype(np.int16)
    original = _decode(PHOTO.read_bytes()).astype(np.int16)
    person = _decode(_api(server, "mask")) == 1
    assert overlay.shape == original.shape == (512, 512, 3) and 0.01 < person.mean() < 0.99
    far = cv2.dilate(person.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    tint = (overlay - original)[person].mean(axis=0)
    assert tint[0] > 15 and tint[1] < 0 and tint[2] < 0  # people move towards red
    assert np.abs(overlay - original)[far].mean() < 3  # the background is the photo (up to JPEG noise)
    stats = page.inner_text("#stats")
    assert re.search(r"\d+ (people|person) · \d+\.\d% person pixels · 512x512 · \d+ ms", stats), stats
    _screenshot(page, tmp_path, "photo.png")

    page.click('#views [data-view="mask"]')
    _wait_for_view(page, "mask")
    np.testing.assert_array_equal(_decode(_shown_bytes(page)), person.astype(np.uint8) * 255)
    page.click('#views [data-view="cutout"]')
    _wait_for_view(page, "cutout")
    assert _decode(_shown_bytes(page)).shape == (512, 512, 4)
    page.click('#views [data-view="blur"]')
    _wait_for_view(page, "blur")
    assert _shown_bytes(page) == _api(server, "blur")

    with page.expect_download() as download:
        page.click("#download")
    assert download.value.suggested_filename == "astronaut_blur.jpg"
    assert _decode(Path(download.value.path()).read_bytes()).shape == (512, 512, 3)


def test_the_page_explains_errors(page: object, server: ThreadedServer, tmp_path: Path) -> None:
    page.goto(server.url)
    page.wait_for_function("document.getElementById('model').textContent.startsWith('Model')")
    notes = tmp_path / "notes.jpg"
    notes.write_text("a shopping list, not a photo")
    page.set_input_files("#file", str(notes))
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error").startswith("That file is not an image")

    damaged = tmp_path / "damaged.jpg"
    damaged.write_bytes(PHOTO.read_bytes()[:3000])
    page.set_input_files("#file", str(damaged))
    page.wait_for_function("document.getElementById('error').dataset.code === 'corrupt_image'")
    assert page.inner_text("#error").startswith("That image is damaged")

    big = tmp_path / "huge.jpg"
    big.write_bytes(PHOTO.read_bytes() + os.urandom(1_200_000))  # over the server's 1 MiB limit
    page.set_input_files("#file", str(big))
    page.wait_for_function("document.getElementById('error').dataset.code === 'upload_too_large'")
    assert "too large" in page.inner_text("#error") and "limit is 1.0 MB" in page.inner_text("#error")
    page.evaluate("state.limits = null")  # skip the page's own check: the server's 413 must read as clearly
    page.set_input_files("#file", str(big))
    page.wait_for_function("document.getElementById('error').textContent.includes('over the limit of 1048576')")
    assert page.inner_text("#error").startswith("That file is too large")


def test_the_webcam_streams_live_over_the_websocket(page: object, server: ThreadedServer, tmp_path: Path) -> None:
    page.goto(server.url)
    page.wait_for_function("document.getElementById('model').textContent.startsWith('Model')")
    page.click("#webcam")
    page.wait_for_function("Number(document.getElementById('fps').dataset.frames || 0) >= 5")
    assert re.fullmatch(r"\d+\.\d FPS", page.inner_text("#fps"))
    assert float(page.inner_text("#fps").split()[0]) > 0
    size = page.evaluate("(c => [c.width, c.height])(document.getElementById('live-canvas'))")
    assert size[0] >= 160 and size[1] >= 120
    drawn = page.evaluate(
        """() => { const c = document.getElementById('live-canvas');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let sum = 0; for (let i = 0; i < d.length; i += 4) sum += d[i] + d[i + 1] + d[i + 2];
                   return sum / (d.length / 4); }"""
    )
    assert drawn > 5  # the camera's picture is on the canvas, not a blank one
    assert re.search(r"person pixels", page.inner_text("#live-stats"))
    _screenshot(page, tmp_path, "webcam.png")
    page.click("#webcam")
    assert page.inner_text("#fps") == "stopped" and page.get_attribute("#webcam", "aria-pressed") == "false"
    assert page.is_hidden("#error")
    import httpx

    frames = re.search(r"^peopleseg_stream_frames_total (\d+)", httpx.get(f"{server.url}/metrics").text, re.M)
    assert frames and int(frames.group(1)) >= 5


def test_a_photo_picked_while_the_webcam_runs_replaces_the_live_view(page: object, server: ThreadedServer) -> None:
    page.goto(server.url)
    page.wait_for_function("document.getElementById('model').textContent.startsWith('Model')")
    page.click("#webcam")
    page.wait_for_function("Number(document.getElementById('fps').dataset.frames || 0) >= 1")
    page.set_input_files("#file", str(PHOTO))
    _wait_for_view(page, "overlay")
    assert page.inner_text("#fps") == "stopped"
    assert page.is_visible("#photo-result") and page.is_hidden("#live")  # no frozen webcam frame beside the photo


def test_the_api_docs_say_where_to_look_when_their_cdn_cannot_be_reached(page: object, server: ThreadedServer) -> None:
    page.route("https://cdn.jsdelivr.net/**", lambda route: route.abort())  # offline, whatever this machine can reach
    page.goto(f"{server.url}/docs")
    assert "cannot reach it" in page.inner_text("#swagger-ui")
    page.click("#swagger-ui a")
    page.wait_for_url("**/openapi.json")
    assert '"/v1/segment"' in page.content()


def test_the_page_fits_a_phone_screen(browser: object, server: ThreadedServer, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, device_scale_factor=2, is_mobile=True)
    try:
        phone = context.new_page()
        phone.set_default_timeout(TIMEOUT_MS)
        phone.goto(server.url)
        phone.set_input_files("#file", str(PHOTO))
        _wait_for_view(phone, "overlay")
        assert phone.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scrolling
        box = phone.locator("#result").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 375
        for view in ("overlay", "mask", "cutout", "blur"):
            button = phone.locator(f'#views [data-view="{view}"]').bounding_box()
            assert button["height"] >= 40 and button["x"] + button["width"] <= 375  # tappable, on screen
        _screenshot(phone, tmp_path, "phone.png")
    finally:
        context.close()


def test_the_page_asks_for_an_api_key(browser: object) -> None:
    with ThreadedServer(_app(api_keys=("letmein",))) as keyed:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(keyed.url)
            page.wait_for_selector("#key-panel:not([hidden])")
            page.fill("#api-key", "letmein")
            page.click("#key-form button")
            page.wait_for_function("document.getElementById('model').textContent.startsWith('Model')")
            assert page.is_hidden("#key-panel")
            page.set_input_files("#file", str(PHOTO))
            _wait_for_view(page, "overlay")
            assert _decode(_shown_bytes(page)).shape == (512, 512, 3)
        finally:
            context.close()
