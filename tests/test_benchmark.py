"""`peopleseg benchmark` (peopleseg.bench) and benchmarks/gpu_speed.py, on a random B0 at 64x64 and tiny photos."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from peopleseg.bench import BenchmarkConfig, run_benchmark
from peopleseg.bench.command import add_benchmark_parser
from peopleseg.errors import ConfigError
from peopleseg.infer.segmenter import Segmenter

pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
ROUNDS, CALLS = 2, 1
MEASURED = ("hf", "torch", "ort", "ort-int8")  # hf is not asked for: it joins as the baseline


def _tiny_photos(folder: Path) -> Path:
    """Two real photos from tests/data, shrunk (different sizes, so masks go back to each photo's own size)."""
    for name, size in (("astronaut.jpg", (96, 80)), ("grace_hopper.jpg", (72, 88))):
        Image.open(ROOT / "tests" / "data" / name).convert("RGB").resize(size).save(folder / f"{Path(name).stem}.png")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _config(photos: Path, **overrides: object) -> BenchmarkConfig:
    # One thread: this shared CPU is busy, and a tiny model gains nothing from a second.
    options = dict(
        models=("segformer_b0",), input_size=64, threads=1, rounds=1, calls_per_round=1, warmup=0,
        images=(str(photos),), progress=False,
    )  # fmt: skip
    options.update(overrides)
    return BenchmarkConfig(**options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def bench(photos: Path) -> tuple[object, list[int]]:
    """One run of four variants plus the automatic HF baseline; every predict_batch call is recorded in order."""
    variants = ("torch", "ort", "ort-int8", "tensorrt")
    config = _config(photos, variants=variants, rounds=ROUNDS, calls_per_round=CALLS, warmup=1)
    calls: list[int] = []
    original = Segmenter.predict_batch

    def recording(self: Segmenter, images: list, color: str = "rgb") -> list:
        calls.append(id(self))
        return original(self, images, color)

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Segmenter, "predict_batch", recording)
        report = run_benchmark(config)
    torch.set_num_threads(threads)
    return report, calls


def test_every_variant_has_its_stats_and_ratio_against_the_baseline(bench) -> None:
    report, _ = bench
    assert report.models[0].baseline == "hf"  # transformers is installed: HF eager is the baseline
    assert report.models[0].random_weights
    baseline = report.result("hf")
    assert baseline.is_baseline and baseline.speedup == 1.0
    assert {r.variant for r in report.results} == set(MEASURED)
    for variant in MEASURED:
        stats = report.result(variant)
        assert len(stats.latencies_ms) == ROUNDS * CALLS
        assert 0 < stats.median_ms <= stats.p90_ms <= max(stats.latencies_ms)
        assert stats.images_per_s == pytest.approx(1000 / stats.median_ms)
        assert stats.speedup == pytest.approx(baseline.median_ms / stats.median_ms)
        assert stats.peak_rss_mb > 100  # a process with torch loaded
        assert stats.cuda_max_allocated_mb is None  # CPU run
    assert report.result("ort-int8").setup_s > 0  # export and quantisation happened, outside the timing


def test_agreement_against_our_torch_fp32(bench) -> None:
    report, _ = bench
    assert report.result("torch").agreement == 1.0
    assert report.result("ort").agreement > 0.99
    assert report.result("hf").agreement > 0.99  # our weights were copied into the HF model
    assert report.result("ort-int8").agreement > 0.9


def test_rounds_are_interleaved_and_rotate(bench) -> None:
    _, calls = bench
    count = len(MEASURED)
    timed = calls[-ROUNDS * CALLS * count :]  # the timed rounds come last, one call per variant per round
    first, second = timed[:count], timed[count:]
    assert len(set(first)) == count  # every variant once per round
    assert second == first[1:] + first[:1]  # the next round starts one variant later


def test_unavailable_tensorrt_is_skipped_with_a_note(bench) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    report, _ = bench
    (skipped,) = [s for s in report.skipped if s.variant == "tensorrt"]
    assert not skipped.failed and "TensorRT is not installed" in skipped.reason
    assert all(r.variant != "tensorrt" for r in report.results)
    assert "tensorrt: skipped: TensorRT is not installed" in report.markdown()
    assert "skipped: tensorrt" in report.summary()


def test_table_json_and_markdown_hold_every_variant(bench, tmp_path: Path) -> None:
    report, _ = bench
    data = json.loads(report.write_json(tmp_path / "out" / "bench.json").read_text())
    assert data["machine"]["cpu"] and data["machine"]["torch"] == torch.__version__
    assert data["machine"]["onnxruntime"]
    assert data["config"]["input_size"] == [64, 64] and data["config"]["variants"][0] == "torch"
    rows = {r["variant"]: r for r in data["results"]}
    assert set(rows) == set(MEASURED)
    assert rows["hf"]["is_baseline"] and rows["ort"]["speedup"] == pytest.approx(report.result("ort").speedup)
    assert len(rows["torch"]["latencies_ms"]) == ROUNDS * CALLS
    assert data["skipped"][0]["variant"] == "tensorrt" or importlib.util.find_spec("tensorrt")

    markdown = report.write_markdown(tmp_path / "bench.md").read_text()
    assert "Segmenter.predict_batch" in markdown and report.config.as_command() in markdown
    for variant in MEASURED:
        stats = report.result(variant)
        label = variant + (" (baseline)" if variant == "hf" else "")
        assert f"| segformer_b0 | {label} | 1 | {stats.median_ms:.1f} |" in markdown
        assert f"{stats.speedup:.2f}x" in markdown

    console = Console(record=True, width=220)
    console.print(report.table())
    text = console.export_text()
    assert "Segmenter.predict_batch" in text and "hf (baseline)" in text
    assert all(variant in text for variant in MEASURED)


def test_without_transformers_the_baseline_is_our_torch(photos: Path, monkeypatch, keep_threads) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    report = run_benchmark(_config(photos, variants=("torch", "hf")))
    assert report.models[0].baseline == "torch"
    assert [r.variant for r in report.results] == ["torch"]
    assert report.result("torch").speedup == 1.0 and report.result("torch").is_baseline
    (skipped,) = report.skipped
    assert skipped.variant == "hf" and "transformers is not installed" in skipped.reason


def test_a_failing_variant_is_reported_and_the_others_go_on(photos: Path, tmp_path, monkeypatch, keep_threads) -> None:
    def broken(self, pixels):
        raise RuntimeError("kernel exploded\nsecond line")

    monkeypatch.setattr("peopleseg.infer.backends.OnnxRuntimeBackend.__call__", broken)
    args = _cli(
        ["-m", "segformer_b0", "--variants", "torch,ort", "--baseline", "torch", "--input-size", "64", "--threads", "1",
         "--rounds", "1", "--calls", "1", "--warmup", "0", "--images", str(photos), "--json", str(tmp_path / "b.json"),
         "-q"]
    )  # fmt: skip
    assert args.run(args) == 1  # a failure is not a clean run
    data = json.loads((tmp_path / "b.json").read_text())
    assert [r["variant"] for r in data["results"]] == ["torch"]
    assert data["skipped"] == [
        {"model": "segformer_b0", "variant": "ort", "reason": "RuntimeError: kernel exploded", "failed": True}
    ]


def test_a_busy_machine_is_noted(photos: Path, monkeypatch, keep_threads) -> None:
    monkeypatch.setattr("peopleseg.bench.machine.load_average", lambda: [9.5, 9.0, 8.0])
    report = run_benchmark(_config(photos, variants=("torch",), baseline="torch"))
    assert report.machine["load_average"] == [9.5, 9.0, 8.0]
    assert any(note.startswith("the machine was busy (load average 9.5 on") for note in report.notes)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"rounds": 0}, "rounds"),
        ({"calls_per_round": -1}, "calls_per_round"),
        ({"warmup": -1}, "warmup"),
        ({"variants": ("torch", "onnx")}, "variants"),
        ({"variants": ()}, "variants"),
        ({"batch_sizes": (1, 0)}, "batch_sizes"),
        ({"input_size": 100}, "input_size"),
        ({"input_size": "64x"}, "input_size"),
        ({"threads": 0}, "threads"),
        ({"device": "tpu"}, "device"),
        ({"baseline": "fastest"}, "baseline"),
        ({"resize": "crop"}, "resize"),
        ({"max_images": 0}, "max_images"),
    ],
)
def test_bad_config_values_name_the_field(photos: Path, overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}\b"):
        _config(photos, **overrides)


def test_bad_images_and_models_name_the_field(photos: Path, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"^images: .*no such file"):
        run_benchmark(_config(photos, images=(str(tmp_path / "missing"),)))
    with pytest.raises(ConfigError, match=r"^models: 'model.onnx' is an exported file"):
        run_benchmark(_config(photos, models=("model.onnx",)))
    # An installed package has no tests/data: without --images the error says what to pass.
    monkeypatch.setattr("peopleseg.bench.config.REPO_TEST_IMAGES", tmp_path / "no_tests_data")
    with pytest.raises(ConfigError, match=r"^images: none given.*--images"):
        run_benchmark(_config(photos, images=()))


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="peopleseg")
    add_benchmark_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["benchmark", *argv])


def test_cli_writes_table_json_and_markdown(photos: Path, tmp_path: Path, capsys, keep_threads) -> None:
    args = _cli(
        ["-m", "segformer_b0", "--variants", "torch", "--baseline", "torch", "--input-size", "64", "--threads", "1",
         "--rounds", "1", "--calls", "2", "--warmup", "0", "--images", str(photos), "--json", str(tmp_path / "b.json"),
         "--markdown", str(tmp_path / "b.md"), "-q"]
    )  # fmt: skip
    assert args.run(args) == 0
    out = capsys.readouterr().out
    assert "Segmenter.predict_batch" in out and "torch (baseline)" in out
    assert "benchmarked 1 variant(s) of 1 model(s)" in out
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["results"][0]["variant"] == "torch" and len(data["results"][0]["latencies_ms"]) == 2
    assert data["command"].startswith("peopleseg benchmark -m segformer_b0 --variants torch --baseline torch")
    assert "| segformer_b0 | torch (baseline) | 1 |" in (tmp_path / "b.md").read_text()


def test_cli_bad_value_is_a_config_error_naming_it(photos: Path) -> None:
    args = _cli(["--batch", "1,zero", "--images", str(photos)])
    with pytest.raises(ConfigError, match=r"^batch_sizes"):
        args.run(args)
    args = _cli(["--variants", "torch,fastest", "--images", str(photos)])
    with pytest.raises(ConfigError, match=r"^variants: unknown variant 'fastest'"):
        args.run(args)


def test_gpu_speed_script_smoke_on_cpu(monkeypatch, keep_threads) -> None:
    spec = importlib.util.spec_from_file_location("gpu_speed", ROOT / "benchmarks" / "gpu_speed.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_speed", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        rows = module.main(["--smoke", "--models", "segformer_b0", "--batches", "1", "--device", "cpu"])
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        torch._dynamo.reset()
    by_variant = {row.variant: row for row in rows}
    fp8 = module.fp8_unavailable(torch.device("cpu")) is None  # torch's CPU _scaled_mm (2.13 has one)
    assert set(by_variant) == set(module.VARIANTS) - (set() if fp8 else {"fp8 compiled"})
    assert by_variant["fp32 eager"].agreement == 1.0 and by_variant["fp32 eager"].speedup == 1.0
    for row in rows:
        assert row.images_per_s and row.images_per_s > 0, row.note
        assert row.agreement > 0.9, row  # bf16 and fp8 change a few argmax pixels of a random model, not most
    if fp8:
        assert by_variant["fp8 compiled"].note.endswith("linear layers in FP8")
        assert int(by_variant["fp8 compiled"].note.split()[0]) >= 40  # B0's attention and MLP projections
    assert np.isfinite(by_variant["bf16 compiled"].median_ms)
