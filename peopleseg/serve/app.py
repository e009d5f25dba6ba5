"""The FastAPI app of `peopleseg serve`: segmentation over HTTP and WebSocket, health, metrics, and the web page.

`create_app(config, segmenter)` builds it. Routes:

| route | what |
|---|---|
| `POST /v1/segment` | an image (raw body or multipart `file`) → mask, overlay, cutout, blur or JSON (`format=`) |
| `GET /v1/models` | the model being served, the formats and the limits |
| `WS /v1/stream` | JPEG frames in, masks and people out, smoothed over time per connection |
| `GET /healthz`, `GET /readyz` | liveness; readiness (the model is loaded and the queue has room); HEAD too |
| `GET /metrics` | Prometheus text |
| `GET /docs`, `GET /openapi.json` | the OpenAPI document and its viewer (Swagger UI, from a CDN) |
| `GET /` | the web page (static files, no build step) |

`GET /v1/stream` over plain HTTP answers 426. An image holds its place in the queue from before it is decoded until
its batch takes it, so `--max-queue` bounds the decoded images in memory; a request whose client disconnects is
cancelled (its image leaves the queue unrun) and counted as 499.

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
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError, WebSocketRequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
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
from peopleseg.serve.upload import client_disconnected, decode_image, image_bytes

log = logging.getLogger("peopleseg.serve")
STATIC_DIR = Path(__file__).resolve().parent / "static"
# Response headers that summarise an image answer; the web page reads them (CORS exposes them when enabled).
SUMMARY_HEADERS = ("X-People-Count", "X-Person-Fraction", "X-Batch-Size", "X-Image-Size")
WS_POLICY_VIOLATION = 1008  # the WebSocket close code for "not allowed", e.g. a missing or wrong key
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")
INTERNAL_ERROR = "internal server error (the server log has the details)"
UPGRADE_HEADERS = {"Upgrade": "websocket", "Connection": "Upgrade"}
WS_REASON_BYTES = 123  # the most a WebSocket close frame's reason may hold
DOCS_OFFLINE = (
    '<p style="font: 16px sans-serif; margin: 2em">This viewer loads Swagger UI from cdn.jsdelivr.net. If nothing '
    'else appears, this browser cannot reach it: the OpenAPI document itself is at <a href="/openapi.json">'
    "/openapi.json</a>.</p>"
)
T = TypeVar("T")


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
        docs_url=None,  # served below, with a word for when its CDN cannot be reached
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
            JsonCORSMiddleware,
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

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        openapi_url = request.scope.get("root_path", "").rstrip("/") + (app.openapi_url or "/openapi.json")
        page = get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title} API")
        # Swagger UI comes from a CDN and replaces this text once it loads; offline, the text is what remains.
        text = bytes(page.body).decode().replace('<div id="swagger-ui">', f'<div id="swagger-ui">{DOCS_OFFLINE}', 1)
        return HTMLResponse(text)

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

    # Load balancers and uptime checks probe with HEAD; the same answer, undocumented twice over.
    app.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)
    app.add_api_route("/readyz", readyz, methods=["HEAD"], include_in_schema=False)

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
            # The body is in: from here on the client can only leave, and then the work stops (see below).
            return await _unless_disconnected(request, segment_bytes(data))

        async def segment_bytes(data: bytes) -> Response:
            image, batched = await _decode_and_submit(batcher, metrics, data, config.max_pixels)
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

    @app.get("/v1/stream", include_in_schema=False)
    async def stream_over_http() -> Response:
        return problem_response(
            426, "upgrade_required", "/v1/stream is a WebSocket: connect with ws:// (or wss://)", UPGRADE_HEADERS
        )

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


@contextlib.contextmanager
def _queue_refusals(metrics: ServeMetrics) -> Iterator[None]:
    """The batcher's refusals as the service's 503s."""
    try:
        yield
    except QueueFull as exc:
        metrics.rejected.labels("queue_full").inc()
        raise ServeProblem(503, "busy", str(exc), {"Retry-After": str(exc.retry_after_s)}) from None
    except BatcherStopped as exc:
        raise ServeProblem(503, "not_ready", str(exc), {"Retry-After": "1"}) from None


def _check_room(batcher: MicroBatcher[Any, Any], metrics: ServeMetrics) -> None:
    with _queue_refusals(metrics):
        batcher.check_room()


async def _decode_and_submit(
    batcher: MicroBatcher[Any, Any], metrics: ServeMetrics, data: bytes, max_pixels: int
) -> tuple[np.ndarray, Any]:
    """Decode `data` and run it through the model. The queue place is taken before decoding, so images being decoded
    count towards --max-queue: however many requests arrive at once, at most that many decoded images exist."""
    with _queue_refusals(metrics):
        slot = batcher.reserve()
    try:
        decoding = asyncio.ensure_future(run_in_threadpool(decode_image, data, max_pixels))
        try:
            image = await asyncio.shield(decoding)
        except asyncio.CancelledError:
            slot.release_when_done(decoding)  # the thread goes on decoding: its pixels still count
            raise
        with _queue_refusals(metrics):
            batched = await batcher.submit(image, slot)
    finally:
        slot.release()
    if isinstance(batched.result, Exception):
        raise batched.result
    return image, batched


async def _unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result, unless the client disconnects first: then the work is cancelled (a queued image leaves the
    queue without running) and the request ends as 499 `client_disconnected`, never as a 200 that nobody reads."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        unfinished = [future for future in (task, gone) if not future.done()]
        for future in unfinished:
            future.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)  # a cancelled submit has left the queue
    if gone.done() and not gone.cancelled():
        for future in (task, gone):
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: nobody is left to tell
        raise client_disconnected("the client went away before the answer was ready")
    return task.result()


async def _disconnect(request: Request) -> None:
    # Called once the body is read: the next message for this request is its end (as Starlette's StreamingResponse
    # listens for it).
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
                    offered_key = control["api_key"]
                    if not isinstance(offered_key, str):  # refused, never str()-ed: 123 is not the key "123"
                        if keys.enabled:
                            await _refuse(websocket, 'the API key must be a JSON string: {"api_key": "KEY"}')
                            return
                        problem = ServeProblem(400, "bad_message", 'api_key must be a JSON string: {"api_key": "KEY"}')
                        await websocket.send_json(_problem_message(problem))
                        continue
                    authenticated = keys.accepts(offered_key)
                    if not authenticated:
                        await _refuse(websocket, "the API key is not valid")
                        return
                if control.get("reset") is True:  # only true resets: {"reset": "no"} must not
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

    # The timeout covers only the steps that keep no state of the connection. Once the model has answered, the
    # frame is followed to the end before the next one starts: a frame abandoned in its thread would race the next
    # over the connection's smoother and tracker (neither is thread-safe), and feed them after it was dropped.
    try:
        image, batched = await asyncio.wait_for(
            _decode_and_submit(batcher, metrics, data, config.max_pixels), config.request_timeout_s
        )
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


def _validation_message(errors: Sequence[Any]) -> str:
    """One line naming the first invalid parameter: 'alpha: Input should be less than or equal to 1'."""
    first = errors[0] if errors else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("query", "body", "path", "header"))
    return f"{where}: {first.get('msg', 'invalid value')}" if where else str(first.get("msg", "invalid"))


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
        return problem_response(422, "invalid_parameter", _validation_message(exc.errors()))

    @app.exception_handler(WebSocketRequestValidationError)
    async def invalid_stream_request(websocket: WebSocket, exc: WebSocketRequestValidationError) -> None:
        # Refusing the handshake would be a bare HTTP 403, the same as a wrong key: accept, say which parameter is
        # wrong, then close.
        message = _validation_message(exc.errors())
        await websocket.accept()
        await websocket.send_json(_problem_message(ServeProblem(422, "invalid_parameter", message)))
        reason = message.encode()[:WS_REASON_BYTES].decode(errors="ignore")
        await websocket.close(code=WS_POLICY_VIOLATION, reason=reason)

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


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered as the service's one-line JSON error, not plain text."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")  # e.g. "origin" or "method, headers"
        problem = problem_response(
            response.status_code, "cors_refused", f"CORS preflight refused: this server does not allow its {refused}"
        )
        for name, value in response.headers.items():  # keep Vary and the Access-Control-* headers
            if name not in ("content-type", "content-length"):
                problem.headers[name] = value
        return problem


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
