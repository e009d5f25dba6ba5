from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The fast CPU path caches graphs under $PEOPLESEG_CACHE: one folder per test session, never the user's."""
    import os

    os.environ["PEOPLESEG_CACHE"] = str(tmp_path_factory.mktemp("peopleseg_cache"))


@pytest.fixture
def data_dir() -> Path:
    return DATA


def randomise_batchnorm(model: torch.nn.Module) -> None:
    """Give every BatchNorm non-trivial running statistics, so a test notices if they are lost or mixed up."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.1)
                module.bias.normal_(0, 0.1)


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A fresh folder served over HTTP on 127.0.0.1, for stream and URL tests: (base URL, folder)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
