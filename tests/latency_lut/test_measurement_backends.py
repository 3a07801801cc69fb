"""The host-CPU torch backend times real modules under the conditions it promises."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest
import torch
from torch import nn

from latency_lut import (
    MeasurementBackend,
    NoLocalBackendError,
    TorchCPUBackend,
    device_backend,
    get_backend,
    list_backends,
    summarize,
)


class Recorder(nn.Module):
    """A small real module that notes the conditions each forward pass ran under."""

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        self.linear = nn.Linear(16, 16)
        self.calls: list[tuple[int, bool, bool, bool]] = []
        self.fail_after = fail_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(
            (torch.get_num_threads(), self.training, torch.is_inference_mode_enabled(), x.requires_grad)
        )
        if self.fail_after is not None and len(self.calls) > self.fail_after:
            raise RuntimeError("block failed")
        return torch.relu(self.linear(x))


@pytest.fixture
def two_threads() -> Iterator[int]:
    """Run the test with the process at 2 intra-op threads, so a restore is observable."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def test_measures_requested_repeats_with_one_thread_and_restores(two_threads: int) -> None:
    module = Recorder()
    module.train()
    samples = TorchCPUBackend(threads=1).measure(module, (torch.randn(4, 16),), warmup=2, repeats=5)
    assert len(samples) == 5
    assert all(isinstance(s, float) and s > 0 for s in samples)
    assert len(module.calls) == 2 + 5
    assert set(module.calls) == {(1, False, True, False)}
    assert torch.get_num_threads() == two_threads
    assert module.training


def test_restores_threads_when_the_module_raises(two_threads: int) -> None:
    module = Recorder(fail_after=3)
    with pytest.raises(RuntimeError, match="block failed"):
        TorchCPUBackend(threads=1).measure(module, [torch.randn(1, 16)], warmup=1, repeats=10)
    assert torch.get_num_threads() == two_threads
    assert module.training


def test_conv_block_with_zero_warmup() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    samples = TorchCPUBackend().measure(conv, (torch.randn(1, 3, 8, 8),), warmup=0, repeats=3)
    assert len(samples) == 3
    assert min(samples) > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup": -1, "repeats": 3}, "warmup must be an integer >= 0"),
        ({"warmup": 1, "repeats": 0}, "repeats must be an integer >= 1"),
        ({"warmup": 1, "repeats": 2.0}, "repeats must be an integer >= 1"),
    ],
)
def test_bad_counts_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TorchCPUBackend().measure(nn.Identity(), (torch.zeros(1),), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("threads", [0, -2, True, 1.5])
def test_bad_thread_counts_are_refused(threads: object) -> None:
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        TorchCPUBackend(threads=threads)  # type: ignore[arg-type]


def test_provenance_describes_runtime_machine_and_time() -> None:
    provenance = TorchCPUBackend(threads=2).provenance()
    assert provenance["backend"] == "torch-cpu"
    assert provenance["runtime"] == "torch"
    assert provenance["torch"] == torch.__version__
    assert provenance["threads"] == 2
    assert provenance["cpu"] and provenance["hostname"] and provenance["python"]
    measured_at = datetime.fromisoformat(provenance["measured_at"])
    assert measured_at.utcoffset() is not None and measured_at.utcoffset().total_seconds() == 0


def test_summarize_gives_median_and_linear_percentiles() -> None:
    median, p10, p90 = summarize([float(v) for v in range(10, 0, -1)])
    assert (median, p10, p90) == pytest.approx((5.5, 1.9, 9.1))
    assert summarize([2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="empty"):
        summarize([])


def test_registry_builds_by_name_and_names_the_allowed_backends() -> None:
    backend = get_backend("torch-cpu", threads=3)
    assert isinstance(backend, TorchCPUBackend) and isinstance(backend, MeasurementBackend)
    assert backend.threads == 3
    assert list_backends() == ["coreml", "onnxruntime-cpu", "torch-cpu", "torch-cuda"]
    with pytest.raises(ValueError, match=r"unknown measurement backend 'tflite'; allowed: \['coreml', "):
        get_backend("tflite")


def test_device_backend_for_local_and_remote_devices() -> None:
    assert isinstance(device_backend("host-cpu-torch"), TorchCPUBackend)
    with pytest.raises(NoLocalBackendError, match=r"device farm or an import \(`nas lut import`\)") as info:
        device_backend("iphone14pro-coreml-ane")
    assert info.value.device == "iphone14pro-coreml-ane"
    assert "host-cpu-torch" in str(info.value)
