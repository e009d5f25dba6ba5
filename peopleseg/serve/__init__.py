"""`peopleseg serve`: person segmentation as an HTTP and WebSocket service, with a web page.

`create_app(ServeConfig(...))` builds the FastAPI app; `peopleseg.serve.command.add_serve_parser` adds the CLI
command. Needs the `serve` extra: `pip install "peopleseg[serve]"`.
"""

from peopleseg.serve.config import ServeConfig, load_serve_config

__all__ = ["ServeConfig", "create_app", "load_serve_config"]


def __getattr__(name: str) -> object:
    # The app pulls in FastAPI: import it only when asked, so the config (and the CLI's --help) work without it.
    if name == "create_app":
        from peopleseg.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'peopleseg.serve' has no attribute '{name}'")
