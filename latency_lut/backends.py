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
import contextlib
import functools
import importlib
import platform
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from latency_lut.low_bit import WeightKernel, modelled, torch_low_bit, weight_layers


class BackendUnavailableError(RuntimeError):
    """A backend cannot run here: its runtime is not installed or its hardware is absent."""


#: One forward pass of a module prepared for a runtime (exported, in a session, on its device).
Runnable = Callable[[], object]


class Passthrough(nn.Module):
    """Returns its inputs: timed on a block's inputs, it is the runtime's cost of one call (dispatch,
    a session's run with its input and output handling) without the block's work."""

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...] | torch.Tensor:
        copies = tuple(x.clone() for x in inputs)
        return copies[0] if len(copies) == 1 else copies


class MeasurementBackend(abc.ABC):
    """Times modules on one runtime.

    A backend prepares a module for its runtime (`runnable`: export it, build a session, move it to
    the device) and times calls of it on its `clock` (`time`). Three measurements of a block go into a
    device's table (see `latency_lut.timings`):

    - `measure`: the block alone, `warmup` untimed then `repeats` timed calls, one sample (ms) each;
    - `measure_in_context`: the block timed right after an untimed call of the block before it in a
      network, so that it finds the caches as a network leaves them (its weights partly evicted, its
      input just written);
    - `measure_call_overhead`: a module that only passes its inputs through, on the block's inputs:
      what one call of the runtime costs besides the work.

    `provenance` describes the runtime and machine (JSON-able), stored with every entry the samples
    become. Backends of runtimes that need an exported model (ONNX, Core ML) also implement `export`.
    """

    #: The name `get_backend` knows the backend by (and `Device.backend` refers to).
    name: ClassVar[str]
    #: The runtime a device measured by this backend runs (`torch`, `onnxruntime`, `coreml`).
    runtime: ClassVar[str]
    #: Suffix of the files `export` writes ("" when the backend runs modules as they are).
    export_suffix: ClassVar[str] = ""
    #: The clock samples are taken on (see `CLOCKS`; `device` for runtimes that time themselves).
    clock: str = "wall"
    #: Seconds of wall time a measurement's timed calls span at least (see `time_calls`); 0: exactly
    #: `repeats` calls.
    min_seconds: float = 0.0

    @abc.abstractmethod
    def runnable(
        self, module: nn.Module, inputs: Sequence[torch.Tensor]
    ) -> contextlib.AbstractContextManager[Runnable]:
        """`module` ready to run on this runtime on `inputs`; calling the result runs one forward pass.
        Leaving the context restores whatever preparing changed (threads, training flag, device)."""

    @abc.abstractmethod
    def provenance(self) -> dict[str, Any]:
        """Where and how samples are taken: backend, runtime and library versions, CPU, host, time."""

    def time(
        self, call: Runnable, *, warmup: int, repeats: int, before: Runnable | None = None
    ) -> list[float]:
        """Milliseconds of `repeats` calls of `call` after `warmup` untimed ones; with `before`, every
        call (timed or not) follows an untimed call of `before`; past `repeats` while the samples span
        less than `min_seconds`."""
        return time_calls(call, warmup, repeats, self.clock, before=before, min_seconds=self.min_seconds)

    def measure(
        self, module: nn.Module, inputs: Sequence[torch.Tensor], *, warmup: int, repeats: int
    ) -> list[float]:
        """Milliseconds per forward pass of `module` alone, one sample per repeat."""
        check_counts(warmup, repeats)
        with self.runnable(module, inputs) as call:
            return self.time(call, warmup=warmup, repeats=repeats)

    def measure_in_context(
        self,
        module: nn.Module,
        inputs: Sequence[torch.Tensor],
        *,
        before: tuple[nn.Module, Sequence[torch.Tensor]],
        warmup: int,
        repeats: int,
    ) -> list[float]:
        """Milliseconds per forward pass of `module`, each timed right after an untimed forward pass of
        `before` (a module and its inputs: the block before it in a network)."""
        check_counts(warmup, repeats)
        with self.runnable(*before) as prior, self.runnable(module, inputs) as call:
            return self.time(call, warmup=warmup, repeats=repeats, before=prior)

    @contextlib.contextmanager
    def low_bit(
        self, module: nn.Module, inputs: Sequence[torch.Tensor], bits: int
    ) -> Iterator[tuple[Runnable, WeightKernel]]:
        """`runnable` for a block whose weights are `bits` wide: on this runtime's real low-bit kernel
        where it has one (`latency_lut.low_bit`), else the module as built (fake-quantized float
        weights), and how it ran. This default has no kernel: every width is modelled."""
        with self.runnable(module, inputs) as call:
            yield call, modelled(self.runtime, bits, weight_layers(module))

    def measure_weight_bits(
        self,
        module: nn.Module,
        inputs: Sequence[torch.Tensor],
        *,
        bits: int,
        warmup: int,
        repeats: int,
        before: tuple[nn.Module, Sequence[torch.Tensor]] | None = None,
    ) -> tuple[list[float], WeightKernel]:
        """`measure` (or with `before`, `measure_in_context`) of a block whose weights are `bits` wide,
        run as `low_bit` runs it, and how it ran. The block before it runs as built."""
        check_counts(warmup, repeats)
        with contextlib.ExitStack() as stack:
            prior = stack.enter_context(self.runnable(*before)) if before is not None else None
            call, kernel = stack.enter_context(self.low_bit(module, inputs, bits))
            return self.time(call, warmup=warmup, repeats=repeats, before=prior), kernel

    def measure_call_overhead(
        self, inputs: Sequence[torch.Tensor], *, warmup: int, repeats: int
    ) -> list[float]:
        """Milliseconds of one call of the runtime on `inputs` that does no work but pass them through."""
        return self.measure(Passthrough(), inputs, warmup=warmup, repeats=repeats)

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


#: Clocks a CPU backend can time with: `wall` (elapsed time, what a dedicated device sees) or
#: `thread` (CPU time of the calling thread: on a host shared with other jobs it leaves out the time the
#: thread waits for a core, which wall-clock samples would count; it needs the runtime to compute in
#: the calling thread, i.e. one intra-op thread).
CLOCKS = {"wall": time.perf_counter_ns, "thread": time.thread_time_ns}
#: The clock CPU backends use unless told otherwise: on a shared host the thread clock repeats best
#: (docs/lut.md: two measurements of a subnet agree within 5% for 89-96% of subnets at load 7,
#: against about half with the wall clock); it needs one intra-op thread, else `wall` is used.
DEFAULT_CLOCK = "thread"


def default_clock(threads: int) -> str:
    """`DEFAULT_CLOCK` where it works (one intra-op thread), else `wall`."""
    return DEFAULT_CLOCK if threads == 1 else "wall"


def check_clock(clock: str, threads: int) -> str:
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {list(CLOCKS)}, got {clock!r}")
    if clock == "thread" and threads != 1:
        raise ValueError(
            f"clock 'thread' counts only the calling thread's CPU time, so it needs threads=1 (got {threads})"
        )
    return clock


#: The most samples one measurement takes when `min_seconds` asks for more than `repeats`.
MAX_SAMPLES = 5000
#: The longest `min_seconds` a backend accepts.
MAX_MIN_SECONDS = 60.0


def check_min_seconds(min_seconds: float) -> float:
    """`min_seconds` as a float in [0, MAX_MIN_SECONDS], else `ValueError`."""
    if isinstance(min_seconds, bool) or not isinstance(min_seconds, (int, float)):
        raise ValueError(f"min_seconds must be a number of seconds, got {min_seconds!r}")
    if not 0 <= min_seconds <= MAX_MIN_SECONDS:
        raise ValueError(f"min_seconds must be between 0 and {MAX_MIN_SECONDS:g}, got {min_seconds!r}")
    return float(min_seconds)


def _keep_timing(samples: int, repeats: int, deadline: float) -> bool:
    """Whether a timed loop takes another sample: until `repeats`, then while the wall clock is
    before `deadline` (`min_seconds` after the loop began), never past `MAX_SAMPLES`."""
    return samples < repeats or (time.perf_counter() < deadline and samples < MAX_SAMPLES)


def time_calls(
    call: Runnable,
    warmup: int,
    repeats: int,
    clock: str = "wall",
    *,
    before: Runnable | None = None,
    min_seconds: float = 0.0,
) -> list[float]:
    """Milliseconds of `repeats` calls of `call` after `warmup` untimed ones, on `clock`; with `before`,
    each call follows an untimed call of `before`.

    With `min_seconds`, timing goes on past `repeats` until the timed calls span at least that much
    wall time (at most `MAX_SAMPLES` samples): a sub-millisecond network's `repeats` calls last a few
    milliseconds, inside one of the host's fast or slow spells, which the longer span averages out.
    It does not average out slower drift over minutes (docs/lut.md, "Sub-millisecond networks")."""
    now = CLOCKS[clock]
    for _ in range(warmup):
        if before is not None:
            before()
        call()
    samples: list[float] = []
    deadline = time.perf_counter() + min_seconds
    while _keep_timing(len(samples), repeats, deadline):
        if before is not None:
            before()
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

    def __init__(self, threads: int = 1, clock: str | None = None, min_seconds: float = 0.0):
        self.threads = check_threads(threads)
        self.clock = check_clock(clock or default_clock(threads), threads)
        self.min_seconds = check_min_seconds(min_seconds)

    @contextlib.contextmanager
    def runnable(self, module: nn.Module, inputs: Sequence[torch.Tensor]) -> Iterator[Runnable]:
        inputs = tuple(inputs)
        previous_threads = torch.get_num_threads()
        was_training = module.training
        module.eval()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                yield lambda: module(*inputs)
        finally:
            torch.set_num_threads(previous_threads)
            module.train(was_training)

    @contextlib.contextmanager
    def low_bit(
        self, module: nn.Module, inputs: Sequence[torch.Tensor], bits: int
    ) -> Iterator[tuple[Runnable, WeightKernel]]:
        """8 bits: the linear layers on torch's int8 dynamic kernel; other widths modelled."""
        lowered, kernel = torch_low_bit(module, bits)
        with self.runnable(lowered, inputs) as call:
            yield call, kernel

    def provenance(self) -> dict[str, Any]:
        return {
            **base_provenance(self.name),
            "runtime": "torch",
            "torch": torch.__version__,
            "threads": self.threads,
            "clock": self.clock,
            "min_seconds": self.min_seconds,
        }


class TorchCUDABackend(MeasurementBackend):
    """PyTorch eager on a CUDA GPU, each forward pass timed between two CUDA events.

    The module and inputs are copied to the GPU once per `measure`; the module is left on the CPU
    afterwards. Events measure GPU time of the queued work, so Python overhead between launches only
    counts where it starves the GPU, as it would in a real network.
    """

    name = "torch-cuda"
    runtime = "torch"
    clock = "cuda-events"

    def __init__(self, device_index: int = 0, min_seconds: float = 0.0):
        self.min_seconds = check_min_seconds(min_seconds)
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

    @contextlib.contextmanager
    def runnable(self, module: nn.Module, inputs: Sequence[torch.Tensor]) -> Iterator[Runnable]:
        was_training = module.training
        module.eval().to(self.device)
        gpu_inputs = tuple(t.to(self.device) for t in inputs)
        try:
            with torch.inference_mode():
                yield lambda: module(*gpu_inputs)
        finally:
            module.to("cpu").train(was_training)

    def time(
        self, call: Runnable, *, warmup: int, repeats: int, before: Runnable | None = None
    ) -> list[float]:
        with torch.inference_mode():
            for _ in range(warmup):
                if before is not None:
                    before()
                call()
            torch.cuda.synchronize(self.device)
            samples: list[float] = []
            deadline = time.perf_counter() + self.min_seconds
            while _keep_timing(len(samples), repeats, deadline):
                if before is not None:
                    before()
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                call()
                end.record()
                end.synchronize()
                samples.append(float(start.elapsed_time(end)))
        return samples

    def provenance(self) -> dict[str, Any]:
        props = torch.cuda.get_device_properties(self.device)
        return {
            **base_provenance(self.name),
            "runtime": "torch",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "clock": self.clock,
            "min_seconds": self.min_seconds,
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
