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

from peopleseg.autolabel.ensemble import parse_tta
from peopleseg.autolabel.run import (
    AutolabelConfig,
    AutolabelSummary,
    Manifest,
    SampleWriter,
    WorkItem,
    count_record,
    label_still,
    label_video,
    plan_inputs,
    set_aside_old_labels,
    video_done,
)
from peopleseg.errors import ConfigError, DataError, ModelError, PeoplesegError


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
                results.append(json.dumps(label_still(item, self.teacher, self.writer)))
            except DataError as exc:
                results.append(json.dumps({"error": str(exc)}))
        return {"result": np.array(results, dtype=object)}


def _label_video_remote(
    spec: str, source: str, out: str, specs: list[str], tta: str, config: dict[str, Any], records: dict[str, Any]
) -> dict[str, Any]:
    """Label one video; its records go back to the driver, which alone appends to the shared manifest."""
    from peopleseg.autolabel.specs import build_teacher

    options = AutolabelConfig(**config)
    manifest = _Collected(Path(out), records)
    summary = AutolabelSummary()
    teacher = build_teacher(specs, tta=tta)
    try:
        writer = SampleWriter(Path(out), options, teacher.name)
        label_video(spec, source, teacher, writer, manifest, summary, options, lambda n: None)  # type: ignore[arg-type]
    finally:
        teacher.close()
    return {"summary": dataclasses.asdict(summary), "records": manifest.added}


class _Collected:
    """A Manifest stand-in for a video task: the video's earlier records to resume from, and the new ones kept."""

    def __init__(self, out: Path, records: dict[str, Any]) -> None:
        self.out = out
        self.records: dict[str, dict[str, Any]] = records["records"]
        self.dropped: set[str] = set(records["dropped"])
        self.added: list[dict[str, Any]] = []

    def done(self, key: str) -> bool:
        return Manifest.done(self, key)  # type: ignore[arg-type]

    def add(self, record: dict[str, Any]) -> None:
        self.added.append(record)


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
    from peopleseg.autolabel.specs import TeacherSpec, build_teacher

    config = config or AutolabelConfig()
    specs = list(teacher_specs)
    if not specs:
        raise ConfigError("autolabel: give at least one --teacher")
    for spec in specs:  # a bad spec is a one-line error here, not a worker's traceback
        TeacherSpec.parse(spec)
    if tta:
        parse_tta(tta)
    out = Path(out).resolve()
    stills, videos = plan_inputs(inputs, config.prior_masks, exclude=out)
    ray = _ray()
    if config.relabel:
        set_aside_old_labels(out)
    manifest = Manifest(out)
    try:
        # The driver builds the teacher once for its name only, to check and record the settings as a local run does.
        probe = build_teacher(specs, tta=tta)
        probe.close()
        manifest.use_settings(config.settings(probe.name))
    except BaseException:
        manifest.close()
        raise
    summary = AutolabelSummary()
    todo = [w for w in stills if not manifest.done(w.key)]
    summary.skipped_done = len(stills) - len(todo)
    cap = config.max_video_frames
    videos_todo = [(spec, source) for spec, source in videos if not video_done(spec, source, manifest, cap)]
    summary.skipped_done += len(videos) - len(videos_todo)
    options = dataclasses.asdict(config)
    start = time.perf_counter()
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
        remote = ray.remote(num_cpus=1)(_label_video_remote)
        tasks = [
            remote.remote(spec, source, str(out), specs, tta, options, _video_records(manifest, source))
            for spec, source in videos_todo
        ]
        while tasks:  # each video's records go into the manifest as it finishes: a crash later keeps them
            finished, tasks = ray.wait(tasks, num_returns=1)
            result = ray.get(finished[0])
            for record in result["records"]:
                manifest.add(record)
            summary.labelled += result["summary"]["labelled"]
            summary.dropped_low_confidence += result["summary"]["dropped_low_confidence"]
            summary.failed += result["summary"]["failed"]
    except ray.exceptions.RayError as exc:
        own = _peopleseg_error(exc)
        if own is None:
            raise
        raise own from None
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
        count_record(record, manifest, summary)


def _video_records(manifest: Manifest, source: str) -> dict[str, Any]:
    """The manifest's records of one video, what its task needs to resume."""
    prefix = f"{source}/"
    return {
        "records": {k: r for k, r in manifest.records.items() if k.startswith(prefix)},
        "dropped": [k for k in manifest.dropped if k.startswith(prefix)],
    }


def _peopleseg_error(exc: BaseException) -> PeoplesegError | None:
    """Our own error (a ConfigError in a worker's teacher, say) inside Ray's wrappers, to report it in one line."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, PeoplesegError):
            return current
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else current.__cause__
    return None
