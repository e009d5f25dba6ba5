"""Load test of `peopleseg serve` on loopback: micro-batching on against one image at a time, in one run.

For each mode the script starts a server process on 127.0.0.1 (a free port), warms it up, then sends `--requests`
POST /v1/segment requests from `--clients` concurrent clients (a photo as the raw body, the mask back), and stops it.
It reports p50 and p99 latency, throughput, errors (anything but 200; there must be none), the mean batch size the
server ran, and the server's resident memory before the load, half-way and after it (it must level off, not grow).

    python benchmarks/serve_load.py [--clients 64] [--requests 1000] [--max-batch 8] [--max-wait-ms 10]
        [--model PATH] [--input-size 128] [--image-size 256] [--threads 2]

Without `--model`, a SegFormer-B0 with random weights at `--input-size` is saved to a temporary file: the tiny model
keeps the run to a few minutes on 2 CPU cores, and the weights do not change the speed. The exit code is 1 when any
request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "tests" / "data" / "astronaut.jpg"
HOST = "127.0.0.1"  # loopback only: a load test never leaves the machine


@dataclass
class ModeResult:
    name: str
    max_batch: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    mean_batch: float
    rss_mb: tuple[float, float, float]  # before, half-way, after

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per mode (default 1000)")
    parser.add_argument("--max-batch", type=int, default=8, help="the batching mode's --max-batch (default 8)")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="the batching mode's --max-wait-ms")
    parser.add_argument("--model", help="weights or .onnx to serve (default: a random B0 at --input-size)")
    parser.add_argument("--input-size", type=int, default=128, help="network input of the default model")
    parser.add_argument("--image-size", type=int, default=256, help="the photo is resized to this square size")
    parser.add_argument("--threads", type=int, default=2, help="the server's model threads")
    parser.add_argument("--timeout-s", type=float, default=600, help="give up on a mode after this long")
    args = parser.parse_args()
    if args.clients < 1 or args.requests < 1 or args.max_batch < 2:
        parser.error("--clients and --requests must be >= 1, and --max-batch >= 2 (1 is the baseline)")
    try:
        import httpx
    except ImportError:
        print("error: the load test needs httpx (pip install httpx)", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="peopleseg_load_") as scratch:
        model = args.model or _tiny_model(Path(scratch) / "tiny.safetensors", args.input_size)
        photo = _photo(args.image_size)
        modes = [("one at a time", 1, 0.0), ("micro-batching", args.max_batch, args.max_wait_ms)]
        results = []
        for name, max_batch, max_wait_ms in modes:
            print(f"{name}: {args.requests} requests from {args.clients} clients …", file=sys.stderr, flush=True)
            results.append(asyncio.run(_run_mode(httpx, args, model, photo, name, max_batch, max_wait_ms)))

    print(
        f"\npeopleseg serve on {HOST}, {'model ' + args.model if args.model else f'random B0 at {args.input_size}'}, "
        f"{args.threads} model threads, photo {args.image_size}x{args.image_size} JPEG ({len(photo)} bytes) -> "
        f"mask PNG; {args.clients} clients, {args.requests} requests per mode; {os.cpu_count()} CPUs\n"
    )
    print(
        "| mode | max batch | requests | errors | throughput (req/s) | p50 ms | p99 ms | mean batch | "
        "server RSS before / half / after (MB) | throughput vs one at a time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    baseline = results[0].throughput
    for result in results:
        before, half, after = result.rss_mb
        print(
            f"| {result.name} | {result.max_batch} | {result.requests} | {result.errors} | "
            f"{result.throughput:.1f} | {result.percentile(50):.0f} | {result.percentile(99):.0f} | "
            f"{result.mean_batch:.2f} | {before:.0f} / {half:.0f} / {after:.0f} | {result.throughput / baseline:.2f}x |"
        )
    failed = sum(result.errors for result in results)
    if failed:
        print(f"\nFAILED: {failed} request(s) did not get a 200", file=sys.stderr)
    return 1 if failed else 0


async def _run_mode(httpx, args, model: str, photo: bytes, name: str, max_batch: int, max_wait_ms: float) -> ModeResult:
    port = _free_port()
    command = [
        sys.executable, "-m", "peopleseg.serve.command", "--host", HOST, "--port", str(port), "--model", model,
        "--threads", str(args.threads), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
        "--max-queue", str(max(64, 2 * args.clients)), "--request-timeout", "120", "--log-level", "warning",
    ]  # fmt: skip
    environ = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen(command, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://{HOST}:{port}"
    url = f"{base}/v1/segment?format=mask"
    try:
        limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
        async with httpx.AsyncClient(limits=limits, timeout=120) as http:
            await _wait_ready(http, base, server)
            for _ in range(8):  # warm-up: first calls allocate and tune
                (await http.post(url, content=photo)).raise_for_status()
            rss_before = _rss_mb(server.pid)
            latencies: list[float] = []
            errors = 0
            issued = 0
            rss_half = rss_before

            async def client() -> None:
                nonlocal issued, errors, rss_half
                while issued < args.requests:
                    issued += 1
                    if issued == args.requests // 2:
                        rss_half = _rss_mb(server.pid)
                    start = time.perf_counter()
                    try:
                        response = await http.post(url, content=photo)
                        ok = response.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    latencies.append(1000 * (time.perf_counter() - start))
                    errors += not ok

            started = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(client() for _ in range(args.clients))), args.timeout_s)
            seconds = time.perf_counter() - started
            rss_after = _rss_mb(server.pid)
            metrics = (await http.get(f"{base}/metrics")).text
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return ModeResult(
        name,
        max_batch,
        len(latencies),
        errors,
        seconds,
        latencies,
        _mean_batch(metrics),
        (rss_before, rss_half, rss_after),
    )


async def _wait_ready(http, base: str, server: subprocess.Popen) -> None:
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read()[-2000:]}")
        try:
            if (await http.get(f"{base}/readyz", timeout=2)).status_code == 200:
                return
        except Exception:  # not listening yet
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("the server did not become ready in 120 s")


def _mean_batch(metrics: str) -> float:
    total = re.search(r"^peopleseg_batch_size_sum ([0-9.e+]+)$", metrics, re.M)
    count = re.search(r"^peopleseg_batch_size_count ([0-9.e+]+)$", metrics, re.M)
    return float(total.group(1)) / float(count.group(1)) if total and count and float(count.group(1)) else 0.0


def _rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) / 1024 if match else float("nan")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _tiny_model(path: Path, size: int) -> str:
    import warnings

    import torch

    from peopleseg.models import ModelInfo, build_model, save_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_model(build_model("segformer_b0", info=ModelInfo(arch="segformer_b0", input_size=(size, size))), path)
    return str(path)


def _photo(size: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(PHOTO).convert("RGB").resize((size, size)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


if __name__ == "__main__":
    sys.exit(main())
