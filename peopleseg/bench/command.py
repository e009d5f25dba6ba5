"""`peopleseg benchmark`: the command-line face of `run_benchmark`.

`add_benchmark_parser(commands)` adds the subcommand to the CLI's subparsers; its `run` returns an exit code (1 when
a variant failed while running) and raises `PeoplesegError` subclasses for the CLI to print as one line.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

from peopleseg.bench.config import DEFAULT_VARIANTS, VARIANT_ABOUT, VARIANTS, BenchmarkConfig
from peopleseg.errors import ConfigError
from peopleseg.resize_policy import CHOICES

DESCRIPTION = (
    "Time models and backends side by side: each call is Segmenter.predict_batch on real photos (preprocessing, "
    "model and postprocessing), after a warm-up, in interleaved rounds so every variant sees the same machine "
    "state. Prints median and p90 latency, images/s, peak memory, the ratio to a baseline measured in the same run "
    "(HF transformers eager when installed, else our torch eager fp32) and the share of mask pixels that agree with "
    "our torch fp32 model."
)
EPILOG = "variants:\n" + "\n".join(f"  {name:<14}{about}" for name, about in VARIANT_ABOUT.items())


def add_benchmark_parser(commands: argparse._SubParsersAction) -> None:
    """Add `benchmark` to `commands` (the CLI's subparsers), with `run=` set to the command."""
    bench = commands.add_parser(
        "benchmark",
        help="speed, memory and agreement of models and backends, side by side",
        description=textwrap.fill(DESCRIPTION, 100),  # the raw formatter (kept for the epilog's table) won't wrap
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = BenchmarkConfig()
    bench.add_argument(
        "-m",
        "--model",
        dest="models",
        action="append",
        metavar="MODEL",
        help="'default' (the bundled model), a name such as segformer_b0 (random weights) or a weights file; "
        "repeat for several (default: default)",
    )
    bench.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, or 'all' ({', '.join(VARIANTS)}); default %(default)s",
    )
    bench.add_argument(
        "--baseline",
        default=defaults.baseline,
        help="the variant the ratios are against, measured in the same run; auto: hf when transformers is "
        "installed, else torch (default %(default)s)",
    )
    bench.add_argument("--device", default=defaults.device, help="cpu, cuda or cuda:N (default %(default)s)")
    bench.add_argument("--batch", default="1", help="batch sizes, comma-separated, e.g. 1,8,32 (default %(default)s)")
    bench.add_argument("--input-size", default=None, help="network input, N or WxH, multiples of 32 (default: model's)")
    bench.add_argument("--threads", type=int, default=None, help="CPU threads for torch and onnxruntime")
    bench.add_argument("--rounds", type=int, default=defaults.rounds, help="interleaved rounds (default %(default)s)")
    bench.add_argument(
        "--calls",
        dest="calls_per_round",
        type=int,
        default=defaults.calls_per_round,
        help="timed calls per variant per round (default %(default)s)",
    )
    bench.add_argument(
        "--warmup", type=int, default=defaults.warmup, help="untimed calls per variant first (default %(default)s)"
    )
    bench.add_argument(
        "--images",
        nargs="+",
        action="extend",
        default=None,
        metavar="PATH",
        help="photo files or folders to time and compare on (default: the repository's tests/data, in a checkout)",
    )
    bench.add_argument(
        "--max-images", type=int, default=defaults.max_images, help="use at most this many photos (default %(default)s)"
    )
    bench.add_argument("--resize", default=defaults.resize, choices=CHOICES)
    bench.add_argument("--seed", type=int, default=defaults.seed, help="seed for random weights (default %(default)s)")
    bench.add_argument("--json", dest="json_path", metavar="PATH", help="write the full report as JSON")
    bench.add_argument("--markdown", dest="markdown_path", metavar="PATH", help="write the table as Markdown")
    bench.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    bench.set_defaults(run=run_benchmark_command)


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    """The `BenchmarkConfig` of parsed `benchmark` flags; a bad value is a ConfigError naming the field."""
    variants = _split(args.variants)
    if variants == ["all"]:
        variants = list(VARIANTS)
    try:
        batch_sizes = tuple(int(b) for b in _split(args.batch))
    except ValueError:
        raise ConfigError(f"batch_sizes: comma-separated positive integers, got '{args.batch}'") from None
    return BenchmarkConfig(
        models=tuple(args.models or ["default"]),
        variants=tuple(variants),
        baseline=args.baseline,
        device=args.device,
        batch_sizes=batch_sizes,
        input_size=args.input_size,
        threads=args.threads,
        rounds=args.rounds,
        calls_per_round=args.calls_per_round,
        warmup=args.warmup,
        images=tuple(args.images or ()),
        max_images=args.max_images,
        resize=args.resize,
        seed=args.seed,
        progress=not args.quiet,
    )


def run_benchmark_command(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, write the files asked for. Returns the exit code."""
    from rich.console import Console

    from peopleseg.bench.measure import run_benchmark

    config = config_from_args(args)
    report = run_benchmark(config)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped or captured: don't squeeze the table into 80 columns
    console.print(report.table())
    for line in report.not_measured():
        print(line)
    for note in report.notes:
        print(f"note: {note}")
    written = []
    if args.json_path:
        written.append(report.write_json(args.json_path))
    if args.markdown_path:
        written.append(report.write_markdown(args.markdown_path))
    if written:
        print("wrote: " + ", ".join(str(p) for p in written))
    print(report.summary())
    return 1 if report.failed else 0


def _split(text: Any) -> list[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]


if __name__ == "__main__":  # `python -m peopleseg.bench.command ...` runs it without the main CLI
    from peopleseg.errors import PeoplesegError

    parser = argparse.ArgumentParser(prog="peopleseg")
    add_benchmark_parser(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(["benchmark", *sys.argv[1:]])
    try:
        sys.exit(parsed.run(parsed))
    except PeoplesegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
