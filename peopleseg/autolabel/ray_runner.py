"""The same auto-labelling on a Ray cluster, so millions of images are a command, not a rewrite.

Stills are spread over `workers` Ray Data actors, each holding one teacher (built once, from the specs, on the
worker). Each video is one task, because a recurrent teacher must see its frames in order. Workers write samples
straight into OUT, so OUT must be on storage every node sees (NFS, a mounted bucket); the driver keeps the manifest,
so resuming works exactly as locally. Needs `pip install "peopleseg[ray]"`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from peopleseg.autolabel.run import (
    AutolabelConfig,
    AutolabelSummary,
    Manifest,
    SampleWriter,
    WorkItem,
    autolabel,
    count_record,
    label_still,
    plan_inputs,
)
from peopleseg.errors import DataError, ModelError


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ModelError('autolabel --ray: Ray Data is not installed; run `pip install "peopleseg[ray]"`') from None
    return ray


class _LabelActor:
    """One teacher per Ray worker; labels batches of stills and returns their manifest records as JSON."""

    def __init__(self, specs: list[str], tta: str, out: str, config: dict[str, Any]) -> None:
        from peopleseg.autolabel.specs import build_teacher

        self.config = AutolabelConfig(**config)
        self.teacher = build_teacher(specs, tta=tta)
        self.writer = SampleWriter(Path(out), self.config, self.teacher.name)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for path, key, prior in zip(batch["path"], batch["key"], batch["prior"], strict=True):
            item = WorkItem(str(path), str(key), str(prior) or None)
            try:
                record = label_still(item, self.teacher, self.writer)
                results.append(json.dumps({"dropped": key} if record is None else record))
            except DataError as exc:
                results.append(json.dumps({"error": str(exc)}))
        return {"result": np.array(results, dtype=object)}


def _label_video_remote(spec: str, out: str, specs: list[str], tta: str, config: dict[str, Any]) -> dict[str, Any]:
    from peopleseg.autolabel.specs import build_teacher

    summary = autolabel([spec], out, build_teacher(specs, tta=tta), AutolabelConfig(**config), progress=False)
    return dataclasses.asdict(summary)


def autolabel_on_ray(
    inputs: Sequence[str],
    out: str | os.PathLike[str],
    teacher_specs: Sequence[str],
    config: AutolabelConfig | None = None,
    *,
    tta: str = "",
    address: str | None = None,
    workers: int = 2,
    batch_size: int = 4,
    progress: bool = True,
) -> AutolabelSummary:
    """`autolabel` over Ray: `address` of a running cluster, or None for a local one with `workers` CPUs."""
    ray = _ray()
    config = config or AutolabelConfig()
    out = Path(out).resolve()
    stills, videos = plan_inputs(inputs, config.prior_masks)
    manifest = Manifest(out)
    summary = AutolabelSummary()
    todo = [w for w in stills if not manifest.done(w.key, out)]
    summary.skipped_done = len(stills) - len(todo)
    videos_todo = [spec for spec, _ in videos if spec not in manifest.videos_done]
    summary.skipped_done += len(videos) - len(videos_todo)
    options = dataclasses.asdict(config)
    specs, start = list(teacher_specs), time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=workers, **kwargs)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        if todo:
            items = [{"path": w.path, "key": w.key, "prior": w.prior or ""} for w in todo]
            labelled = ray.data.from_items(items).map_batches(
                _LabelActor,
                fn_constructor_kwargs={"specs": specs, "tta": tta, "out": str(out), "config": options},
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=1,
            )
            for row in labelled.iter_rows():
                _collect(json.loads(row["result"]), manifest, summary)
        manifest.close()  # video tasks append to the manifest themselves
        remote = ray.remote(num_cpus=1)(_label_video_remote)
        for result in ray.get([remote.remote(spec, str(out), specs, tta, options) for spec in videos_todo]):
            summary.labelled += result["labelled"]
            summary.dropped_low_confidence += result["dropped_low_confidence"]
            summary.failed += result["failed"]
    finally:
        manifest.close()
        if started_here:
            ray.shutdown()
        summary.seconds = time.perf_counter() - start
    return summary


def _collect(record: dict[str, Any], manifest: Manifest, summary: AutolabelSummary) -> None:
    if "error" in record:
        summary.failed.append(record["error"])
    else:
        count_record(None if "dropped" in record else record, manifest, summary)
