"""The FastAPI app of `peopleseg serve`: segmentation over HTTP and WebSocket, health, metrics, and the web page.

`create_app(config, segmenter)` builds it. Routes:

| route | what |
|---|---|
| `POST /v1/segment` | an image (raw body or multipart `file`) → mask, overlay, cutout, blur or JSON (`format=`) |
| `GET /v1/models` | the model being served, the formats and the limits |
| `WS /v1/stream` | JPEG frames in, masks and people out, smoothed over time per connection |
| `GET /healthz`, `GET /readyz` | liveness; readiness (the model is loaded and the queue has room) |
| `GET /metrics` | Prometheus text |
| `GET /docs`, `GET /openapi.json` | the OpenAPI document and its viewer |
| `GET /` | the web page (static files, no build step) |

Every error is one line of JSON (`peopleseg.serve.problems`). An unexpected exception is logged with its traceback on
the server and answered with a bare JSON 500: internals never reach the client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import warnings
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from peopleseg.errors import ConfigError, DataError, PeoplesegError
from peopleseg.infer.segmenter import RANDOM_INIT_WARNING, SegmentationResult, Segmenter
from peopleseg.serve.auth import ApiKeys, key_from_headers
from peopleseg.serve.batcher import BatcherStopped, MicroBatcher, QueueFull, batch_stats
from peopleseg.serve.config import CONFIG_ENV, ServeConfig, read_keys_file
from peopleseg.serve.formats import FORMATS, Encoding, Format, encode_png, render_result
from peopleseg.serve.metrics import MetricsMiddleware, ServeMetrics
from peopleseg.serve.problems import ERROR_SCHEMA, ServeProblem, problem_response
from peopleseg.serve.upload import decode_image, image_bytes

log = logging.getLogger("peopleseg.serve")
STATIC_DIR = Path(__file__).resolve().parent / "static"
# Response headers that summarise an image answer; the web page reads them (CORS exposes them when enabled).
SUMMARY_HEADERS = ("X-People-Count", "X-Person-Fraction", "X-Batch-Size", "X-Image-Size")
WS_POLICY_VIOLATION = 1008  # the WebSocket close code for "not allowed", e.g. a missing or wrong key
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")
INTERNAL_ERROR = "internal server error (the server log has the details)"


def configure_logging(level: str) -> None:
    """Send the service's own log (startup summary, random-weights warning, tracebacks of unexpected errors) to
    stderr in uvicorn's style; uvicorn configures only its own loggers."""
    logger = logging.getLogger("peopleseg")
    if not any(getattr(handler, "_peopleseg", False) for handler in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        handler._peopleseg = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level.upper())


def load_segmenter(config: ServeConfig) -> Segmenter:
    """Build the config's model once, warning in the log (not per request) when it has random weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # said once below, in the server's log
        segmenter = Segmenter(
            config.model,
            backend=config.backend,
            device=config.device,
            resize=config.resize,
            tta=config.tta,
            threads=config.threads,
            precision=config.precision,
            max_pixels=config.max_pixels,
            min_person_area=config.min_area,
            batch_size=config.max_batch,
        )
    if segmenter.is_random_init:
        log.warning("%s", RANDOM_INIT_WARNING)
    return segmenter


def create_app(config: ServeConfig | None = None, segmenter: Segmenter | None = None) -> FastAPI:
    """The service for `config` (defaults if None), serving `segmenter` (built from the config if None)."""
    config = config or ServeConfig()
    segmenter = segmenter if segmenter is not None else load_segmenter(config)
    keys = ApiKeys(config.api_keys + (read_keys_file(config.api_keys_file) if config.api_keys_file else ()))
    metrics = ServeMetrics()

    def run_batch(images: Sequence[np.ndarray]) -> list[SegmentationResult | Exception]:
        # One bad image must not fail the others that share its batch: on an error, each image is retried alone.
        try:
            return list(segmenter.segment_batch(images, people=False))
        except Exception:
            if len(images) == 1:
                raise
        answers: list[SegmentationResult | Exception] = []
        for image in images:
            try:
                answers.append(segmenter.segment_batch([image], people=False)[0])
            except Exception as exc:
                answers.append(exc)
        return answers

    def on_batch(size: int, seconds: float) -> None:
        metrics.batch_size.observe(size)
        metrics.inference.observe(seconds)
        metrics.images.inc(size)

    batcher: MicroBatcher[np.ndarray, SegmentationResult | Exception] = MicroBatcher(
        run_batch,
        max_batch=config.max_batch,
        max_wait_s=config.max_wait_ms / 1000,
        max_queue=config.max_queue,
        on_batch=on_batch,
    )
    metrics.watch_queue(batcher.depth)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with batcher:
            log.info(
                "model %s (%s, %s), max batch %d, max wait %g ms, queue %d, auth %s",
                config.model, segmenter.backend.name, segmenter.backend.device, config.max_batch,
                config.max_wait_ms, config.max_queue, "on" if keys.enabled else "off",
            )  # fmt: skip
            yield

    app = FastAPI(
        title="peopleseg",
        summary="Find every person in an image, pixel by pixel.",
        description="Person segmentation (SegFormer) as a service. Errors are one line of JSON: "
        '`{"error": "...", "code": "...", "status": 400}`. With API keys configured, `/v1/*` needs '
        "`Authorization: Bearer KEY` or `X-API-Key: KEY`.",
        version=_version(),
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.config = config
    app.state.segmenter = segmenter
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.keys = keys

    _install_error_handlers(app)
    app.add_middleware(CatchAllMiddleware)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=list(SUMMARY_HEADERS),
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: [getattr(r, "path", "") for r in app.routes])

    def require_key(request: Request) -> None:
        keys.check_headers(request.headers)

    authorized = [Depends(require_key)]
    json_error = {"application/json": {"schema": ERROR_SCHEMA}}
    errors = {status: {"description": about, "content": json_error} for status, about in _ERROR_STATUSES.items()}

    # --- pages and probes ----------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Readiness: the model is loaded and the queue has room",
        responses={503: errors[503]},
    )
    async def readyz() -> Response:
        if not batcher.running:
            return problem_response(503, "not_ready", "the model is not ready yet")
        if batcher.is_full():
            retry = str(batcher.retry_after_s())
            return problem_response(503, "busy", "the queue is full", {"Retry-After": retry})
        return JSONResponse(
            {"status": "ready", "queue_depth": batcher.depth(), "max_queue": config.max_queue, **batch_stats(batcher)}
        )

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    # --- the API ---------------------------------------------------------------------------------------------------

    @app.get(
        "/v1/models",
        summary="The model being served, the formats and the limits",
        dependencies=authorized,
        responses={401: errors[401]},
    )
    async def models() -> dict[str, Any]:
        info = segmenter.info
        return {
            "models": [
                {
                    "id": str(config.model),
                    "arch": info.arch,
                    "backend": segmenter.backend.name,
                    "device": str(segmenter.backend.device),
                    "classes": list(info.classes),
                    "input_size": list(info.input_size),
                    "resize": segmenter.resize,
                    "tta": [view.name for view in segmenter.views],
                    "random_weights": segmenter.is_random_init,
                }
            ],
            "formats": list(FORMATS),
            "limits": {
                "max_upload_bytes": config.max_upload_bytes,
                "max_pixels": config.max_pixels,
                "request_timeout_s": config.request_timeout_s,
                "max_batch": config.max_batch,
                "max_wait_ms": config.max_wait_ms,
                "max_queue": config.max_queue,
            },
        }

    @app.post(
        "/v1/segment",
        summary="Segment the people in one image",
        description="Send the image as the raw request body (any Content-Type but a form) or as the `file` field "
        "of a multipart form. `format` picks the answer: `mask` (PNG label ids 0/1, or 0/255 with "
        "`binary_255=true`), `overlay` or `blur` (JPEG, or PNG with `encoding=png`), `cutout` (RGBA PNG) or "
        "`json` (person fraction, people count, boxes, people, and the mask as COCO RLE). Image answers carry "
        "the summary in headers: " + ", ".join(SUMMARY_HEADERS) + ".",
        dependencies=authorized,
        response_class=Response,
        responses={
            200: {
                "description": "the result, in the format asked for",
                "content": {"image/png": {}, "image/jpeg": {}, "application/json": {"schema": {"type": "object"}}},
            },
            **{status: errors[status] for status in (400, 401, 413, 422, 503, 504)},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "string", "format": "binary"}},
                            "required": ["file"],
                        }
                    },
                    **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in IMAGE_TYPES},
                },
            }
        },
    )
    async def segment(
        request: Request,
        fmt: Annotated[Format, Query(alias="format", description="what to answer with")] = "mask",
        encoding: Annotated[Encoding, Query(description="overlay and blur: jpeg or png")] = "jpeg",
        binary_255: Annotated[bool, Query(description="mask: 0/255 instead of label ids")] = False,
    ) -> Response:
        _check_room(batcher, metrics)  # refuse before reading a byte when the queue is full

        async def answer() -> Response:
            data = await image_bytes(request, config.max_upload_bytes)
            image = await run_in_threadpool(decode_image, data, config.max_pixels)
            batched = await _submit(batcher, metrics, image)
            body, media_type = await run_in_threadpool(
                _finish, segmenter, image, batched.result, fmt, encoding, binary_255
            )
            result = batched.result
            height, width = result.mask.shape
            headers = {
                "X-People-Count": str(len(result.people)),
                "X-Person-Fraction": f"{result.person_fraction:.6f}",
                "X-Batch-Size": str(batched.batch_size),
                "X-Image-Size": f"{width}x{height}",
            }
            return Response(body, media_type=media_type, headers=headers)

        try:
            return await asyncio.wait_for(answer(), config.request_timeout_s)
        except asyncio.TimeoutError:
            metrics.rejected.labels("timeout").inc()
            raise ServeProblem(
                504, "timeout", f"the request took longer than {config.request_timeout_s:g} s and was abandoned"
            ) from None

    @app.websocket("/v1/stream")
    async def stream(
        websocket: WebSocket,
        alpha: Annotated[float | None, Query(gt=0, le=1)] = None,
        smooth: bool = True,
    ) -> None:
        """Live video: send JPEG (or PNG) frames as binary messages; each gets one JSON text message back with the
        frame number, size, person fraction, people (ids stable across frames) and `mask`, a base64 PNG (0/255).
        Errors come as `{"error", "code"}` messages and the connection stays open, except for auth errors, which
        close it with code 1008. With API keys on, send a key header or `{"api_key": "KEY"}` first."""
        await _stream(websocket, alpha if alpha is not None else config.smooth_alpha, smooth, app)

    return app


def create_app_from_env() -> FastAPI:
    """The app factory that each `--workers` process calls: the config travels as JSON in `PEOPLESEG_SERVE_CONFIG`."""
    import os

    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise ConfigError(f"{CONFIG_ENV} is not set: start workers with `peopleseg serve --workers N`")
    config = ServeConfig.from_json(text)
    configure_logging(config.log_level)
    return create_app(config)


# --- the request path --------------------------------------------------------------------------------------------


def _check_room(batcher: MicroBatcher[Any, Any], metrics: ServeMetrics) -> None:
    try:
        batcher.check_room()
    except QueueFull as exc:
        metrics.rejected.labels("queue_full").inc()
        raise ServeProblem(503, "busy", str(exc), {"Retry-After": str(exc.retry_after_s)}) from None
    except BatcherStopped as exc:
        raise ServeProblem(503, "not_ready", str(exc), {"Retry-After": "1"}) from None


async def _submit(batcher: MicroBatcher[Any, Any], metrics: ServeMetrics, image: np.ndarray) -> Any:
    _check_room(batcher, metrics)
    try:
        batched = await batcher.submit(image)
    except QueueFull as exc:
        metrics.rejected.labels("queue_full").inc()
        raise ServeProblem(503, "busy", str(exc), {"Retry-After": str(exc.retry_after_s)}) from None
    except BatcherStopped as exc:
        raise ServeProblem(503, "not_ready", str(exc), {"Retry-After": "1"}) from None
    if isinstance(batched.result, Exception):
        raise batched.result
    return batched


def _finish(
    segmenter: Segmenter, image: np.ndarray, result: SegmentationResult, fmt: str, encoding: str, binary_255: bool
) -> tuple[bytes, str]:
    segmenter.follow(result)  # finds the people (connected regions) at the image's size
    return render_result(image, result, fmt, encoding, binary_255)


async def _stream(websocket: WebSocket, alpha: float, smooth: bool, app: FastAPI) -> None:
    from peopleseg.infer.people import PeopleTracker
    from peopleseg.infer.smoothing import TemporalSmoother

    config: ServeConfig = app.state.config
    keys: ApiKeys = app.state.keys
    metrics: ServeMetrics = app.state.metrics
    batcher = app.state.batcher
    segmenter: Segmenter = app.state.segmenter

    offered = key_from_headers(websocket.headers)
    if offered is not None and not keys.accepts(offered):
        await websocket.close(code=WS_POLICY_VIOLATION, reason="the API key is not valid")  # before accepting
        return
    authenticated = not keys.enabled or offered is not None
    await websocket.accept()
    metrics.streams.inc()
    smoother = TemporalSmoother(alpha=alpha) if smooth else None
    tracker = PeopleTracker()
    frame = 0
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                control = _parse_control(message["text"])
                if isinstance(control, ServeProblem):
                    await websocket.send_json(_problem_message(control))
                    continue
                if "api_key" in control:
                    authenticated = keys.accepts(str(control["api_key"]))
                    if not authenticated:
                        await _refuse(websocket, "the API key is not valid")
                        return
                if control.get("reset"):
                    frame = 0
                    tracker.reset()
                    if smoother is not None:
                        smoother.reset()
                await websocket.send_json({"ok": True, "authenticated": authenticated})
                continue
            if not authenticated:
                await _refuse(websocket, 'this server needs an API key: send {"api_key": "KEY"} first')
                return
            data = message.get("bytes") or b""
            try:
                reply = await _stream_frame(data, frame, config, batcher, metrics, segmenter, smoother, tracker)
            except ServeProblem as problem:
                reply = _problem_message(problem)
            except DataError as exc:
                reply = _problem_message(ServeProblem(400, "bad_image", str(exc)))
            except PeoplesegError as exc:  # as on HTTP: the library's own errors describe the input
                reply = _problem_message(ServeProblem(400, "bad_request", str(exc)))
            except Exception as exc:  # one frame's crash answers that frame; the stream goes on
                log.error("unexpected error on WS %s, frame %d", websocket.url.path, frame, exc_info=exc)
                reply = _problem_message(ServeProblem(500, "internal", INTERNAL_ERROR))
            else:
                frame += 1
                metrics.stream_frames.inc()
            await websocket.send_json(reply)
    except WebSocketDisconnect:
        return
    finally:
        metrics.streams.dec()


async def _stream_frame(
    data: bytes,
    frame: int,
    config: ServeConfig,
    batcher: MicroBatcher[Any, Any],
    metrics: ServeMetrics,
    segmenter: Segmenter,
    smoother: Any,
    tracker: Any,
) -> dict[str, Any]:
    if not data:
        raise ServeProblem(400, "no_image", "send each frame as a binary message (JPEG or PNG)")
    if len(data) > config.max_upload_bytes:
        raise ServeProblem(413, "upload_too_large", f"the frame is {len(data)} bytes, over {config.max_upload_bytes}")

    async def decode_and_segment() -> tuple[np.ndarray, Any]:
        image = await run_in_threadpool(decode_image, data, config.max_pixels)
        return image, await _submit(batcher, metrics, image)

    # The timeout covers only the steps that keep no state of the connection. Once the model has answered, the
    # frame is followed to the end before the next one starts: a frame abandoned in its thread would race the next
    # over the connection's smoother and tracker (neither is thread-safe), and feed them after it was dropped.
    try:
        image, batched = await asyncio.wait_for(decode_and_segment(), config.request_timeout_s)
    except asyncio.TimeoutError:
        raise ServeProblem(504, "timeout", "the frame took too long and was dropped") from None

    def follow_and_encode() -> dict[str, Any]:
        result = segmenter.follow(batched.result, smoother, tracker, image=image)
        height, width = result.mask.shape
        mask = base64.b64encode(encode_png(result.person_mask.view(np.uint8) * np.uint8(255))).decode("ascii")
        return {
            "frame": frame,
            "width": width,
            "height": height,
            "person_fraction": round(result.person_fraction, 6),
            "people_count": len(result.people),
            "people": [person.to_dict() for person in result.people],
            "batch_size": batched.batch_size,
            "mask": mask,
        }

    return await run_in_threadpool(follow_and_encode)


def _parse_control(text: str) -> dict[str, Any] | ServeProblem:
    try:
        control = json.loads(text)
    except ValueError:
        return ServeProblem(400, "bad_message", 'text messages must be JSON objects, e.g. {"api_key": "KEY"}')
    if not isinstance(control, dict):
        return ServeProblem(400, "bad_message", 'text messages must be JSON objects, e.g. {"reset": true}')
    return control


def _problem_message(problem: ServeProblem) -> dict[str, Any]:
    message = {"error": " ".join(problem.message.split()), "code": problem.code, "status": problem.status}
    if "Retry-After" in problem.headers:
        message["retry_after"] = int(problem.headers["Retry-After"])
    return message


async def _refuse(websocket: WebSocket, message: str) -> None:
    await websocket.send_json({"error": message, "code": "unauthorized", "status": 401})
    await websocket.close(code=WS_POLICY_VIOLATION, reason="unauthorized")


# --- errors --------------------------------------------------------------------------------------------------------

_ERROR_STATUSES = {
    400: "not an image, a corrupt image, or a malformed request",
    401: "a missing or invalid API key (no work was done)",
    413: "the upload is over the byte limit",
    422: "the image has too many pixels, or a parameter is invalid",
    503: "the queue is full or the model is not ready: retry after Retry-After seconds",
    504: "the request took longer than the timeout",
}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeProblem)
    async def serve_problem(request: Request, exc: ServeProblem) -> Response:
        return exc.response()

    @app.exception_handler(PeoplesegError)
    async def peopleseg_error(request: Request, exc: PeoplesegError) -> Response:
        # The library's own errors describe the input: a bad image or option is the client's to fix.
        code = "bad_image" if isinstance(exc, DataError) else "bad_request"
        return problem_response(400, code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("query", "body", "path"))
        message = f"{where}: {first.get('msg', 'invalid value')}" if where else str(first.get("msg", "invalid"))
        return problem_response(422, "invalid_parameter", message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path[:200]  # echo the path, never pages of it
        messages = {404: f"no such endpoint: {path}", 405: f"{request.method} is not allowed on {path}"}
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = messages.get(exc.status_code, str(exc.detail))
        return problem_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem_response(500, "internal", INTERNAL_ERROR)


class CatchAllMiddleware:
    """The last line: any exception that escapes the app is logged with its traceback and answered with a JSON 500
    that holds no internals, instead of reaching the server's default error page."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            log.error("unexpected error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
            if started:
                raise  # half a response is out: the connection can only be dropped
            response = problem_response(500, "internal", INTERNAL_ERROR)
            await response(scope, receive, send)


def _version() -> str:
    from peopleseg import __version__

    return __version__
