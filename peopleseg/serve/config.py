"""`ServeConfig`: every setting of `peopleseg serve`, from flags, then `PEOPLESEG_*` env vars, then defaults.

Each field has an environment variable named after it: `model` is `PEOPLESEG_MODEL`, `max_batch` is
`PEOPLESEG_MAX_BATCH`. Lists (`api_keys`, `cors_origins`) are comma-separated there. A bad value is a `ConfigError`
that names the flag or variable it came from.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peopleseg.errors import ConfigError
from peopleseg.infer.backends import PRECISIONS
from peopleseg.infer.tta import parse_views
from peopleseg.resize_policy import CHOICES

ENV_PREFIX = "PEOPLESEG_"
# `--workers N` starts N processes; each rebuilds the app from this variable (a JSON ServeConfig).
CONFIG_ENV = "PEOPLESEG_SERVE_CONFIG"
# HTTP headers reach the server as latin-1 text while clients send UTF-8 or latin-1 bytes: only ASCII keys match
# the same way from every client.
NON_ASCII_KEY = "an API key has a non-ASCII character; use ASCII keys (HTTP headers carry no other text reliably)"
LIST_FIELDS = ("api_keys", "cors_origins")


@dataclass(frozen=True)
class ServeConfig:
    """The service's settings. Limits are per request; the queue bounds memory: at most `max_queue` images (each at
    most `max_pixels` x 3 bytes decoded) are being decoded or wait for the model at any time."""

    host: str = "127.0.0.1"  # localhost only: serving the network is an explicit choice (--host 0.0.0.0)
    port: int = 8000
    model: str = "default"  # 'default', a registry name, a weights path or an .onnx file
    backend: str = "auto"
    device: str = "cpu"
    precision: str = "auto"
    resize: str = "auto"
    tta: str = ""  # test-time augmentation views, e.g. "flip" (infer/tta.py); each costs another pass
    threads: int | None = None  # CPU threads for the model (torch or onnxruntime); None leaves the library default
    workers: int = 1  # server processes, each with its own model and batcher
    max_batch: int = 8  # images per forward pass; 1 turns micro-batching off
    max_wait_ms: float = 10.0  # how long the first image of a batch waits for company
    max_queue: int = 64  # images being decoded or waiting for the model; beyond this, 503 with Retry-After
    max_upload_mb: float = 20.0  # the largest upload (or WebSocket frame), in MiB
    max_pixels: int = 4096 * 4096  # width x height after decoding; checked before the pixels are decoded
    request_timeout_s: float = 30.0  # reading, queueing, inference and encoding of one request together
    api_keys: tuple[str, ...] = ()  # empty, with no keys file: no authentication
    api_keys_file: str | None = None  # one key per line; blank lines and '#' comments are ignored
    cors_origins: tuple[str, ...] = ()  # empty: no CORS headers at all
    min_area: float = 0.0005  # smallest person region counted (pixels, or a fraction of the image below 1)
    smooth_alpha: float = 0.5  # /v1/stream: weight of the newest frame in the temporal smoothing
    log_level: str = "info"

    def __post_init__(self) -> None:
        for name in LIST_FIELDS:  # frozen: set through object.__setattr__, as dataclasses do themselves
            object.__setattr__(self, name, _string_tuple(name, getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first setting that is out of range."""
        positive_ints = ("port", "workers", "max_batch", "max_queue", "max_pixels")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.port > 65535:
            raise ConfigError(f"port must be at most 65535, got {self.port}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads <= 0):
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")
        if not 0 < self.max_upload_mb <= 4096:
            raise ConfigError(f"max_upload_mb must be in (0, 4096], got {self.max_upload_mb!r}")
        if not 0 <= self.max_wait_ms < 60_000:
            raise ConfigError(f"max_wait_ms must be in 0..60000, got {self.max_wait_ms!r}")
        if not 0 < self.request_timeout_s <= 3600:
            raise ConfigError(f"request_timeout_s must be in (0, 3600], got {self.request_timeout_s!r}")
        if not 0 < self.smooth_alpha <= 1:
            raise ConfigError(f"smooth_alpha must be in (0, 1], got {self.smooth_alpha!r}")
        if not 0 <= self.min_area < float("inf"):
            raise ConfigError(f"min_area must be >= 0, got {self.min_area!r}")
        if self.resize not in CHOICES:
            raise ConfigError(f"resize must be one of {', '.join(CHOICES)}, got '{self.resize}'")
        if not isinstance(self.tta, str):
            raise ConfigError(f"tta must be a string of views such as 'flip,sliding', got {self.tta!r}")
        parse_views(self.tta)  # a one-line ConfigError that names tta
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if any(not key or key != key.strip() for key in self.api_keys):
            raise ConfigError("api_keys: a key is empty or has surrounding spaces")
        if not all(key.isascii() for key in self.api_keys):
            raise ConfigError(f"api_keys: {NON_ASCII_KEY}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        data = json.loads(text)
        return cls(**data)  # JSON lists become tuples in __post_init__


def _string_tuple(name: str, value: Any) -> tuple[str, ...]:
    """`value` (a list, tuple or other iterable of strings) as a tuple. A bare string is refused: iterated, it would
    be one entry per character ('h', 't', 't', 'p', …)."""
    if isinstance(value, (str, bytes)):
        raise ConfigError(f"{name} must be a list of strings, not one string (it would be one entry per character)")
    try:
        items = tuple(value)
    except TypeError:
        raise ConfigError(f"{name} must be a list of strings, got {type(value).__name__}") from None
    if not all(isinstance(item, str) for item in items):
        raise ConfigError(f"{name} must be a list of strings, got an item that is not a string")
    return items


def env_name(field_name: str) -> str:
    """The environment variable of a setting: `max_batch` → `PEOPLESEG_MAX_BATCH`."""
    return ENV_PREFIX + field_name.upper()


def load_serve_config(flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> ServeConfig:
    """Build a `ServeConfig`: a flag that was given (not None) wins, then its env var, then the default.

    `flags` maps field names to parsed values (None = not given); `environ` defaults to `os.environ`.
    """
    flags = dict(flags or {})
    environ = os.environ if environ is None else environ
    unknown = sorted(set(flags) - {f.name for f in dataclasses.fields(ServeConfig)})
    if unknown:
        raise ConfigError(f"unknown serve setting '{unknown[0]}'")
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(ServeConfig):
        if flags.get(spec.name) is not None:
            values[spec.name] = flags[spec.name]
        elif environ.get(env_name(spec.name), "").strip():
            values[spec.name] = _parse_env(spec.name, environ[env_name(spec.name)].strip())
    if not all(key.isascii() for key in values.get("api_keys", ())):
        where = "--api-key" if flags.get("api_keys") is not None else env_name("api_keys")
        raise ConfigError(f"peopleseg serve: {where}: {NON_ASCII_KEY}")
    try:
        return ServeConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"peopleseg serve: {exc}") from None


def read_keys_file(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The keys in a keys file: one per line, with blank lines and '#' comments skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the API keys file ({exc.__class__.__name__})") from None
    keys: list[str] = []
    for number, line in enumerate(lines, 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if not key.isascii():
            raise ConfigError(f"{path}, line {number}: {NON_ASCII_KEY}")  # the line, never the key itself
        keys.append(key)
    if not keys:
        raise ConfigError(f"{path}: the API keys file holds no keys")
    return tuple(keys)


def _parse_env(name: str, text: str) -> Any:
    parser = _ENV_PARSERS.get(name, str)
    try:
        return parser(text)
    except ValueError:
        raise ConfigError(f"{env_name(name)}: cannot read '{text}' as {_KINDS.get(parser, 'a value')}") from None


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


_ENV_PARSERS: dict[str, Callable[[str], Any]] = {
    "port": int,
    "threads": int,
    "workers": int,
    "max_batch": int,
    "max_queue": int,
    "max_upload_mb": float,
    "max_pixels": int,
    "max_wait_ms": float,
    "request_timeout_s": float,
    "min_area": float,
    "smooth_alpha": float,
    "api_keys": _comma_list,
    "cors_origins": _comma_list,
}
_KINDS = {int: "an integer", float: "a number"}
