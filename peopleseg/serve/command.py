"""`peopleseg serve`: the command-line face of the service.

`add_serve_parser(commands)` adds the subcommand to the CLI's subparsers; its `run` returns an exit code and raises
`PeoplesegError` subclasses for the CLI to print as one line. Every flag falls back to its `PEOPLESEG_*` environment
variable, then to the default (see `peopleseg.serve.config`). `python -m peopleseg.serve.command` runs it alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from peopleseg.argtypes import positive_int
from peopleseg.errors import ConfigError
from peopleseg.resize_policy import CHOICES
from peopleseg.serve.config import CONFIG_ENV, PRECISIONS, ServeConfig, env_name, load_serve_config, read_keys_file

DESCRIPTION = (
    "Serve person segmentation over HTTP: POST /v1/segment (mask, overlay, cutout, blur or json), WebSocket "
    "/v1/stream for live video, a web page at /, /healthz, /readyz, /metrics and /docs. Concurrent requests are "
    "batched through the model. Every flag can also be set by an environment variable, named in its help."
)
# Flag destinations that are ServeConfig fields (all but those that need converting).
_DIRECT = (
    "host", "port", "model", "backend", "device", "precision", "resize", "tta", "threads", "workers", "max_batch",
    "max_wait_ms", "max_queue", "max_upload_mb", "max_pixels", "request_timeout_s", "api_keys_file", "min_area",
    "smooth_alpha", "log_level",
)  # fmt: skip


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    """Add `serve` to `commands` (the CLI's subparsers), with `run=` set to the command."""
    serve = commands.add_parser(
        "serve", help="an HTTP service with a web page: segmentation, live webcam, metrics", description=DESCRIPTION
    )
    defaults = ServeConfig()

    def add(*flags: str, dest: str, help: str, **kwargs: Any) -> None:
        shown = getattr(defaults, dest)
        default = f"default {shown}; " if shown not in (None, "", ()) else ""
        serve.add_argument(*flags, dest=dest, default=None, help=f"{help} ({default}env {env_name(dest)})", **kwargs)

    add("--host", dest="host", help="address to bind; 0.0.0.0 serves every network interface, on purpose")
    add("--port", dest="port", type=positive_int, help="TCP port")
    add("-m", "--model", dest="model", help="'default', a model name, a weights path or an .onnx file")
    add("--backend", dest="backend", help="auto (by file type), torch, onnxruntime or tensorrt")
    add("--device", dest="device", help="cpu, cuda, cuda:1, …")
    add(
        "--precision",
        dest="precision",
        choices=PRECISIONS,
        help="auto (INT8 fast path on CPU, else fp32), fp32, int8 (onnxruntime), fp16 or bf16 (torch on GPU)",
    )
    add("--resize", dest="resize", choices=CHOICES, help="how images meet the network (auto: the model's own)")
    add("--tta", dest="tta", help="test-time augmentation views, e.g. flip or flip,sliding (each costs a pass)")
    add("--threads", dest="threads", type=positive_int, help="CPU threads for the model")
    add("--workers", dest="workers", type=positive_int, help="server processes, each with its own model")
    add("--max-batch", dest="max_batch", type=positive_int, help="images per forward pass; 1 turns batching off")
    add("--max-wait-ms", dest="max_wait_ms", type=_non_negative_float, help="how long a batch waits to fill")
    add("--max-queue", dest="max_queue", type=positive_int, help="images being decoded or queued before 503")
    add("--max-upload-mb", dest="max_upload_mb", type=_positive_float, help="largest upload in MiB, 413 above")
    add("--max-pixels", dest="max_pixels", type=positive_int, help="largest image, width x height, 422 above")
    add("--request-timeout", dest="request_timeout_s", type=_positive_float, help="seconds per request, 504 after")
    serve.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        default=None,
        metavar="KEY",
        help=f"require this key (repeat for several); prefer {env_name('api_keys')} or --api-keys-file, which do not "
        "show in the process list",
    )
    add("--api-keys-file", dest="api_keys_file", metavar="FILE", help="file of accepted keys, one per line")
    serve.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        default=None,
        metavar="ORIGIN",
        help=f"allow browser calls from this origin, e.g. https://app.example.com (repeat; default none; env "
        f"{env_name('cors_origins')}, comma-separated)",
    )
    add("--min-area", dest="min_area", type=float, help="smallest person region: pixels, or a fraction below 1")
    add("--smooth-alpha", dest="smooth_alpha", type=_positive_float, help="/v1/stream: weight of the newest frame")
    add("--log-level", dest="log_level", choices=("critical", "error", "warning", "info", "debug"), help="log level")
    serve.set_defaults(run=run_serve)


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> ServeConfig:
    """The `ServeConfig` of parsed `serve` flags, with env vars and defaults filling what was not given."""
    flags: dict[str, Any] = {name: getattr(args, name) for name in _DIRECT}
    flags["api_keys"] = tuple(args.api_keys) if args.api_keys else None
    flags["cors_origins"] = tuple(args.cors_origins) if args.cors_origins else None
    return load_serve_config(flags, environ)


def run_serve(args: argparse.Namespace) -> int:
    """Load the model, then serve until interrupted. Returns the exit code."""
    config = config_from_args(args)
    try:
        import uvicorn

        from peopleseg.serve.app import configure_logging, create_app, load_segmenter
    except ImportError as exc:
        raise ConfigError(
            f"peopleseg serve needs the serve extra ({exc.name} is missing): pip install 'peopleseg[serve]'"
        ) from None
    configure_logging(config.log_level)
    if config.api_keys_file:
        read_keys_file(config.api_keys_file)  # a bad keys file stops the start, with its one-line error
    options: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "log_level": config.log_level,
        "ws_max_size": config.max_upload_bytes + 4096,  # a larger WebSocket frame is refused by the protocol
        "server_header": False,
    }
    address = f"peopleseg serve: http://{_url_host(config.host)}:{config.port}/ (Ctrl-C stops it)"
    if config.workers == 1:
        app = create_app(config)  # the model loads here, so a bad --model is a one-line error, not a traceback
        print(address, file=sys.stderr)  # only once the model is up: the address is a promise
        uvicorn.run(app, **options)
        return 0
    # Several processes: each builds its own app from the config in the environment. Load the model once here
    # first, so a bad --model fails now with one line instead of in every worker.
    load_segmenter(config)
    print(address, file=sys.stderr)
    os.environ[CONFIG_ENV] = config.to_json()
    uvicorn.run("peopleseg.serve.app:create_app_from_env", factory=True, workers=config.workers, **options)
    return 0


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "localhost"
    return f"[{host}]" if ":" in host else host


def _positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got '{text}'") from None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m peopleseg.serve.command [flags]`: `peopleseg serve [flags]`, through the CLI's own runner."""
    from peopleseg.cli import main as cli_main

    return cli_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
