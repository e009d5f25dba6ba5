"""A bounded hypothesis fuzz of the service's surface (every route in the OpenAPI document, the upload formats, the
WebSocket): whatever comes in, the answer is never a 500, and every refusal is the one-line JSON error."""

from __future__ import annotations

import io
import json
import string
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("httpx", reason="the serve tests need httpx")
hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_serve import png_header_only, stand_in  # noqa: E402

from peopleseg.serve import ServeConfig, create_app  # noqa: E402

FUZZ = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
MAX_UPLOAD_MB = 0.05
CONFIG = ServeConfig(max_upload_mb=MAX_UPLOAD_MB, max_pixels=200_000, api_keys=())
REFUSALS = {400, 404, 405, 413, 422, 426}  # 426: /v1/stream is a WebSocket


@pytest.fixture(scope="module")
def api() -> TestClient:
    with TestClient(create_app(CONFIG, stand_in())) as client:
        yield client


def _check(response, allowed: set[int]) -> None:
    assert response.status_code != 500, response.text
    assert response.status_code in allowed, (response.status_code, response.text)
    if response.status_code >= 400 and response.request.method != "HEAD":
        body = response.json()
        assert set(body) == {"error", "code", "status"} and body["status"] == response.status_code
        assert "\n" not in body["error"] and "Traceback" not in body["error"]


@st.composite
def images(draw: st.DrawFn) -> bytes:
    """Real images of many modes and formats, sometimes truncated or with flipped bytes."""
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "CMYK", "1", "LA", "F"]))
    width, height = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA").convert(mode) if mode not in ("I;16", "F") else None
    if image is None:
        image = Image.fromarray(pixels[..., 0].astype(np.float32), "F").convert(mode) if mode == "F" else None
        image = image or Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        buffer = io.BytesIO()
        image.save(buffer, format="TIFF")  # TIFF stores every one of these modes
    data = buffer.getvalue()
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip" and data:
        position = draw(st.integers(0, len(data) - 1))
        data = data[:position] + bytes([data[position] ^ draw(st.integers(1, 255))]) + data[position + 1 :]
    return data


def _small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 9), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


bodies = st.one_of(
    images(),
    st.binary(max_size=300),
    st.builds(png_header_only, st.integers(1, 200_000), st.integers(1, 200_000)),
    st.just(b"\xff\xd8\xff" + b"\0" * 70_000),  # a JPEG start, then over the upload limit
)
text = st.text(alphabet=string.printable, max_size=12)
FORMATS = ["mask", "overlay", "cutout", "blur", "json"]


def _post(api: TestClient, body: bytes, params: dict[str, str], packaging: str):
    if packaging == "multipart":
        return api.post("/v1/segment", params=params, files={"file": ("x.bin", body, "image/png")})
    if packaging == "multipart-other-name":
        return api.post("/v1/segment", params=params, files={"upload": ("x", body)}, data={"note": "hi"})
    content_type = {
        "raw-image": "image/jpeg",
        "raw-none": None,
        "urlencoded": "application/x-www-form-urlencoded",
        "odd": "multipart/form-data; boundary=\x7f",
    }[packaging]
    headers = {"Content-Type": content_type} if content_type else {}
    return api.post("/v1/segment", params=params, content=body, headers=headers)


packagings = st.sampled_from(["raw-image", "raw-none", "multipart", "multipart-other-name", "urlencoded", "odd"])


@settings(FUZZ, max_examples=150)
@given(
    body=bodies,
    fmt=st.sampled_from(FORMATS),
    encoding=st.sampled_from(["jpeg", "png"]),
    binary_255=st.sampled_from(["true", "false", "1", "0"]),
    packaging=packagings,
)
def test_segment_answers_any_upload_without_a_500(
    api: TestClient, body: bytes, fmt: str, encoding: str, binary_255: str, packaging: str
) -> None:
    response = _post(api, body, {"format": fmt, "encoding": encoding, "binary_255": binary_255}, packaging)
    _check(response, {200} | REFUSALS)


@FUZZ
@given(
    fmt=st.one_of(st.sampled_from(FORMATS), text),
    encoding=st.one_of(st.sampled_from(["jpeg", "png"]), text),
    binary_255=st.one_of(st.sampled_from(["true", "false"]), text),
    extra=st.dictionaries(text, text, max_size=2),
    packaging=packagings,
)
def test_segment_answers_any_parameters_without_a_500(
    api: TestClient, fmt: str, encoding: str, binary_255: str, extra: dict[str, str], packaging: str
) -> None:
    params = {**extra, "format": fmt, "encoding": encoding, "binary_255": binary_255}
    _check(_post(api, _small_png(), params, packaging), {200} | REFUSALS)


ROUTES = "/ /healthz /readyz /metrics /v1/models /v1/segment /v1/stream /openapi.json /docs /static/app.js"
route_paths = st.sampled_from(ROUTES.split())
random_paths = st.text(alphabet=string.ascii_letters + string.digits + "/._-~%", max_size=30).map(lambda p: "/" + p)


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    path=st.one_of(route_paths, random_paths),
    query=st.dictionaries(st.sampled_from(["format", "encoding", "binary_255", "x", "alpha"]), text, max_size=3),
    body=st.binary(max_size=64),
)
def test_every_route_and_method_answers_without_a_500(
    api: TestClient, method: str, path: str, query: dict[str, str], body: bytes
) -> None:
    url = quote(path, safe="/%._-~") + (
        "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items()) if query else ""
    )
    response = api.request(method, url, content=body if method in ("POST", "PUT", "PATCH") else None)
    _check(response, {200} | REFUSALS)


def test_the_fuzzed_routes_are_those_of_the_openapi_document(api: TestClient) -> None:
    documented = set(api.get("/openapi.json").json()["paths"])
    assert documented == {"/healthz", "/readyz", "/metrics", "/v1/models", "/v1/segment"}


messages = st.lists(
    st.one_of(
        images().map(lambda data: ("bytes", data)),
        st.binary(max_size=200).map(lambda data: ("bytes", data)),
        text.map(lambda value: ("text", value)),
        st.dictionaries(st.sampled_from(["reset", "x", "alpha"]), st.one_of(st.booleans(), text), max_size=2).map(
            lambda value: ("text", json.dumps(value))
        ),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=messages)
def test_the_stream_answers_every_message_and_stays_open(api: TestClient, sequence: list[tuple[str, object]]) -> None:
    with api.websocket_connect("/v1/stream") as ws:
        for kind, payload in sequence:
            ws.send_bytes(payload) if kind == "bytes" else ws.send_text(payload)
            reply = ws.receive_json()
            assert "frame" in reply or reply.get("ok") is True or reply["status"] in (400, 413, 422), reply
        ws.send_text(json.dumps({"reset": True}))
        assert ws.receive_json()["ok"] is True  # still open and answering
