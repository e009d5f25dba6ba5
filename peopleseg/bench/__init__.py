"""`peopleseg benchmark`: speed, memory and agreement of models and backends, measured side by side in one run.

The Python API: `report = run_benchmark(BenchmarkConfig(models=("segformer_b0",), variants=("torch", "ort")))`,
then `report.table()` (rich), `report.markdown()`, `report.write_json(path)` or `report.result("ort").speedup`.
"""

from peopleseg.bench.config import DEFAULT_VARIANTS, VARIANTS, BenchmarkConfig
from peopleseg.bench.measure import run_benchmark
from peopleseg.bench.report import BenchmarkReport, VariantStats

__all__ = ["DEFAULT_VARIANTS", "VARIANTS", "BenchmarkConfig", "BenchmarkReport", "VariantStats", "run_benchmark"]
