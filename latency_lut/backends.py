"""Measurement backends: time a block's module on one runtime and say where and how it was timed.

Every backend shares one small interface, so the farm agent, `measure_missing` and end-to-end
validation time blocks and whole subnets the same way whatever the runtime:

- `torch-cpu`: PyTorch eager on this host's CPU with a fixed intra-op thread count;
- `torch-cuda`: PyTorch eager on a CUDA GPU, timed with CUDA events;
- `onnxruntime-cpu`: the module exported with `torch.onnx.export`, run by an ONNX Runtime
  `InferenceSession` with fixed intra-op threads (`latency_lut.onnxruntime_backend`);
- `coreml`: the module exported as an `.mlpackage` with coremltools (any OS), timed with Core ML on
  macOS only (`latency_lut.coreml_backend`).

Backends whose runtime is not installed, or whose hardware is absent, raise `BackendUnavailableError`
when they are built, saying what is missing.
"""

from __future__ import annotations

import abc
import functools
import importlib
import platform
import socket
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


class BackendUnavailableError(RuntimeError):
    """A backend cannot run here: its runtime is not installed or its hardware is absent."""


class MeasurementBackend(abc.ABC):
    """Times modules on one runtime.

    `measure` runs `module(*inputs)` `warmup` times untimed, then `repeats` times timed, and returns
    one wall-clock sample in milliseconds per repeat. `provenance` describes the runtime and machine
    (JSON-able), and is stored with every table entry the samples become. Backends of runtimes that
    need an exported model (ONNX, Core ML) also implement `export`.
    """

    #: The name `get_backend` knows the backend by (and `Device.backend` refers to).
    name: ClassVar[str]
    #: The runtime a device measured by this backend runs (`torch`, `onnxruntime`, `coreml`).
    runtime: ClassVar[str]
    #: Suffix of the files `export` writes ("" when the backend runs modules as they are).
    export_suffix: ClassVar[str] = ""

    @abc.abstractmethod
    def measure(
        self, module: nn.Module, inputs: Sequence[torch.Tensor], *, warmup: int, repeats: int
    ) -> list[float]:
        """Milliseconds per forward pass, one sample per repeat."""

    @abc.abstractmethod
    def provenance(self) -> dict[str, Any]:
        """Where and how samples are taken: backend, runtime and library versions, CPU, host, time."""

    @property
    def can_time(self) -> bool:
        """Whether `measure` works on this machine (False: the backend can only `export`)."""
        return True

    def export(self, module: nn.Module, inputs: Sequence[torch.Tensor], path: str | Path) -> Path:
        """Write the module in this runtime's format to `path`; backends without a format refuse."""
        raise NotImplementedError(f"backend {self.name!r} runs modules as they are and exports nothing")


def check_counts(warmup: int, repeats: int) -> None:
    """Raise `ValueError` unless `warmup >= 0` and `repeats >= 1` are integers."""
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")


def check_threads(threads: int) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    return threads


@functools.cache
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                name, _, value = line.partition(":")
                if name.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def base_provenance(backend: str) -> dict[str, Any]:
    """The machine part of every backend's provenance."""
    return {
        "backend": backend,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "hostname": socket.gethostname(),
        "measured_at": datetime.now(UTC).isoformat(),
    }


# Kept under its old name for callers of the first version.
_base_provenance = base_provenance


#: Clocks a CPU backend can time with: `wall` (elapsed time, what a dedicated device sees) or
#: `thread` (CPU time of the calling thread: on a host shared with other jobs it leaves out the time the
#: thread waits for a core, which wall-clock samples would count; it needs the runtime to compute in
#: the calling thread, i.e. one intra-op thread).
CLOCKS = {"wall": time.perf_counter_ns, "thread": time.thread_time_ns}


def check_clock(clock: str, threads: int) -> str:
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {list(CLOCKS)}, got {clock!r}")
    if clock == "thread" and threads != 1:
        raise ValueError(
            f"clock 'thread' counts only the calling thread's CPU time, so it needs threads=1 (got {threads})"
        )
    return clock


def time_calls(call: Callable[[], object], warmup: int, repeats: int, clock: str = "wall") -> list[float]:
    """Milliseconds of `repeats` calls of `call` after `warmup` untimed ones, on `clock`."""
    now = CLOCKS[clock]
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        start = now()
        call()
        samples.append((now() - start) / 1e6)
    return samples


class TorchCPUBackend(MeasurementBackend):
    """PyTorch eager on this host's CPU with a fixed intra-op thread count, timed on `clock` (see
    `CLOCKS`).

    The module runs in eval mode under `torch.inference_mode`; the process's thread count and the
    module's training flag are restored afterwards, also when the module raises.
    """

    name = "torch-cpu"
    runtime = "torch"

    def __init__(self, threads: int = 1, clock: str = "wall"):
        self.threads = check_threads(threads)
        self.clock = check_clock(clock, threads)

    def measure(
        self, module: nn.Module, inputs: Sequence[torch.Tensor], *, warmup: int, repeats: int
    ) -> list[float]:
        check_counts(warmup, repeats)
        inputs = tuple(inputs)
        previous_threads = torch.get_num_threads()
        was_training = module.training
        module.eval()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                return time_calls(lambda: module(*inputs), warmup, repeats, self.clock)
        finally:
            torch.set_num_threads(previous_threads)
            module.train(was_training)

    def provenance(self) -> dict[str, Any]:
        return {
            **base_provenance(self.name),
            "runtime": "torch",
            "torch": torch.__version__,
            "threads": self.threads,
            "clock": self.clock,
        }


class TorchCUDABackend(MeasurementBackend):
    """PyTorch eager on a CUDA GPU, each forward pass timed between two CUDA events.

    The module and inputs are copied to the GPU once per `measure`; the module is left on the CPU
    afterwards. Events measure GPU time of the queued work, so Python overhead between launches only
    counts where it starves the GPU, as it would in a real network.
    """

    name = "torch-cuda"
    runtime = "torch"

    def __init__(self, device_index: int = 0):
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                "backend 'torch-cuda' needs a CUDA GPU and a CUDA build of torch; this host has none "
                f"(torch {torch.__version__}); use 'torch-cpu' or 'onnxruntime-cpu'"
            )
        if not 0 <= device_index < torch.cuda.device_count():
            raise ValueError(
                f"device_index must be in [0, {torch.cuda.device_count() - 1}], got {device_index!r}"
            )
        self.device = torch.device("cuda", device_index)

    def measure(
        self, module: nn.Module, inputs: Sequence[torch.Tensor], *, warmup: int, repeats: int
    ) -> list[float]:
        check_counts(warmup, repeats)
        was_training = module.training
        module.eval().to(self.device)
        gpu_inputs = tuple(t.to(self.device) for t in inputs)
        samples: list[float] = []
        try:
            with torch.inference_mode():
                for _ in range(warmup):
                    module(*gpu_inputs)
                torch.cuda.synchronize(self.device)
                for _ in range(repeats):
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    module(*gpu_inputs)
                    end.record()
                    end.synchronize()
                    samples.append(float(start.elapsed_time(end)))
        finally:
            module.to("cpu").train(was_training)
        return samples

    def provenance(self) -> dict[str, Any]:
        props = torch.cuda.get_device_properties(self.device)
        return {
            **base_provenance(self.name),
            "runtime": "torch",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "gpu": props.name,
        }


def summarize(samples: Sequence[float]) -> tuple[float, float, float]:
    """(median, p10, p90) of latency samples in ms (numpy's linear-interpolated percentiles)."""
    if len(samples) == 0:
        raise ValueError("cannot summarize an empty list of latency samples")
    p10, median, p90 = np.percentile(np.asarray(samples, dtype=np.float64), [10, 50, 90])
    return float(median), float(p10), float(p90)


# name -> "module:Class"; imported on first use, so a backend's runtime is only needed where it runs.
_BACKENDS: dict[str, str] = {
    TorchCPUBackend.name: f"{__name__}:TorchCPUBackend",
    TorchCUDABackend.name: f"{__name__}:TorchCUDABackend",
    "onnxruntime-cpu": "latency_lut.onnxruntime_backend:OnnxRuntimeBackend",
    "coreml": "latency_lut.coreml_backend:CoreMLBackend",
}


def list_backends() -> list[str]:
    return sorted(_BACKENDS)


def backend_class(name: str) -> type[MeasurementBackend]:
    """The class of a backend by name, imported on demand."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown measurement backend {name!r}; allowed: {list_backends()}")
    module_name, _, class_name = _BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_backend(name: str, **kwargs: Any) -> MeasurementBackend:
    """A backend by name (`torch-cpu`, `onnxruntime-cpu`, ...), constructed with `kwargs` (e.g.
    `threads=2`). Raises `BackendUnavailableError` when its runtime or hardware is missing here."""
    return backend_class(name)(**kwargs)
