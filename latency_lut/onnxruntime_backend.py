"""The `onnxruntime-cpu` backend: export with `torch.onnx.export`, time an ONNX Runtime session."""

from __future__ import annotations

import contextlib
import io
import itertools
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latency_lut.backends import (
    BackendUnavailableError,
    MeasurementBackend,
    Runnable,
    base_provenance,
    check_clock,
    check_min_seconds,
    check_threads,
    default_clock,
)
from latency_lut.low_bit import WeightKernel, onnx_low_bit

#: Opset of every export: old enough for any ONNX Runtime of the last years, new enough for GELU.
OPSET = 17


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError(
            "backend 'onnxruntime-cpu' needs the packages onnx and onnxruntime: "
            "pip install 'hwnas[onnx]' (or: pip install onnx onnxruntime)"
        ) from None
    return onnxruntime


def export_onnx(module: nn.Module, inputs: Sequence[torch.Tensor], f: str | Path | io.BytesIO) -> None:
    """Export `module` in eval mode, inputs named `input0, input1, ...`, at opset `OPSET`.

    The TorchScript-based exporter is used: it needs no extra package (the dynamo exporter needs
    onnxscript) and handles every block of the registered spaces.
    """
    was_training = module.training
    module.eval()
    names = [f"input{i}" for i in range(len(inputs))]
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, tuple(inputs), f, dynamo=False, input_names=names, opset_version=OPSET)
    finally:
        module.train(was_training)


#: Sessions a module is timed in, taken in turn (see `OnnxRuntimeBackend`).
DEFAULT_SESSIONS = 1


class OnnxRuntimeBackend(MeasurementBackend):
    """ONNX Runtime on this host's CPU (`CPUExecutionProvider`), `threads` intra-op threads, one
    inter-op thread, sequential execution and all graph optimisations (what a deployment would use),
    timed on `clock` (see `latency_lut.backends.CLOCKS`).

    Preparing a module exports it and builds `sessions` sessions of it, each run once (untimed); a
    sample times one `session.run` on the example inputs, so it includes ONNX Runtime's per-call
    overhead exactly once per forward. With several sessions, successive samples go to them in
    turn (two sessions of one model can differ by a few percent for as long as they live). One is the
    default: with three, the tests' small networks ran about 1.9x slower than with one (each call
    finds the caches holding the other sessions' buffers, unlike a deployment), and a second
    measurement agreed with the first no more often (docs/lut.md).
    """

    name = "onnxruntime-cpu"
    runtime = "onnxruntime"
    export_suffix = ".onnx"

    def __init__(
        self,
        threads: int = 1,
        clock: str | None = None,
        sessions: int = DEFAULT_SESSIONS,
        min_seconds: float = 0.0,
    ):
        self.threads = check_threads(threads)
        self.clock = check_clock(clock or default_clock(threads), threads)
        self.min_seconds = check_min_seconds(min_seconds)
        if isinstance(sessions, bool) or not isinstance(sessions, int) or not 1 <= sessions <= 16:
            raise ValueError(f"sessions must be an integer from 1 to 16, got {sessions!r}")
        self.sessions = sessions
        self._ort = _onnxruntime()

    def session(self, model: bytes | str | Path) -> Any:
        """An `InferenceSession` of an ONNX model (bytes or a file) with this backend's settings."""
        ort = self._ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        source = model if isinstance(model, bytes) else str(model)
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    @contextlib.contextmanager
    def runnable(self, module: nn.Module, inputs: Sequence[torch.Tensor]) -> Iterator[Runnable]:
        buffer = io.BytesIO()
        export_onnx(module, inputs, buffer)
        yield self._in_turns(buffer.getvalue(), inputs)

    def _in_turns(self, model: bytes, inputs: Sequence[torch.Tensor]) -> Runnable:
        """One run of `model` per call, in this backend's sessions taken in turn; each session is run
        once here first (its first run allocates: never a sample)."""
        sessions = [self.session(model) for _ in range(self.sessions)]
        feeds = {f"input{i}": t.detach().cpu().numpy() for i, t in enumerate(inputs)}
        for session in sessions:
            session.run(None, feeds)
        turns = itertools.cycle(sessions)
        return lambda: next(turns).run(None, feeds)

    @contextlib.contextmanager
    def low_bit(
        self, module: nn.Module, inputs: Sequence[torch.Tensor], bits: int
    ) -> Iterator[tuple[Runnable, WeightKernel]]:
        """8 bits: MatMuls on int8 `MatMulInteger` (dynamic quantization); 4 and 2 bits: MatMuls on
        `MatMulNBits` (weight-only); other widths modelled (`latency_lut.low_bit`)."""
        buffer = io.BytesIO()
        export_onnx(module, inputs, buffer)
        model, kernel = onnx_low_bit(buffer.getvalue(), bits)
        yield self._in_turns(model, inputs), kernel

    def export(self, module: nn.Module, inputs: Sequence[torch.Tensor], path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(module, inputs, path)
        return path

    def provenance(self) -> dict[str, Any]:
        import onnx

        return {
            **base_provenance(self.name),
            "runtime": "onnxruntime",
            "onnxruntime": self._ort.__version__,
            "onnx": onnx.__version__,
            "torch": torch.__version__,
            "opset": OPSET,
            "threads": self.threads,
            "sessions": self.sessions,
            "clock": self.clock,
            "min_seconds": self.min_seconds,
            "providers": ["CPUExecutionProvider"],
        }
