"""The fast CPU path: a weights file becomes a cached lean ONNX (INT8 weights by default) that Segmenter picks on
a CPU, agrees with PyTorch, is built once, and never stands in the way of the exact torch path."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from peopleseg import Segmenter, build_model
from peopleseg.errors import ConfigError, ModelError
from peopleseg.infer import fast_path
from peopleseg.infer.fast_path import build_fast_onnx, fast_onnx
from peopleseg.models.info import ModelInfo
from peopleseg.models.weights import save_model


def _weights(folder: Path, seed: int = 0, name: str = "small.safetensors") -> Path:
    import torch

    torch.manual_seed(seed)
    model = build_model("segformer_b0", info=ModelInfo(arch="segformer_b0", input_size=(128, 128)))
    return save_model(model.eval(), folder / name)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("PEOPLESEG_CACHE", str(folder))
    return folder


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((150, 110, 3), 60, np.uint8)
    image[30:130, 40:80] = rng.integers(120, 255, (100, 40, 3), dtype=np.uint8)
    return image


def test_a_weights_file_on_cpu_runs_the_cached_int8_graph(tmp_path, cache, data_dir) -> None:
    weights = _weights(tmp_path)
    fast = Segmenter(weights)
    assert fast.backend.name == "onnxruntime"
    built = sorted((cache / "onnx").glob("*.onnx"))
    assert len(built) == 1 and built[0].name.startswith("small-") and built[0].name.endswith("-int8.onnx")
    graph = onnx.load(str(built[0]))
    assert any(node.op_type == "DynamicQuantizeLinear" or "Integer" in node.op_type for node in graph.graph.node)
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["precision"] == "int8" and meta["output_kind"] == "logits" and "peopleseg" in meta

    exact = Segmenter(weights, backend="torch")
    for path in sorted(data_dir.glob("*.jpg")):
        # Random weights leave many near-ties for INT8 and the cascaded decoder sum to flip; the trained default
        # model's agreement (>= 99%) is tested in test_default_model.py.
        agreement = np.mean(fast.predict(path) == exact.predict(path))
        assert agreement >= 0.95, (path.name, agreement)
        np.testing.assert_allclose(fast.predict_proba(path), exact.predict_proba(path), atol=0.1)


def test_the_fast_graph_fuses_attention_and_upsamples_channel_last(tmp_path, cache) -> None:
    built = fast_onnx(_weights(tmp_path), "fp32")
    graph = onnx.load(str(built)).graph
    fused = [node for node in graph.node if node.op_type == "MultiHeadAttention"]
    assert len(fused) == 8 and all(node.domain == "com.microsoft" for node in fused)  # B0: 2 blocks x 4 stages
    assert not any(node.op_type == "Softmax" for node in graph.node)
    # The decoder upsamples channel-last maps: after onnxruntime's own optimisation no Transpose is left around
    # its three Resizes (channel-first, each would cost about 5x more).
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(built), options, providers=["CPUExecutionProvider"])
    optimised = onnx.load(options.optimized_model_filepath).graph
    producer = {output: node for node in optimised.node for output in node.output}
    resizes = [node for node in optimised.node if node.op_type == "Resize"]
    assert len(resizes) == 3
    assert all(producer[node.input[0]].op_type != "Transpose" for node in resizes)
    resized = {node.output[0] for node in resizes}
    assert not any(node.op_type == "Transpose" and node.input[0] in resized for node in optimised.node)


def test_fp32_fast_path_matches_torch_closely(tmp_path, cache) -> None:
    weights = _weights(tmp_path)
    fast = Segmenter(weights, precision="fp32")
    exact = Segmenter(weights, backend="torch")
    assert fast.backend.name == "onnxruntime" and fast.backend.path.name.endswith("-fp32.onnx")
    image = _image()
    np.testing.assert_allclose(fast.predict_proba(image), exact.predict_proba(image), atol=1e-4)
    assert np.mean(fast.predict(image) == exact.predict(image)) >= 0.999


def test_the_graph_is_built_once_and_keyed_by_content(tmp_path, cache, monkeypatch) -> None:
    first = fast_onnx(_weights(tmp_path))
    calls = []
    monkeypatch.setattr(fast_path, "build_fast_onnx", lambda *a: calls.append(a))
    assert fast_onnx(tmp_path / "small.safetensors") == first  # cached: nothing built
    assert calls == []
    renamed = tmp_path / "copy" / "other.safetensors"
    renamed.parent.mkdir()
    renamed.write_bytes((tmp_path / "small.safetensors").read_bytes())
    assert fast_onnx(renamed).name.split("-")[1] == first.name.split("-")[1]  # same bytes, same key
    changed = _weights(tmp_path, seed=1, name="changed.safetensors")
    monkeypatch.undo()
    monkeypatch.setenv("PEOPLESEG_CACHE", str(cache))
    assert fast_onnx(changed).name.split("-")[1] != first.name.split("-")[1]


def test_an_unwritable_cache_builds_for_this_process_only(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PEOPLESEG_CACHE", str(blocker / "cache"))  # a folder cannot be made under a file
    path = fast_onnx(_weights(tmp_path))
    assert path.is_file() and blocker not in path.parents


def test_what_keeps_the_torch_path(tmp_path, cache) -> None:
    weights = _weights(tmp_path)
    assert Segmenter(weights, backend="torch").backend.name == "torch"
    assert Segmenter(weights, precision="fp16").backend.name == "torch"  # fp16 is a torch (GPU) precision
    assert Segmenter("segformer_b0").backend.name == "torch"  # random weights are not worth a cached graph
    model = build_model("segformer_b0").eval()
    assert Segmenter(model).backend.name == "torch"  # an in-memory model may still change
    assert not (cache / "onnx").exists()


def test_precision_errors(tmp_path, cache) -> None:
    weights = _weights(tmp_path)
    with pytest.raises(ConfigError, match="int8 runs in onnxruntime"):
        Segmenter(weights, backend="torch", precision="int8")
    with pytest.raises(ConfigError, match="precision must be one of"):
        Segmenter(weights, precision="int4")
    with pytest.raises(ConfigError, match="runs fp32 or int8, not 'bf16'"):
        build_fast_onnx(weights, tmp_path / "x.onnx", "bf16")
    assert not (tmp_path / "x.onnx").exists()


def test_int8_masks_do_not_depend_on_the_batch(tmp_path, cache) -> None:
    # Dynamic quantisation scales by the whole input tensor: the backend feeds it one image at a time.
    segmenter = Segmenter(_weights(tmp_path), batch_size=3)
    assert segmenter.backend.one_at_a_time
    images = [_image(seed) for seed in range(4)]
    batched = segmenter.predict_batch(images)
    for image, mask in zip(images, batched, strict=True):
        np.testing.assert_array_equal(segmenter.predict(image), mask)


def test_pinned_batch_sessions_give_the_same_answers(tmp_path, cache) -> None:
    segmenter = Segmenter(_weights(tmp_path), batch_size=3, precision="fp32")
    assert not segmenter.backend.one_at_a_time
    images = [_image(seed) for seed in range(7)]  # batches of 3, 3 and 1
    batched = segmenter.segment_batch(images, people=False)
    for image, result in zip(images, batched, strict=True):
        np.testing.assert_allclose(segmenter.predict_proba(image), result.person, atol=1e-4)
    assert _pinned_sizes(segmenter) == {1, 3}  # at most two pinned sizes; others use the dynamic session
    segmenter.predict_batch(images[:2])
    assert _pinned_sizes(segmenter) == {1, 3}


def _pinned_sizes(segmenter: Segmenter) -> set[int]:
    return {size for size, _ in segmenter.backend._sessions if size}


def test_busy_wait_off_gets_its_own_sessions_with_the_same_answers(tmp_path, cache) -> None:
    segmenter = Segmenter(_weights(tmp_path))
    image = _image()
    spinning = segmenter.predict_proba(image)
    segmenter.backend.busy_wait = False  # what video pipelines do while they run
    np.testing.assert_array_equal(segmenter.predict_proba(image), spinning)
    assert set(segmenter.backend._sessions) == {(1, True), (1, False)}


def test_a_failing_quantiser_is_one_clear_error(tmp_path, cache, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported node\nwith a long trace")

    monkeypatch.setattr("onnxruntime.quantization.quantize_dynamic", broken)
    with pytest.raises(ModelError, match=r"INT8 quantisation of the fast graph failed \(unsupported node\); use"):
        fast_onnx(_weights(tmp_path))
    assert not list((cache / "onnx").glob("*.onnx"))  # nothing half-written is left to be reused


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_wrong_rewrite_never_reaches_the_cache(tmp_path, cache, monkeypatch, precision: str) -> None:
    from peopleseg.models import lean

    exact = lean.ChannelLastHead.forward
    # A rewrite bug stand-in: negated logits swap the two classes. The INT8 build exports and checks the broken
    # network against itself, so only its second check, of the rewrite against the model, can catch this.
    monkeypatch.setattr(lean.ChannelLastHead, "forward", lambda self, features: -exact(self, features))
    with pytest.raises(ModelError, match="the lean graph disagrees with the model"):
        fast_onnx(_weights(tmp_path), precision)
    assert not list(cache.rglob("*.onnx"))
