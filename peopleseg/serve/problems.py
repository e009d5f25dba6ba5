"""HTTP errors as one-line JSON: `{"error": "<what went wrong>", "code": "<machine-readable>", "status": 400}`.

Every refusal of the service goes through `ServeProblem`, so clients and the web page read one shape, and no response
ever carries a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi.responses import JSONResponse

from peopleseg.errors import PeoplesegError


class ServeProblem(PeoplesegError):
    """A request the service refuses: an HTTP status, a short code and a one-line message for humans."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return problem_response(self.status, self.code, self.message, self.headers)


def problem_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The JSON error body every failing endpoint returns."""
    one_line = " ".join(str(message).split())  # a message never spans lines, whatever an exception held
    return JSONResponse({"error": one_line, "code": code, "status": status}, status_code=status, headers=headers)


# The JSON error shape, for the OpenAPI document.
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "one line, for humans"},
        "code": {"type": "string", "description": "machine-readable, e.g. not_an_image, too_many_pixels"},
        "status": {"type": "integer"},
    },
    "required": ["error", "code", "status"],
}
