"""Whole subnets as model files, exported the way the backends export the blocks they time.

`export_subnet(space, config, fmt)` returns the bytes of one file: TorchScript (`torch.jit.trace`),
ONNX (`onnxruntime_backend.export_onnx`, the measured blocks' exporter) or Core ML (an `.mlpackage`
by `CoreMLBackend.export`, zipped, since a package is a directory). The subnet is `space.build(config)`
with random weights, traced on `space.example_inputs()`.
"""

from __future__ import annotations

import io
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from latency_lut.coreml_backend import CoreMLBackend
from latency_lut.onnxruntime_backend import export_onnx
from search_spaces import FieldError, SearchSpace

#: The formats `export_subnet` writes.
EXPORT_FORMATS = ("torchscript", "onnx", "coreml")


def export_subnet(space: SearchSpace, config: Mapping[str, Any], fmt: str, precision: str = "fp16") -> bytes:
    """The model file of the subnet `config` of `space` in format `fmt` (one of `EXPORT_FORMATS`).

    `precision` is the Core ML compute precision (`fp16` or `fp32`); the other formats keep the
    module's own dtype. Raises `FieldError` (field `format`) for an unknown format and
    `BackendUnavailableError` when the format's exporter (onnx, coremltools) is not installed.
    """
    if fmt not in EXPORT_FORMATS:
        raise FieldError(
            f"unknown export format {fmt!r}; formats: {list(EXPORT_FORMATS)}",
            field="format",
            allowed=EXPORT_FORMATS,
        )
    module = space.build(config).eval()
    inputs = space.example_inputs()
    if fmt == "torchscript":
        return _torchscript(module, inputs)
    if fmt == "onnx":
        buffer = io.BytesIO()
        export_onnx(module, inputs, buffer)
        return buffer.getvalue()
    return _zipped_mlpackage(module, inputs, precision)


def _torchscript(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> bytes:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks baked into the graph
        traced = torch.jit.trace(module, tuple(inputs), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _zipped_mlpackage(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], precision: str) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        package = CoreMLBackend(precision=precision).export(module, inputs, Path(folder) / "model.mlpackage")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(package.rglob("*")):
                if path.is_file():
                    archive.write(path, Path("model.mlpackage") / path.relative_to(package))
        return buffer.getvalue()
