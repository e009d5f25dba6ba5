"""Getting an image out of a request safely: the body read under a byte limit, then decoded under a pixel limit.

The byte limit is enforced while the body streams in (a declared Content-Length over it is refused before reading
anything), so a huge upload never sits in memory. The pixel limit is checked from the image header, before the pixels
are decoded, so a small file that claims an enormous size (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request

from peopleseg.data.image_io import MAX_IMAGE_PIXELS, pil_to_rgb
from peopleseg.serve.problems import ServeProblem

# Room for multipart boundaries and part headers on top of the image itself.
MULTIPART_OVERHEAD = 64 * 1024
MULTIPART_FIELD = "file"


def client_disconnected(message: str) -> ServeProblem:
    # 499, as nginx logs it: nobody reads the answer, but the metrics and the log tell a client that left apart.
    return ServeProblem(499, "client_disconnected", message)


def too_large(size: str, limit: int) -> ServeProblem:
    return ServeProblem(413, "upload_too_large", f"the upload is {size}, over the limit of {limit} bytes")


async def read_body(request: Request, limit: int, slack: int = 0) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass `limit` + `slack` bytes (the slack is room
    for a multipart form's own bytes; the message names `limit`, the one the client controls)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ServeProblem(400, "bad_request", f"Content-Length is not a number: '{declared[:40]}'")
        if int(declared) > limit + slack:
            raise too_large(f"{int(declared)} bytes", limit)
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit + slack:
                raise too_large(f"more than {limit + slack} bytes", limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise client_disconnected("the client went away before the upload finished") from None
    body = b"".join(chunks)
    request._body = body  # Starlette's own cache: `request.form()` parses these bytes instead of reading again
    return body


async def image_bytes(request: Request, max_upload_bytes: int) -> bytes:
    """The uploaded image's bytes: the `file` field of a multipart form (or its only file), else the raw body."""
    content_type = request.headers.get("content-type", "").lower()
    multipart = content_type.startswith("multipart/form-data")
    body = await read_body(request, max_upload_bytes, MULTIPART_OVERHEAD if multipart else 0)
    if not multipart:
        # Any other Content-Type is the image itself: `curl --data-binary @photo.jpg` labels it url-encoded.
        if not body:
            raise ServeProblem(400, "no_image", "the request has no body: send an image, raw or as a multipart 'file'")
        return body
    try:
        form = await request.form(max_files=1, max_fields=8)
    except Exception as exc:  # python-multipart and Starlette raise several types for a malformed form
        problem = f"cannot parse the multipart form ({getattr(exc, 'detail', None) or exc.__class__.__name__})"
        raise ServeProblem(400, "bad_multipart", problem) from None
    try:
        part = form.get(MULTIPART_FIELD)
        if part is None:
            files = [value for value in form.values() if isinstance(value, UploadFile)]
            part = files[0] if len(files) == 1 else None  # a single file under another name is accepted too
        if part is None:
            raise ServeProblem(400, "no_image", f"the multipart form has no '{MULTIPART_FIELD}' field with the image")
        if not isinstance(part, UploadFile):
            raise ServeProblem(400, "no_image", f"the form field '{MULTIPART_FIELD}' is text, not an uploaded file")
        data = await part.read()
    finally:
        await form.close()
    if len(data) > max_upload_bytes:
        raise too_large(f"{len(data)} bytes", max_upload_bytes)
    if not data:
        raise ServeProblem(400, "no_image", f"the uploaded '{MULTIPART_FIELD}' is empty")
    return data


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """RGB uint8 [H, W, 3], upright (EXIF orientation applied), from encoded bytes (JPEG, PNG, WebP, …).

    400 for bytes that are not an image or are corrupt; 422 for an image over `max_pixels` (width x height).
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own bomb threshold; the explicit pixel check below is the rule that applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise too_many_pixels(width, height, max_pixels)
            image.load()
        return pil_to_rgb(image)
    except UnidentifiedImageError:
        head = data[:8]
        raise ServeProblem(
            400, "not_an_image", f"the upload is not an image Pillow can read ({len(data)} bytes starting {head!r})"
        ) from None
    except Image.DecompressionBombError as exc:
        # Pillow refuses these inside open(), before the size is ours to read: its message holds the pixel count.
        found, limit = re.search(r"\((\d+) pixels\)", str(exc)), min(max_pixels, MAX_IMAGE_PIXELS)
        if found:
            raise too_many_pixels_of(found[1], limit) from None
        raise ServeProblem(422, "too_many_pixels", f"the image has more pixels than the limit of {limit}") from None
    except ServeProblem:
        raise
    except MemoryError:
        raise ServeProblem(422, "too_many_pixels", "the image is too large to decode in the memory available") from None
    except Exception as exc:  # Pillow's decoders fail in many ways (OSError, SyntaxError, struct.error, …) on bad bytes
        raise ServeProblem(400, "corrupt_image", f"the image is corrupt or truncated ({_short(exc)})") from None


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())[:160]
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def too_many_pixels(width: int, height: int, max_pixels: int) -> ServeProblem:
    return too_many_pixels_of(f"{width}x{height} = {width * height}", max_pixels)


def too_many_pixels_of(size: str, max_pixels: int) -> ServeProblem:
    return ServeProblem(422, "too_many_pixels", f"the image is {size} pixels, over the limit of {max_pixels}")
