"""`peopleseg serve`: every endpoint and every error path, through FastAPI's test client (no network).

Most tests use `RedIsPerson`, a stand-in backend that calls bright red pixels "person", so answers can be checked
pixel for pixel; a few run a real SegFormer-B0 at 128x128 to cover the real model path.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="the serve tests need httpx")

from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from peopleseg.errors import ConfigError, ModelError, PeoplesegError  # noqa: E402
from peopleseg.infer.segmenter import Segmenter  # noqa: E402
from peopleseg.models import ModelInfo, build_model  # noqa: E402
from peopleseg.models.info import HALF_MEAN, HALF_STD  # noqa: E402
from peopleseg.serve.app import create_app  # noqa: E402
from peopleseg.serve.auth import ApiKeys  # noqa: E402
from peopleseg.serve.batcher import MicroBatcher, QueueFull  # noqa: E402
from peopleseg.serve.command import add_serve_parser, config_from_args  # noqa: E402
from peopleseg.serve.config import ServeConfig, load_serve_config, read_keys_file  # noqa: E402
from peopleseg.serve.rle import compress_counts, encode_rle, rle_counts  # noqa: E402

DATA = Path(__file__).parent / "data"
HEIGHT, WIDTH = 64, 96  # the stand-in's network input: photos of this size are predicted exactly
PERSON_BOX = (24, 8, 56, 48)  # x0, y0, x1, y1 of the red "person", on the model's 4-pixel grid


class RedIsPerson:
    """A stand-in backend: logits at 1/4 resolution saying 'person' where the red channel is bright."""

    name = "fake"
    output_kind = "logits"
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.info = ModelInfo(arch="fake", mean=HALF_MEAN, std=HALF_STD, input_size=(HEIGHT, WIDTH))
        self.batches: list[int] = []

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(pixels))
        red = F.avg_pool2d(pixels[:, :1], 4) * 8
        return torch.cat([-red, red], dim=1)


class GatedBackend(RedIsPerson):
    """RedIsPerson that waits for `gate` on every batch, so a test can hold the model busy."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        assert self.gate.wait(20), "the test never opened the gate"
        return super().__call__(pixels)


class Exploding(RedIsPerson):
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("secret internals at /home/model.py line 42")


def stand_in(backend: RedIsPerson | None = None) -> Segmenter:
    return Segmenter("segformer_b0", backend=backend or RedIsPerson(), batch_size=8)


def tiny_segmenter() -> Segmenter:
    """A real SegFormer-B0 (random weights) at 128x128: the real model path, fast on a CPU."""
    torch.manual_seed(0)
    info = ModelInfo(arch="segformer_b0", input_size=(128, 128))
    return Segmenter(build_model("segformer_b0", info=info), batch_size=8)


def decisive_segmenter() -> Segmenter:
    """`tiny_segmenter` with its classifier scaled up: random weights that make up their mind (probabilities near 0
    or 1, in blobs), so an overlay tints its "people" and leaves the background as it was, as a trained model does."""
    torch.manual_seed(0)
    model = build_model("segformer_b0", info=ModelInfo(arch="segformer_b0", input_size=(128, 128)))
    with torch.no_grad():
        model.decode_head.linear_pred.weight.mul_(60)
        model.decode_head.linear_pred.bias.mul_(60)
    return Segmenter(model, batch_size=8)


def photo(width: int = WIDTH, height: int = HEIGHT, box: tuple[int, int, int, int] = PERSON_BOX) -> np.ndarray:
    """Grey, with a bright red rectangle (the stand-in's person) at `box`."""
    image = np.full((height, width, 3), 40, np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = (255, 0, 0)
    return image


def encode(image: np.ndarray, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def expected_mask(box: tuple[int, int, int, int] = PERSON_BOX) -> np.ndarray:
    """The stand-in's exact answer: the red box, less its 4 corner pixels, where the bilinearly resized logit
    difference is exactly 0, a tie that goes to background as argmax's first-maximum rule gives."""
    mask = (photo(box=box)[..., 0] == 255).astype(np.uint8)
    x0, y0, x1, y1 = box
    if x1 > x0 and y1 > y0:
        for y, x in ((y0, x0), (y0, x1 - 1), (y1 - 1, x0), (y1 - 1, x1 - 1)):
            mask[y, x] = 0
    return mask


def client(config: ServeConfig | None = None, segmenter: Segmenter | None = None, **kwargs: object) -> TestClient:
    return TestClient(create_app(config or ServeConfig(), segmenter or stand_in()), **kwargs)


def assert_problem(response: httpx.Response, status: int, code: str) -> dict:
    """One line of JSON with the status and code asked for, and nothing that looks like a traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == status and body["code"] == code, body
    assert "\n" not in body["error"] and "Traceback" not in response.text and 'File "' not in response.text
    return body


@pytest.fixture(scope="module")
def api() -> TestClient:
    with client() as test_client:
        yield test_client


@pytest.fixture(scope="module")
def real_api() -> TestClient:
    with client(segmenter=tiny_segmenter()) as test_client:
        yield test_client


# --- POST /v1/segment: the answers ----------------------------------------------------------------------------------


def test_mask_is_label_ids_at_the_photo_size_and_exact(api: TestClient) -> None:
    response = api.post("/v1/segment?format=mask", content=encode(photo()), headers={"Content-Type": "image/png"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    mask = decode(response.content)
    np.testing.assert_array_equal(mask, expected_mask())
    assert response.headers["X-People-Count"] == "1"
    assert float(response.headers["X-Person-Fraction"]) == pytest.approx(expected_mask().mean(), abs=1e-6)
    assert response.headers["X-Image-Size"] == f"{WIDTH}x{HEIGHT}"
    binary = decode(api.post("/v1/segment?format=mask&binary_255=true", content=encode(photo())).content)
    np.testing.assert_array_equal(binary, expected_mask() * 255)


def test_multipart_and_raw_body_give_the_same_answer(api: TestClient) -> None:
    data = encode(photo(), "JPEG", quality=95)
    raw = api.post("/v1/segment", content=data, headers={"Content-Type": "image/jpeg"})
    form = api.post("/v1/segment", files={"file": ("photo.jpg", data, "image/jpeg")})
    other_name = api.post("/v1/segment", files={"image": ("photo.jpg", data, "image/jpeg")})
    curl_default = api.post(  # what `curl --data-binary @photo.jpg` sends
        "/v1/segment", content=data, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    responses = (raw, form, other_name, curl_default)
    assert [r.status_code for r in responses] == [200] * 4
    assert raw.content == form.content == other_name.content == curl_default.content


def test_json_has_fraction_count_boxes_and_a_coco_rle_mask(api: TestClient) -> None:
    response = api.post("/v1/segment?format=json", content=encode(photo()))
    assert response.status_code == 200
    body = response.json()
    assert (body["width"], body["height"]) == (WIDTH, HEIGHT)
    assert body["people_count"] == 1 and body["boxes"] == [list(PERSON_BOX)]
    assert body["people"][0]["bbox"] == list(PERSON_BOX)
    assert body["people"][0]["area"] == int(expected_mask().sum())
    assert body["person_fraction"] == pytest.approx(expected_mask().mean(), abs=1e-6)
    assert body["mask"]["size"] == [HEIGHT, WIDTH]
    np.testing.assert_array_equal(reference_rle_decode(body["mask"]), expected_mask())


def test_overlay_tints_only_the_people_and_cutout_and_blur_keep_them(api: TestClient) -> None:
    image = photo()
    person = expected_mask().astype(bool)
    overlay = decode(api.post("/v1/segment?format=overlay&encoding=png", content=encode(image)).content)
    x0, y0, x1, y1 = PERSON_BOX
    far = np.ones_like(person)
    far[y0 - 4 : y1 + 4, x0 - 4 : x1 + 4] = False  # the soft edge (a probability map) spans the model's 4-px grid
    np.testing.assert_array_equal(overlay[far], image[far])  # the background keeps its exact values
    assert (overlay[person][:, 1] > image[person][:, 1]).all()  # green rises towards the tint on every person pixel
    jpeg = api.post("/v1/segment?format=overlay", content=encode(image))
    assert jpeg.headers["content-type"] == "image/jpeg" and decode(jpeg.content).shape == (HEIGHT, WIDTH, 3)

    cutout = api.post("/v1/segment?format=cutout", content=encode(image))
    assert cutout.headers["content-type"] == "image/png"
    rgba = decode(cutout.content)
    assert rgba.shape == (HEIGHT, WIDTH, 4)
    assert (rgba[..., 3][person] > 127).all() and (rgba[..., 3][far] == 0).all()  # alpha is the probability
    np.testing.assert_array_equal(rgba[..., :3], image)

    blur = decode(api.post("/v1/segment?format=blur&encoding=png", content=encode(image)).content)
    interior = np.zeros_like(person)
    interior[12:44, 28:52] = True  # well inside the person: untouched by the feathered edge
    np.testing.assert_array_equal(blur[interior], image[interior])


def test_overlay_and_blur_wider_than_jpeg_allows_come_as_png(api: TestClient) -> None:
    # JPEG holds at most 65,500 pixels a side; such an image is within the pixel limit, so it gets an answer.
    for width, media_type in ((65_500, "image/jpeg"), (65_501, "image/png")):
        strip = encode(photo(width=width, height=2, box=(0, 0, 0, 0)))
        for fmt in ("overlay", "blur"):
            response = api.post(f"/v1/segment?format={fmt}", content=strip)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == media_type
            assert decode(response.content).shape == (2, width, 3)


def test_real_model_answers_every_format_for_a_real_photo(real_api: TestClient) -> None:
    data = (DATA / "astronaut.jpg").read_bytes()
    mask = decode(real_api.post("/v1/segment?format=mask", content=data).content)
    assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 1}
    for fmt, kind, shape in [
        ("overlay", "image/jpeg", (512, 512, 3)),
        ("blur", "image/jpeg", (512, 512, 3)),
        ("cutout", "image/png", (512, 512, 4)),
    ]:
        response = real_api.post(f"/v1/segment?format={fmt}", files={"file": ("astronaut.jpg", data, "image/jpeg")})
        assert response.status_code == 200 and response.headers["content-type"] == kind
        assert decode(response.content).shape == shape
    body = real_api.post("/v1/segment?format=json", content=data).json()
    assert body["person_fraction"] == pytest.approx(mask.mean(), abs=1e-6)
    np.testing.assert_array_equal(reference_rle_decode(body["mask"]), mask)


def test_exif_orientation_is_applied(api: TestClient) -> None:
    image = Image.fromarray(photo())
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    response = api.post("/v1/segment?format=mask", content=buffer.getvalue())
    assert decode(response.content).shape == (WIDTH, HEIGHT)
    assert response.headers["X-Image-Size"] == f"{HEIGHT}x{WIDTH}"


# --- POST /v1/segment: the refusals ---------------------------------------------------------------------------------


def test_bad_images_get_400_naming_the_problem(api: TestClient) -> None:
    body = assert_problem(api.post("/v1/segment", content=b"GIF? no, plain text"), 400, "not_an_image")
    assert "not an image" in body["error"]
    truncated = encode(photo(), "PNG")[:60]
    assert_problem(api.post("/v1/segment", content=truncated), 400, "corrupt_image")
    assert_problem(api.post("/v1/segment", content=b""), 400, "no_image")
    assert_problem(api.post("/v1/segment", files={"file": ("a.png", b"", "image/png")}), 400, "no_image")
    assert_problem(api.post("/v1/segment", data={"file": "text, not a file"}), 400, "not_an_image")
    assert_problem(
        api.post("/v1/segment", data={"note": "x"}, files={"other": ("a.txt", b"x", "text/plain"), "b": ("b", b"y")}),
        400,
        "bad_multipart",  # more than one file: refused by the form parser's limit
    )
    broken = b"--XYZ\r\nContent-Disposition: form-data; name=file\r\n\r\nabc"  # never closed
    response = api.post("/v1/segment", content=broken, headers={"Content-Type": "multipart/form-data; boundary=XYZ"})
    assert_problem(response, 400, "no_image")
    no_boundary = api.post("/v1/segment", content=b"abc", headers={"Content-Type": "multipart/form-data"})
    assert "boundary" in assert_problem(no_boundary, 400, "bad_multipart")["error"].lower()
    bad_length = api.post("/v1/segment", content=b"abc", headers={"Content-Length": "a lot"})
    assert_problem(bad_length, 400, "bad_request")


def test_upload_over_the_byte_limit_gets_413_declared_or_streamed() -> None:
    limit_mb = 0.01  # 10 KiB
    with client(ServeConfig(max_upload_mb=limit_mb)) as small:
        big = os.urandom(20_000)
        body = assert_problem(small.post("/v1/segment", content=big), 413, "upload_too_large")
        assert str(int(limit_mb * 1024 * 1024)) in body["error"]

        def chunks():  # no Content-Length: the limit is enforced while the body streams in
            for _ in range(20):
                yield b"\0" * 1000

        assert_problem(small.post("/v1/segment", content=chunks()), 413, "upload_too_large")
        assert_problem(
            small.post("/v1/segment", files={"file": ("big.png", big, "image/png")}), 413, "upload_too_large"
        )
        assert small.post("/v1/segment", content=encode(photo())).status_code == 200  # small ones still pass


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` but holds (almost) no pixels: what a decompression bomb looks like."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_too_many_pixels_and_decompression_bombs_get_422_before_decoding() -> None:
    with client(ServeConfig(max_pixels=5000)) as strict:
        body = assert_problem(strict.post("/v1/segment", content=encode(photo())), 422, "too_many_pixels")
        assert f"{WIDTH}x{HEIGHT}" in body["error"] and "5000" in body["error"]
    with client() as default:
        started = time.perf_counter()
        bomb = default.post("/v1/segment", content=png_header_only(20_000, 20_000))  # over Pillow's own limit too
        body = assert_problem(bomb, 422, "too_many_pixels")
        assert body["error"] == "the image is 400000000 pixels, over the limit of 16777216"  # the configured limit
        assert_problem(default.post("/v1/segment", content=png_header_only(100_000, 100_000)), 422, "too_many_pixels")
        assert time.perf_counter() - started < 2  # refused from the header: 10^10 pixels were never decoded


def test_bad_parameters_get_422_and_unknown_routes_404(api: TestClient) -> None:
    body = assert_problem(api.post("/v1/segment?format=gif", content=encode(photo())), 422, "invalid_parameter")
    assert body["error"].startswith("format:")
    assert_problem(api.post("/v1/segment?encoding=bmp", content=encode(photo())), 422, "invalid_parameter")
    assert_problem(api.post("/v1/segment?binary_255=maybe", content=encode(photo())), 422, "invalid_parameter")
    assert_problem(api.get("/v2/segment"), 404, "not_found")
    assert_problem(api.get("/static/missing.js"), 404, "not_found")
    assert_problem(api.get("/v1/segment"), 405, "method_not_allowed")


def test_a_crash_is_a_json_500_without_internals() -> None:
    with client(segmenter=stand_in(Exploding())) as broken:
        body = assert_problem(broken.post("/v1/segment", content=encode(photo())), 500, "internal")
        assert "secret" not in json.dumps(body) and "RuntimeError" not in json.dumps(body)
        assert broken.get("/healthz").status_code == 200  # the server carries on


# --- auth ----------------------------------------------------------------------------------------------------------


def test_api_keys_guard_the_api_and_no_work_is_done_without_one(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# team keys\n\nfile-key-1\n  file-key-2  \n")
    backend = RedIsPerson()
    config = ServeConfig(api_keys=("flag-key",), api_keys_file=str(keys_file))
    with client(config, stand_in(backend)) as guarded:
        image = encode(photo())
        missing = guarded.post("/v1/segment", content=image)
        assert_problem(missing, 401, "unauthorized")
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert_problem(
            guarded.post("/v1/segment", content=image, headers={"X-API-Key": "flag-kex"}), 401, "unauthorized"
        )
        bad_body = guarded.post("/v1/segment", content=b"not an image", headers={"Authorization": "Bearer nope"})
        assert_problem(bad_body, 401, "unauthorized")  # refused before the body was even looked at
        assert_problem(guarded.get("/v1/models"), 401, "unauthorized")
        assert backend.batches == [] and guarded.app.state.batcher.items == 0  # nothing reached the model
        assert "peopleseg_images_total 0.0" in guarded.get("/metrics").text

        for headers in ({"X-API-Key": "flag-key"}, {"Authorization": "Bearer file-key-1"}, {"X-API-Key": "file-key-2"}):
            assert guarded.post("/v1/segment", content=image, headers=headers).status_code == 200
        assert guarded.get("/v1/models", headers={"X-API-Key": "flag-key"}).status_code == 200
        for open_route in ("/healthz", "/readyz", "/metrics", "/", "/openapi.json"):
            assert guarded.get(open_route).status_code == 200, open_route


def test_api_keys_guard_the_websocket() -> None:
    frame = encode(photo(), "JPEG", quality=95)
    with client(ServeConfig(api_keys=("k1",))) as guarded:
        wrong = {"X-API-Key": "wrong"}  # a wrong key in the handshake: never accepted
        with pytest.raises(WebSocketDisconnect) as refused, guarded.websocket_connect("/v1/stream", headers=wrong):
            pass
        assert refused.value.code == 1008
        with guarded.websocket_connect("/v1/stream") as ws:  # no key: the first frame is refused, then closed
            ws.send_bytes(frame)
            assert ws.receive_json()["code"] == "unauthorized"
            with pytest.raises(WebSocketDisconnect):
                ws.receive_json()
        with guarded.websocket_connect("/v1/stream") as ws:
            ws.send_text(json.dumps({"api_key": "nope"}))
            assert ws.receive_json()["code"] == "unauthorized"
        assert guarded.app.state.batcher.items == 0
        with guarded.websocket_connect("/v1/stream") as ws:  # a browser sends the key as its first message
            ws.send_text(json.dumps({"api_key": "k1"}))
            assert ws.receive_json() == {"ok": True, "authenticated": True}
            ws.send_bytes(frame)
            assert ws.receive_json()["frame"] == 0
        with guarded.websocket_connect("/v1/stream", headers={"Authorization": "Bearer k1"}) as ws:
            ws.send_bytes(frame)
            assert ws.receive_json()["people_count"] == 1


def test_a_websocket_key_that_is_not_a_plain_string_is_a_wrong_key() -> None:
    assert not ApiKeys(["k1"]).accepts("\ud800")  # a lone surrogate cannot be encoded: no key, not a crash
    with client(ServeConfig(api_keys=("k1",))) as guarded:
        for key in ("\ud800", 123, None, ["k1"], {"key": "k1"}):
            with guarded.websocket_connect("/v1/stream") as ws:
                ws.send_text(json.dumps({"api_key": key}))  # "\ud800" travels as JSON's escape, as a browser sends
                assert ws.receive_json()["code"] == "unauthorized", key
                with pytest.raises(WebSocketDisconnect) as closed:
                    ws.receive_json()
                assert closed.value.code == 1008
        assert guarded.app.state.batcher.items == 0
    with client() as open_api, open_api.websocket_connect("/v1/stream") as ws:  # no keys: a number is still no key
        ws.send_text(json.dumps({"api_key": 123}))
        assert ws.receive_json()["code"] == "bad_message"
        ws.send_text(json.dumps({"api_key": "\ud800"}))
        assert ws.receive_json() == {"ok": True, "authenticated": True}


def test_list_settings_take_lists_of_strings_never_one_string() -> None:
    # A string is iterable: cors_origins="https://a.com" would allow the origins "h", "t", … and api_keys="secret"
    # failed later with a raw TypeError.
    for name in ("api_keys", "cors_origins"):
        with pytest.raises(ConfigError, match=rf"^{name} must be a list of strings, not one string") as error:
            ServeConfig(**{name: "secret"})
        assert "\n" not in str(error.value) and "secret" not in str(error.value)  # a key is never echoed
        for wrong in (5, [1], ("ok", None)):
            with pytest.raises(ConfigError, match=rf"^{name} must be a list of strings"):
                ServeConfig(**{name: wrong})
    config = ServeConfig(api_keys=["k1"], cors_origins=["https://a.example.com"])
    assert config.api_keys == ("k1",) and config.cors_origins == ("https://a.example.com",)
    assert ServeConfig.from_json(config.to_json()) == config
    with client(config) as listed:
        assert_problem(listed.get("/v1/models"), 401, "unauthorized")
        answer = listed.get("/v1/models", headers={"X-API-Key": "k1", "Origin": "https://a.example.com"})
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://a.example.com"


def test_a_keys_file_that_cannot_be_used_is_a_config_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="holds no keys"):
        read_keys_file(empty)
    with pytest.raises(ConfigError, match="cannot read"):
        create_app(ServeConfig(api_keys_file=str(tmp_path / "missing.txt")), stand_in())


def test_non_ascii_api_keys_are_refused_naming_where_they_came_from(tmp_path: Path) -> None:
    # HTTP headers reach the server as latin-1 text, so a non-ASCII key would match from some clients and not others.
    with pytest.raises(ConfigError, match=r"--api-key: .*non-ASCII"):
        load_serve_config({"api_keys": ("ok", "clé")}, {})
    with pytest.raises(ConfigError, match=r"PEOPLESEG_API_KEYS: .*non-ASCII"):
        load_serve_config({}, {"PEOPLESEG_API_KEYS": "ok,clé"})
    with pytest.raises(ConfigError, match=r"api_keys: .*non-ASCII"):
        ServeConfig(api_keys=("ключ",))
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# clés de l'équipe\nok\nclé\n", encoding="utf-8")  # a comment may say what it likes
    with pytest.raises(ConfigError, match=r"keys.txt, line 3: .*non-ASCII") as error:
        read_keys_file(keys_file)
    assert "\n" not in str(error.value) and "clé" not in str(error.value)  # the key itself is never echoed
    with pytest.raises(ConfigError, match="non-ASCII"):
        create_app(ServeConfig(api_keys_file=str(keys_file)), stand_in())


# --- limits under load: queue, timeouts, batching -----------------------------------------------------------------


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        assert time.perf_counter() < deadline, "condition never held"
        await asyncio.sleep(0.005)


def _run_concurrently(app, scenario) -> None:
    """Run `scenario(http, app)` with the app's lifespan, against an in-process async client."""

    async def main() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as http:
                await scenario(http, app)

    asyncio.run(main())


def test_concurrent_requests_share_a_batch_and_each_gets_its_own_answer() -> None:
    backend = GatedBackend()
    app = create_app(ServeConfig(max_batch=8, max_wait_ms=5), stand_in(backend))
    boxes = [(4, 4, 20, 20), (24, 8, 56, 48), (60, 20, 92, 60), (8, 40, 40, 60)]

    async def scenario(http: httpx.AsyncClient, app) -> None:
        first = asyncio.create_task(http.post("/v1/segment", content=encode(photo(box=boxes[0]))))
        await _until(backend.entered.is_set)  # the model is busy with the first image
        rest = [asyncio.create_task(http.post("/v1/segment", content=encode(photo(box=box)))) for box in boxes[1:]]
        await _until(lambda: app.state.batcher.depth() == 3)
        depth = await http.get("/metrics")
        assert "peopleseg_queue_depth 3.0" in depth.text
        backend.gate.set()
        responses = [await first, *[await task for task in rest]]
        assert [r.headers["X-Batch-Size"] for r in responses] == ["1", "3", "3", "3"]
        for response, box in zip(responses, boxes, strict=True):
            np.testing.assert_array_equal(decode(response.content), expected_mask(box))
        metrics = (await http.get("/metrics")).text
        assert "peopleseg_batch_size_count 2.0" in metrics and "peopleseg_batch_size_sum 4.0" in metrics

    _run_concurrently(app, scenario)
    assert backend.batches == [1, 3]


def test_max_batch_one_turns_batching_off() -> None:
    backend = GatedBackend()
    app = create_app(ServeConfig(max_batch=1), stand_in(backend))

    async def scenario(http: httpx.AsyncClient, app) -> None:
        tasks = [asyncio.create_task(http.post("/v1/segment", content=encode(photo()))) for _ in range(4)]
        await _until(backend.entered.is_set)
        backend.gate.set()
        assert [(await task).headers["X-Batch-Size"] for task in tasks] == ["1"] * 4

    _run_concurrently(app, scenario)
    assert backend.batches == [1, 1, 1, 1]


def test_a_full_queue_answers_503_with_retry_after() -> None:
    backend = GatedBackend()
    app = create_app(ServeConfig(max_batch=1, max_queue=2), stand_in(backend))

    async def scenario(http: httpx.AsyncClient, app) -> None:
        running = asyncio.create_task(http.post("/v1/segment", content=encode(photo())))
        await _until(backend.entered.is_set)
        queued = [asyncio.create_task(http.post("/v1/segment", content=encode(photo()))) for _ in range(2)]
        await _until(lambda: app.state.batcher.depth() == 2)
        refused = await http.post("/v1/segment", content=encode(photo()))
        assert_problem(refused, 503, "busy")
        assert int(refused.headers["Retry-After"]) >= 1
        not_ready = await http.get("/readyz")
        assert_problem(not_ready, 503, "busy")
        backend.gate.set()
        assert [(await task).status_code for task in (running, *queued)] == [200, 200, 200]
        assert (await http.get("/readyz")).status_code == 200
        assert 'peopleseg_rejected_total{reason="queue_full"} 1.0' in (await http.get("/metrics")).text

    _run_concurrently(app, scenario)


def test_a_slow_request_times_out_with_504_and_a_queued_one_is_withdrawn() -> None:
    backend = GatedBackend()
    app = create_app(ServeConfig(max_batch=1, request_timeout_s=0.3), stand_in(backend))

    async def scenario(http: httpx.AsyncClient, app) -> None:
        running = asyncio.create_task(http.post("/v1/segment", content=encode(photo())))
        await _until(backend.entered.is_set)
        queued = await http.post("/v1/segment", content=encode(photo()))
        assert_problem(queued, 504, "timeout")
        assert_problem(await running, 504, "timeout")
        backend.gate.set()
        await _until(lambda: app.state.batcher.batches == 1)
        await asyncio.sleep(0.05)
        assert app.state.batcher.depth() == 0

    _run_concurrently(app, scenario)
    assert backend.batches == [1]  # the queued image was dropped once its request gave up: no work for it


def test_requests_that_gave_up_leave_the_queue_at_once() -> None:
    backend = GatedBackend()
    app = create_app(ServeConfig(max_batch=1, max_queue=2, request_timeout_s=0.5), stand_in(backend))

    async def scenario(http: httpx.AsyncClient, app) -> None:
        running = asyncio.create_task(http.post("/v1/segment", content=encode(photo())))
        await _until(backend.entered.is_set)
        queued = await asyncio.gather(*(http.post("/v1/segment", content=encode(photo())) for _ in range(2)))
        for response in queued:
            assert_problem(response, 504, "timeout")
        # The model is still busy, but the requests that gave up no longer hold the queue: ready, not busy.
        assert app.state.batcher.depth() == 0
        assert (await http.get("/readyz")).status_code == 200
        backend.gate.set()
        assert_problem(await running, 504, "timeout")
        assert (await http.post("/v1/segment", content=encode(photo()))).status_code == 200

    _run_concurrently(app, scenario)
    assert backend.batches == [1, 1]


@pytest.fixture
def held_decoding(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, list[int]]]:
    """Every image decode of the app waits for the returned gate; the list grows as decodes start."""
    from peopleseg.serve import app as app_module

    gate, started = threading.Event(), []
    decode_image = app_module.decode_image

    def held(data: bytes, max_pixels: int) -> np.ndarray:
        started.append(1)
        assert gate.wait(20), "the test never opened the gate"
        return decode_image(data, max_pixels)

    monkeypatch.setattr(app_module, "decode_image", held)
    yield gate, started
    gate.set()


def test_images_being_decoded_hold_their_place_in_the_queue(held_decoding: tuple[threading.Event, list[int]]) -> None:
    # The queue bounds memory only if an image holds its place while it is decoded: many small uploads of big
    # images, decoded at once, must not all be in memory before any of them reaches the queue.
    gate, started = held_decoding
    app = create_app(ServeConfig(max_batch=1, max_queue=2, request_timeout_s=0.5), stand_in())

    async def scenario(http: httpx.AsyncClient, app) -> None:
        decoding = [asyncio.create_task(http.post("/v1/segment", content=encode(photo()))) for _ in range(2)]
        await _until(lambda: len(started) == 2)
        assert app.state.batcher.depth() == 2
        assert_problem(await http.get("/readyz"), 503, "busy")
        assert_problem(await http.post("/v1/segment", content=encode(photo())), 503, "busy")
        assert len(started) == 2  # the third image was refused before it was decoded
        # They time out while still decoding: their threads go on, and so their places stay taken until they end.
        for task in decoding:
            assert_problem(await task, 504, "timeout")
        assert app.state.batcher.depth() == 2
        gate.set()
        await _until(lambda: app.state.batcher.depth() == 0)
        assert (await http.post("/v1/segment", content=encode(photo()))).status_code == 200
        assert (await http.get("/readyz")).status_code == 200

    _run_concurrently(app, scenario)


def test_a_stream_frame_being_decoded_holds_its_place_in_the_queue(
    held_decoding: tuple[threading.Event, list[int]],
) -> None:
    gate, started = held_decoding
    with client(ServeConfig(max_queue=1)) as api, api.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(encode(photo()))
        deadline = time.perf_counter() + 10
        while not started:
            assert time.perf_counter() < deadline, "the frame was never decoded"
            time.sleep(0.01)
        assert_problem(api.post("/v1/segment", content=encode(photo())), 503, "busy")
        gate.set()
        assert ws.receive_json()["frame"] == 0
        assert api.app.state.batcher.depth() == 0


class ThreadedUvicorn:
    """uvicorn serving `app` on a free localhost port, in a thread of this process: real sockets, real disconnects."""

    def __init__(self, app: object) -> None:
        import uvicorn

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="peopleseg-test-server", daemon=True)

    def __enter__(self) -> ThreadedUvicorn:
        self.thread.start()
        _wait_for(lambda: self.server.started, "the server did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def _wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        assert time.perf_counter() < deadline, what
        time.sleep(0.01)


def test_a_request_whose_client_left_is_dropped_not_run() -> None:
    pytest.importorskip("uvicorn", reason="needs the serve extra (uvicorn)")
    backend = GatedBackend()
    app = create_app(ServeConfig(max_batch=1), stand_in(backend))
    body, answers = encode(photo()), []
    try:
        with ThreadedUvicorn(app) as server:
            first = threading.Thread(
                target=lambda: answers.append(httpx.post(f"{server.url}/v1/segment", content=body))
            )
            first.start()
            assert backend.entered.wait(10)  # the model is busy with the first image
            head = f"POST /v1/segment HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            with socket.create_connection(("127.0.0.1", server.port)) as leaving:
                leaving.sendall(head + body)
                _wait_for(lambda: app.state.batcher.depth() == 1, "the second image never queued")
            # The client has gone: its image leaves the queue now, not when the model gets to it.
            _wait_for(lambda: app.state.batcher.depth() == 0, "the image of a client that left stayed queued")
            metrics = lambda: httpx.get(f"{server.url}/metrics").text  # noqa: E731
            _wait_for(lambda: 'route="/v1/segment",status="499"} 1.0' in metrics(), "no 499 was counted")
            backend.gate.set()
            first.join(30)
            assert answers[0].status_code == 200
            assert 'route="/v1/segment",status="200"} 1.0' in metrics()  # one 200: the client that stayed
    finally:
        backend.gate.set()
    assert backend.batches == [1]  # the image of the client that left never ran


def test_requests_before_startup_get_503_not_ready() -> None:
    app = create_app(ServeConfig(), stand_in())
    bare = TestClient(app)  # outside `with`: the lifespan (and so the batcher) has not started
    assert_problem(bare.get("/readyz"), 503, "not_ready")
    response = bare.post("/v1/segment", content=encode(photo()))
    assert_problem(response, 503, "not_ready")
    assert response.headers["Retry-After"] == "1"


def test_one_bad_image_does_not_fail_its_batch_mates() -> None:
    class FailsOnGreen(RedIsPerson):
        def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
            if (pixels[:, 1] > 0.9).any():
                raise ValueError("green is not allowed")
            return super().__call__(pixels)

    segmenter = stand_in(FailsOnGreen())
    green = photo()
    green[:4, :4] = (0, 255, 0)
    app = create_app(ServeConfig(), segmenter)
    batcher = app.state.batcher

    async def scenario(http: httpx.AsyncClient, app) -> None:
        answers = await asyncio.gather(*(batcher.submit(image) for image in (photo(), green, photo())))
        assert isinstance(answers[1].result, ValueError)
        assert all(a.batch_size == 3 for a in answers)
        response = await http.post("/v1/segment", content=encode(green))
        assert_problem(response, 500, "internal")  # the error is the model's, not the client's: no details
        np.testing.assert_array_equal(answers[0].result.mask, expected_mask())
        np.testing.assert_array_equal(answers[2].result.mask, expected_mask())

    _run_concurrently(app, scenario)


# --- the micro-batcher on its own -----------------------------------------------------------------------------------


def test_batcher_gathers_up_to_max_batch_and_keeps_order() -> None:
    seen: list[list[int]] = []

    def double(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [2 * item for item in items]

    async def main() -> None:
        async with MicroBatcher(double, max_batch=4, max_wait_s=0.05, max_queue=100) as batcher:
            answers = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        assert [a.result for a in answers] == [2 * i for i in range(10)]
        assert [len(batch) for batch in seen] == [4, 4, 2]
        assert [a.batch_size for a in answers] == [4] * 8 + [2] * 2

    asyncio.run(main())


def test_batcher_refuses_beyond_its_queue_and_reports_failures() -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(items: list[int]) -> list[int]:
        entered.set()
        release.wait(10)
        if 13 in items:
            raise ValueError("unlucky")
        return items

    async def main() -> None:
        async with MicroBatcher(slow, max_batch=1, max_wait_s=0, max_queue=1) as batcher:
            first = asyncio.ensure_future(batcher.submit(1))
            await _until(entered.is_set)  # the first item is in the model thread
            second = asyncio.ensure_future(batcher.submit(13))
            await _until(lambda: batcher.depth() == 1)
            with pytest.raises(QueueFull) as full:
                await batcher.submit(3)
            assert full.value.retry_after_s >= 1
            release.set()
            assert (await first).result == 1
            with pytest.raises(ValueError, match="unlucky"):
                await second
            assert (await batcher.submit(5)).result == 5  # the worker carries on after a failed batch

    asyncio.run(main())


# --- the other endpoints ---------------------------------------------------------------------------------------------


def test_models_health_readiness_metrics_docs_and_page(api: TestClient) -> None:
    models = api.get("/v1/models").json()
    assert models["models"][0]["backend"] == "fake" and models["models"][0]["input_size"] == [HEIGHT, WIDTH]
    assert models["formats"] == ["mask", "overlay", "cutout", "blur", "json"]
    assert models["limits"]["max_upload_bytes"] == 20 * 1024 * 1024
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz").json()
    assert ready["status"] == "ready" and ready["max_queue"] == 64

    api.post("/v1/segment", content=encode(photo()))
    metrics = api.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for family in (
        'peopleseg_requests_total{method="POST",route="/v1/segment",status="200"}',
        'peopleseg_request_seconds_bucket{le="0.005",route="/v1/segment"}',
        "peopleseg_batch_size_bucket",
        "peopleseg_batch_seconds_bucket",
        "peopleseg_queue_depth 0.0",
        "peopleseg_stream_connections",
    ):
        assert family in metrics.text, family
    api.get("/no/such/page/12345")
    assert "/no/such/page" not in api.get("/metrics").text  # unknown paths share the 'other' label

    spec = api.get("/openapi.json").json()
    segment = spec["paths"]["/v1/segment"]["post"]
    assert {"multipart/form-data", "image/jpeg", "image/png"} <= set(segment["requestBody"]["content"])
    formats = next(p for p in segment["parameters"] if p["name"] == "format")["schema"]
    assert formats["enum"] == ["mask", "overlay", "cutout", "blur", "json"]
    assert {"400", "401", "413", "422", "503", "504"} <= set(segment["responses"])
    assert {"/v1/models", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    docs = api.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert "cannot reach it" in docs.text and 'href="/openapi.json"' in docs.text  # what to do offline

    page = api.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="file"' in page.text and 'id="webcam"' in page.text and "/static/app.js" in page.text
    assert "javascript" in api.get("/static/app.js").headers["content-type"]
    assert api.get("/static/style.css").status_code == 200


def test_head_probes_and_plain_http_on_the_websocket(api: TestClient) -> None:
    for path in ("/", "/healthz", "/readyz"):
        assert api.head(path).status_code == 200, path
    documented = api.get("/openapi.json").json()["paths"]
    assert set(documented["/healthz"]) == set(documented["/readyz"]) == {"get"}  # HEAD is not documented twice
    plain = api.get("/v1/stream")
    body = assert_problem(plain, 426, "upgrade_required")
    assert "WebSocket" in body["error"] and plain.headers["upgrade"] == "websocket"


def test_cors_is_off_unless_origins_are_configured(api: TestClient) -> None:
    origin = {"Origin": "https://app.example.com"}
    assert "access-control-allow-origin" not in api.get("/healthz", headers=origin).headers
    with client(ServeConfig(cors_origins=("https://app.example.com",))) as open_to_one:
        response = open_to_one.post("/v1/segment", content=encode(photo()), headers=origin)
        assert response.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "x-people-count" in response.headers["access-control-expose-headers"].lower()
        preflight = open_to_one.options("/v1/segment", headers={**origin, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 200
        other = open_to_one.get("/healthz", headers={"Origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in other.headers
        evil = {"Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"}
        body = assert_problem(open_to_one.options("/v1/segment", headers=evil), 400, "cors_refused")
        assert body["error"] == "CORS preflight refused: this server does not allow its origin"


# --- WebSocket /v1/stream --------------------------------------------------------------------------------------------


def _mask_of(message: dict) -> np.ndarray:
    return decode(base64.b64decode(message["mask"]))


def test_stream_answers_each_frame_with_a_mask_and_people(api: TestClient) -> None:
    with api.websocket_connect("/v1/stream") as ws:
        for index in range(3):
            ws.send_bytes(encode(photo(), "JPEG", quality=95))
            message = ws.receive_json()
            assert message["frame"] == index and (message["width"], message["height"]) == (WIDTH, HEIGHT)
            assert message["people_count"] == 1 and message["people"][0]["id"] == 1  # ids stay stable
            np.testing.assert_array_equal(_mask_of(message), expected_mask() * 255)
        ws.send_bytes(b"not a jpeg")  # a bad frame is reported and skipped; the stream goes on
        assert ws.receive_json()["code"] == "not_an_image"
        ws.send_text("not json")
        assert ws.receive_json()["code"] == "bad_message"
        ws.send_text(json.dumps({"reset": True}))
        assert ws.receive_json()["ok"] is True
        ws.send_bytes(encode(photo()))
        assert ws.receive_json()["frame"] == 0


def test_stream_smooths_over_time_per_connection(api: TestClient) -> None:
    person, empty = encode(photo()), encode(photo(box=(0, 0, 0, 0)))
    with api.websocket_connect("/v1/stream?alpha=0.5") as smooth, api.websocket_connect("/v1/stream") as other:
        smooth.send_bytes(person)
        assert _mask_of(smooth.receive_json()).any()
        other.send_bytes(empty)  # another connection: its own, empty history
        assert not _mask_of(other.receive_json()).any()
        # The smoother sees the picture change where the person left and came back, so it takes those frames as
        # they are: no trail, no lag (a plain average would show ~0.5, and then hide the person on return).
        smooth.send_bytes(empty)
        assert not _mask_of(smooth.receive_json()).any()
        smooth.send_bytes(person)
        np.testing.assert_array_equal(_mask_of(smooth.receive_json()), expected_mask() * 255)
    with api.websocket_connect("/v1/stream?smooth=false") as raw:
        raw.send_bytes(person)
        raw.receive_json()
        raw.send_bytes(empty)
        assert not _mask_of(raw.receive_json()).any()


def test_stream_limits() -> None:
    with client(ServeConfig(max_upload_mb=0.01)) as small, small.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(os.urandom(20_000))
        assert ws.receive_json()["code"] == "upload_too_large"
        ws.send_bytes(png_header_only(30_000, 30_000))
        assert ws.receive_json()["code"] == "too_many_pixels"


def test_a_bad_stream_parameter_is_named_before_the_stream_closes(api: TestClient) -> None:
    # Refusing the handshake is a bare HTTP 403, which reads as a wrong key: say which parameter is wrong instead.
    for query in ("alpha=7", "alpha=0", "alpha=abc", "smooth=maybe"):
        name = query.split("=")[0]
        with api.websocket_connect(f"/v1/stream?{query}") as ws:
            message = ws.receive_json()
            assert (message["code"], message["status"]) == ("invalid_parameter", 422)
            assert message["error"].startswith(f"{name}: "), message
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1008 and closed.value.reason.startswith(f"{name}: ")


def test_the_stream_resets_only_when_asked_with_true(api: TestClient) -> None:
    frame = encode(photo())
    with api.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(frame)
        assert ws.receive_json()["frame"] == 0
        for value in ("no", "false", 1, None, False):
            ws.send_text(json.dumps({"reset": value}))
            assert ws.receive_json()["ok"] is True
        ws.send_bytes(frame)
        assert ws.receive_json()["frame"] == 1  # nothing was reset
        ws.send_text(json.dumps({"reset": True}))
        ws.receive_json()
        ws.send_bytes(frame)
        assert ws.receive_json()["frame"] == 0


def test_stream_with_the_real_model(real_api: TestClient) -> None:
    with real_api.websocket_connect("/v1/stream") as ws:
        ws.send_bytes((DATA / "astronaut.jpg").read_bytes())
        message = ws.receive_json()
    mask = _mask_of(message)
    assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 255}
    assert message["person_fraction"] == pytest.approx((mask == 255).mean(), abs=1e-6)


def test_a_slow_frame_is_finished_before_the_next_one_touches_the_connection() -> None:
    # The smoother and tracker of a connection are not thread-safe: a frame must never be followed while another is.
    segmenter = stand_in()
    follow, lock, active, seen = segmenter.follow, threading.Lock(), [0], []

    def slow_follow(*args, **kwargs):
        with lock:
            active[0] += 1
            seen.append(active[0])
            first = len(seen) == 1
        try:
            if first:
                time.sleep(1.2)  # past the request timeout
            return follow(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    segmenter.follow = slow_follow  # type: ignore[method-assign]
    frame = encode(photo())
    with client(ServeConfig(request_timeout_s=0.5), segmenter) as api, api.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(frame)
        ws.send_bytes(frame)
        replies = [ws.receive_json() for _ in range(2)]
    assert seen == [1, 1]  # one after the other
    assert [reply.get("frame") for reply in replies] == [0, 1]  # the model had answered: the slow frame is not lost
    assert [reply["people"][0]["id"] for reply in replies] == [1, 1]


def test_a_stream_frame_that_times_out_in_the_queue_leaves_no_trace() -> None:
    backend = GatedBackend()
    segmenter = stand_in(backend)
    follow, followed = segmenter.follow, []
    segmenter.follow = lambda *args, **kwargs: followed.append(1) or follow(*args, **kwargs)  # type: ignore
    with client(ServeConfig(request_timeout_s=0.5), segmenter) as api, api.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(encode(photo()))
        assert ws.receive_json()["code"] == "timeout"
        backend.gate.set()
        ws.send_bytes(encode(photo()))
        message = ws.receive_json()
    assert message["frame"] == 0 and message["people"][0]["id"] == 1
    assert followed == [1]  # the dropped frame never reached the smoother or the tracker


class ModelFails(RedIsPerson):
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        raise ModelError("the model cannot run on this device")


def test_a_crash_in_the_stream_is_a_json_500_and_the_stream_goes_on() -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("peopleseg")
    logger.addHandler(handler)
    try:
        with client(segmenter=stand_in(Exploding())) as broken, broken.websocket_connect("/v1/stream") as ws:
            for _ in range(2):
                ws.send_bytes(encode(photo()))
                message = ws.receive_json()
                assert (message["code"], message["status"]) == ("internal", 500)
                assert set(message) == {"error", "code", "status"} and "secret" not in message["error"]
            ws.send_text(json.dumps({"reset": True}))
            assert ws.receive_json()["ok"] is True  # still open
    finally:
        logger.removeHandler(handler)
    errors = [record for record in records if record.levelno >= logging.ERROR]
    assert len(errors) == 2 and "/v1/stream" in errors[0].getMessage() and errors[0].exc_info is not None
    with client(segmenter=stand_in(ModelFails())) as failing, failing.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(encode(photo()))  # the library's own errors are answered as on HTTP
        expected = {"error": "the model cannot run on this device", "code": "bad_request", "status": 400}
        assert ws.receive_json() == expected
        ws.send_bytes(encode(photo()))
        assert ws.receive_json()["code"] == "bad_request"


# --- COCO RLE --------------------------------------------------------------------------------------------------------


def reference_rle_decode(rle: dict) -> np.ndarray:
    """An independent reading of compressed COCO RLE (maskApi.c's rleFrString, transcribed), for the tests."""
    text, counts, index = rle["counts"].encode(), [], 0
    while index < len(text):
        value, shift, more = 0, 0, True
        while more:
            chunk = text[index] - 48
            value |= (chunk & 0x1F) << (5 * shift)
            more = bool(chunk & 0x20)
            index += 1
            shift += 1
            if not more and chunk & 0x10:
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    height, width = rle["size"]
    flat = np.zeros(height * width, np.uint8)
    position, bit = 0, 0
    for count in counts:
        flat[position : position + count] = bit
        position += count
        bit ^= 1
    assert position == height * width
    return flat.reshape(width, height).T


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 96), (123, 77)])
def test_rle_round_trips_and_matches_pycocotools(shape: tuple[int, int]) -> None:
    generator = np.random.default_rng(sum(shape))
    for density in (0.0, 0.02, 0.5, 1.0):
        mask = (generator.random(shape) < density).astype(np.uint8)
        rle = encode_rle(mask)
        np.testing.assert_array_equal(reference_rle_decode(rle), mask)
        assert sum(rle_counts(mask)) == mask.size
    try:
        from pycocotools import mask as coco
    except ImportError:
        return
    mask = (generator.random(shape) < 0.3).astype(np.uint8)
    assert encode_rle(mask)["counts"] == coco.encode(np.asfortranarray(mask))["counts"].decode()


def test_rle_counts_start_with_the_zeros_and_big_differences_compress() -> None:
    assert rle_counts(np.ones((2, 2), np.uint8)) == [0, 4]
    assert rle_counts(np.array([[0, 1], [0, 1]], np.uint8)) == [2, 2]
    assert compress_counts([0, 4]) == "04"
    counts = [5, 100_000, 3, 7, 2_000_000]
    text = compress_counts(counts)
    assert reference_rle_decode({"size": [1, sum(counts)], "counts": text}).sum() == 100_000 + 7


# --- configuration and the command ----------------------------------------------------------------------------------


def test_config_comes_from_flags_then_env_then_defaults() -> None:
    environ = {"PEOPLESEG_MODEL": "segformer_b1", "PEOPLESEG_MAX_BATCH": "4", "PEOPLESEG_API_KEYS": "a, b ,c"}
    config = load_serve_config({"max_batch": 16, "threads": None}, environ)
    assert config.model == "segformer_b1" and config.max_batch == 16 and config.api_keys == ("a", "b", "c")
    assert config.host == "127.0.0.1"  # localhost unless told otherwise
    assert config.cors_origins == ()
    assert ServeConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match="PEOPLESEG_MAX_BATCH: cannot read 'many'"):
        load_serve_config({}, {"PEOPLESEG_MAX_BATCH": "many"})
    with pytest.raises(ConfigError, match="max_batch must be a positive integer"):
        load_serve_config({"max_batch": 0}, {})
    with pytest.raises(ConfigError, match="smooth_alpha"):
        ServeConfig(smooth_alpha=0)
    with pytest.raises(ConfigError, match="unknown serve setting 'colour'"):
        load_serve_config({"colour": "red"}, {})
    assert load_serve_config({}, {"PEOPLESEG_TTA": "flip"}).tta == "flip"
    with pytest.raises(ConfigError, match="tta: expected 'flip'"):
        ServeConfig(tta="spin")
    with pytest.raises(ConfigError, match="tta must be a string"):
        ServeConfig(tta=None)  # type: ignore[arg-type]


def test_a_served_model_with_tta_says_so_and_still_finds_the_person() -> None:
    segmenter = Segmenter("segformer_b0", backend=RedIsPerson(), batch_size=8, tta="flip")
    with client(ServeConfig(tta="flip"), segmenter) as api:
        assert api.get("/v1/models").json()["models"][0]["tta"] == ["usual", "usual+flip"]
        response = api.post("/v1/segment?format=mask", files={"image": ("p.png", encode(photo()), "image/png")})
        assert response.status_code == 200
        mask = decode(response.content) > 0
        assert (mask != (expected_mask() > 0)).sum() <= 8  # the mirrored view may settle the box's corner ties


def _serve_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="peopleseg")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["serve", *argv])


def test_serve_command_flags_map_onto_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEOPLESEG_DEVICE", "cuda:1")
    monkeypatch.setenv("PEOPLESEG_WORKERS", "3")
    args = _serve_args(
        ["--port", "9000", "--max-batch", "2", "--max-wait-ms", "0", "--api-key", "k1", "--api-key", "k2",
         "--cors-origin", "https://a.example", "--workers", "2", "--request-timeout", "5", "--max-upload-mb", "1.5"]
    )  # fmt: skip
    assert callable(args.run)
    config = config_from_args(args)
    assert (config.port, config.max_batch, config.max_wait_ms, config.workers) == (9000, 2, 0.0, 2)
    assert config.api_keys == ("k1", "k2") and config.cors_origins == ("https://a.example",)
    assert config.device == "cuda:1"  # from the environment
    assert config.max_upload_bytes == int(1.5 * 1024 * 1024) and config.request_timeout_s == 5.0
    with pytest.raises(SystemExit):
        _serve_args(["--max-batch", "0"])


def test_serve_command_reports_a_bad_model_as_a_one_line_error(tmp_path: Path) -> None:
    args = _serve_args(["--model", str(tmp_path / "missing.safetensors"), "--port", str(_free_port())])
    with pytest.raises(PeoplesegError) as error:
        args.run(args)
    assert "missing.safetensors" in str(error.value) and "\n" not in str(error.value)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_command_starts_a_real_server(tmp_path: Path) -> None:
    """The command end to end: a process on a localhost port that answers a real photo."""
    from peopleseg.models import save_model

    torch.manual_seed(0)
    weights = tmp_path / "tiny.safetensors"
    save_model(build_model("segformer_b0", info=ModelInfo(arch="segformer_b0", input_size=(64, 64))), weights)
    port = _free_port()
    environ = {**os.environ, "PEOPLESEG_THREADS": "1", "PEOPLESEG_API_KEYS": "secret"}
    command = [sys.executable, "-m", "peopleseg.serve.command", "--model", str(weights), "--port", str(port)]
    server = subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.perf_counter() + 180  # importing torch on a busy 2-core box is slow
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.perf_counter() < deadline, "the server did not become ready"
            time.sleep(0.2)
        photo_bytes = (DATA / "astronaut.jpg").read_bytes()
        assert httpx.post(f"{base}/v1/segment", content=photo_bytes).status_code == 401
        answer = httpx.post(
            f"{base}/v1/segment?format=json", content=photo_bytes, headers={"X-API-Key": "secret"}, timeout=30
        )
        assert answer.status_code == 200 and answer.json()["width"] == 512
    finally:
        server.terminate()
        try:
            output = server.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            server.kill()
            output = server.communicate()[0]
    assert f"http://127.0.0.1:{port}/" in output and "Traceback" not in output
