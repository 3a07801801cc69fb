"""The ONNX Runtime, Core ML and CUDA backends on real blocks of the registered spaces.

Core ML converts anywhere but predicts only on macOS: on other systems the tests export every block
kind of every registered space to `.mlpackage` and check the clear refusal to time.
"""

from __future__ import annotations

import importlib.util
import platform
import time
from pathlib import Path

import pytest
import torch

from latency_lut import TorchCPUBackend, backends, device_backend, get_backend
from latency_lut.backends import BackendUnavailableError, time_calls
from search_spaces import BlockSpec, get_space, list_spaces

#: Every registered space at options small enough for many conversions.
SMALL_OPTIONS = {
    "efficientformerv2": {"resolution": 32, "num_classes": 10},
    "efficientformerv2_bits": {"resolution": 32, "num_classes": 10},
    "unet": {"latent_size": 8, "width_scale": 0.0625, "text_tokens": 4, "cross_attention_dim": 32},
    "unet_bits": {"latent_size": 8, "width_scale": 0.0625, "text_tokens": 4, "cross_attention_dim": 32},
    "temporal": {
        "latent_size": 8,
        "width_scale": 0.0625,
        "text_tokens": 4,
        "cross_attention_dim": 32,
        "frames": 2,
    },
}

needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed (the onnx extra)"
)
needs_coreml = pytest.mark.skipif(
    importlib.util.find_spec("coremltools") is None, reason="coremltools is not installed (the coreml extra)"
)


def _one_block_per_kind() -> list[tuple[str, BlockSpec]]:
    """(space, spec) of the first block of every kind of every registered space (a kind shared by
    two spaces, like the UNet blocks of the temporal space, is taken from the first space listed)."""
    seen: dict[str, tuple[str, BlockSpec]] = {}
    for name in list_spaces():
        space = get_space(name, **SMALL_OPTIONS.get(name, {}))
        for spec in space.all_blocks():
            seen.setdefault(spec.kind, (name, spec))
    return list(seen.values())


def _block(space_name: str, spec: BlockSpec) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    return get_space(space_name, **SMALL_OPTIONS.get(space_name, {})).build_block(spec)


def _effv2_block(kind: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    space = get_space("efficientformerv2", **SMALL_OPTIONS["efficientformerv2"])
    return space.build_block(next(spec for spec in space.all_blocks() if spec.kind == kind))


def test_every_registered_space_has_small_options_here() -> None:
    assert set(list_spaces()) <= set(SMALL_OPTIONS), "add small options for the new space"


# ----------------------------------------------------------------------------- ONNX Runtime
@needs_onnx
def test_onnxruntime_times_a_real_block_with_fixed_threads() -> None:
    backend = get_backend("onnxruntime-cpu", threads=1, clock="thread")
    module, inputs = _effv2_block("effv2.attn_ffn")
    module.train()
    samples = backend.measure(module, inputs, warmup=1, repeats=4)
    assert len(samples) == 4 and all(s > 0 for s in samples)
    assert module.training  # the export switched it to eval and back
    provenance = backend.provenance()
    assert provenance["runtime"] == "onnxruntime" and provenance["threads"] == 1
    assert provenance["onnxruntime"] and provenance["onnx"] and provenance["opset"] >= 17
    assert provenance["clock"] == "thread" and provenance["providers"] == ["CPUExecutionProvider"]


@needs_onnx
def test_onnxruntime_samples_take_its_sessions_in_turn() -> None:
    backend = get_backend("onnxruntime-cpu", threads=1, clock="thread", sessions=3)
    assert backend.provenance()["sessions"] == 3
    module, inputs = _effv2_block("effv2.ffn")
    built: list[list[int]] = []
    real_session = backend.session

    def counting_session(model):  # the real session, counting the runs it serves
        session, runs = real_session(model), []
        built.append(runs)

        class Counted:
            def run(self, *args):
                runs.append(1)
                return session.run(*args)

        return Counted()

    backend.session = counting_session
    samples = backend.measure(module, inputs, warmup=2, repeats=7)
    assert len(samples) == 7
    # Three sessions, each run once untimed when built, then the 9 calls dealt out in turn.
    assert [len(runs) for runs in built] == [1 + 3, 1 + 3, 1 + 3]
    with pytest.raises(ValueError, match="sessions must be an integer from 1 to 16, got 0"):
        get_backend("onnxruntime-cpu", sessions=0)


@needs_onnx
def test_onnx_export_runs_like_the_module(tmp_path: Path) -> None:
    import onnx

    backend = get_backend("onnxruntime-cpu", threads=2)
    module, inputs = _effv2_block("effv2.ffn")
    path = backend.export(module, inputs, tmp_path / "deep" / "ffn.onnx")
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input0"]
    session = backend.session(path)
    assert session.get_session_options().intra_op_num_threads == 2
    (output,) = session.run(None, {"input0": inputs[0].numpy()})
    with torch.no_grad():
        expected = module.eval()(*inputs)
    assert torch.allclose(torch.from_numpy(output), expected, atol=1e-4)


@needs_onnx
def test_host_onnxruntime_device_is_built_in() -> None:
    backend = device_backend("host-cpu-onnxruntime")
    assert backend.name == "onnxruntime-cpu" and backend.threads == 1


# ----------------------------------------------------------------------------- clocks and CUDA
def test_thread_clock_counts_cpu_time_of_one_thread() -> None:
    module, inputs = _effv2_block("effv2.stem")
    samples = TorchCPUBackend(threads=1, clock="thread").measure(module, inputs, warmup=0, repeats=3)
    assert len(samples) == 3 and all(s > 0 for s in samples)
    with pytest.raises(ValueError, match=r"clock 'thread' .* needs threads=1"):
        TorchCPUBackend(threads=2, clock="thread")
    with pytest.raises(ValueError, match=r"clock must be one of \['wall', 'thread'\]"):
        TorchCPUBackend(clock="sundial")


class _SteppingClock:
    """A stand-in for `time.perf_counter` that advances `step` seconds each time it is read."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_min_seconds_times_past_the_repeats_until_the_runs_span_that_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    exact = time_calls(lambda: calls.append(1), warmup=2, repeats=3, clock="wall")
    assert len(exact) == 3 and len(calls) == 5  # min_seconds 0: exactly the repeats
    # The clock is read for the deadline, then once per loop after the repeats: 1/8 s a read, so the
    # timed runs go on until a second has passed (3 repeats + 7 more), well past the repeats.
    monkeypatch.setattr(backends.time, "perf_counter", _SteppingClock(0.125))
    spread = time_calls(lambda: None, warmup=0, repeats=3, clock="thread", min_seconds=1.0)
    assert len(spread) == 10
    # Never fewer than the repeats, however short min_seconds is.
    assert len(time_calls(lambda: None, warmup=0, repeats=7, clock="thread", min_seconds=0.001)) == 7
    # At most MAX_SAMPLES samples, however long.
    monkeypatch.setattr(backends, "MAX_SAMPLES", 20)
    assert len(time_calls(lambda: None, warmup=0, repeats=3, clock="thread", min_seconds=59)) == 20


def test_min_seconds_is_a_backend_setting_recorded_in_the_provenance() -> None:
    module, inputs = _effv2_block("effv2.stem")
    backend = TorchCPUBackend(threads=1, min_seconds=0.05)
    assert backend.provenance()["min_seconds"] == 0.05
    started = time.perf_counter()
    samples = backend.measure(module, inputs, warmup=0, repeats=2)
    assert time.perf_counter() - started >= 0.05 and len(samples) >= 2
    assert TorchCPUBackend(threads=1).provenance()["min_seconds"] == 0.0
    for bad in (-1, True, "1s", 61):
        with pytest.raises(ValueError, match=r"min_seconds must be"):
            TorchCPUBackend(min_seconds=bad)


@needs_onnx
def test_onnxruntime_backend_takes_min_seconds() -> None:
    backend = device_backend("host-cpu-onnxruntime", min_seconds=0.02)
    assert backend.min_seconds == 0.02 and backend.provenance()["min_seconds"] == 0.02
    with pytest.raises(ValueError, match=r"min_seconds must be between 0 and 60"):
        device_backend("host-cpu-onnxruntime", min_seconds=100)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a CUDA GPU: the refusal cannot happen")
def test_cuda_backend_refuses_without_a_gpu() -> None:
    with pytest.raises(
        BackendUnavailableError, match=r"needs a CUDA GPU .* use 'torch-cpu' or 'onnxruntime-cpu'"
    ):
        get_backend("torch-cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_backend_times_with_events() -> None:
    module, inputs = _effv2_block("effv2.ffn")
    backend = get_backend("torch-cuda")
    samples = backend.measure(module, inputs, warmup=2, repeats=3)
    assert len(samples) == 3 and all(s > 0 for s in samples)
    assert next(module.parameters()).device.type == "cpu"
    assert backend.provenance()["gpu"]


# ----------------------------------------------------------------------------- Core ML
@needs_coreml
@pytest.mark.slow
@pytest.mark.parametrize(("space_name", "spec"), _one_block_per_kind(), ids=lambda v: getattr(v, "kind", v))
def test_coreml_exports_every_block_kind(tmp_path: Path, space_name: str, spec: BlockSpec) -> None:
    import coremltools as ct

    backend = get_backend("coreml")
    module, inputs = _block(space_name, spec)
    path = backend.export(module, inputs, tmp_path / f"{spec.kind}.mlpackage")
    assert (path / "Manifest.json").is_file()
    description = ct.utils.load_spec(str(path)).description
    assert [i.name for i in description.input] == [f"input{i}" for i in range(len(inputs))]
    shapes = [tuple(i.type.multiArrayType.shape) for i in description.input]
    assert shapes == [tuple(t.shape) for t in inputs]
    assert len(description.output) >= 1


@needs_coreml
def test_coreml_says_timing_needs_macos_and_checks_its_arguments(tmp_path: Path) -> None:
    backend = get_backend("coreml", compute_units="cpu_ne", precision="fp32")
    provenance = backend.provenance()
    assert provenance["runtime"] == "coreml" and provenance["coremltools"]
    assert (provenance["compute_units"], provenance["precision"]) == ("cpu_ne", "fp32")
    module, inputs = _effv2_block("effv2.head")
    with pytest.raises(ValueError, match=r"must end in '\.mlpackage'"):
        backend.export(module, inputs, tmp_path / "head.onnx")
    with pytest.raises(
        ValueError, match=r"compute_units must be one of \['all', 'cpu', 'cpu_gpu', 'cpu_ne'\]"
    ):
        get_backend("coreml", compute_units="gpu")
    if platform.system() == "Darwin":
        assert backend.can_time
        return
    assert not backend.can_time
    with pytest.raises(BackendUnavailableError, match=r"Core ML timing needs macOS \(this is "):
        backend.measure(module, inputs, warmup=0, repeats=1)
