"""Subnets as model files (TorchScript, ONNX, zipped Core ML) for the export endpoints, with the
limits that keep one request from taking the server down: at most `MAX_EXPORT_PARAMS` parameters and
`MAX_CONCURRENT_EXPORTS` exports at once. Refusals are `ExportRefusedError`s that say what to do."""

from __future__ import annotations

import io
import tempfile
import threading
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from latency_lut.backends import BackendUnavailableError
from search_spaces import SearchSpace

ModelFormat = Literal["torchscript", "onnx", "coreml"]
MAX_EXPORT_PARAMS = 100_000_000
#: Exports built at once by this process (each builds a whole subnet); more are refused (503).
MAX_CONCURRENT_EXPORTS = 2
_EXPORTS = threading.BoundedSemaphore(MAX_CONCURRENT_EXPORTS)
_FILES = {
    "torchscript": (".pt", "application/octet-stream"),
    "onnx": (".onnx", "application/octet-stream"),
    "coreml": (".mlpackage.zip", "application/zip"),
}


class ExportRefusedError(RuntimeError):
    """An export that cannot be made now: `status` is the HTTP status that says why (413 too large,
    501 the format's converter is not installed, 503 too many exports running)."""

    def __init__(self, status: int, field: str, message: str, allowed: Any = None):
        super().__init__(message)
        self.status, self.field, self.allowed = status, field, allowed


@dataclass(frozen=True)
class ModelFile:
    content: bytes
    media_type: str
    filename: str


def export_model(
    space: SearchSpace, canonical: dict[str, Any], fmt: str, precision: str = "fp16"
) -> ModelFile:
    """The model file of a canonical config of `space` (random weights), or `ExportRefusedError`."""
    params = sum(spec.params for spec in space.blocks(canonical))
    if params > MAX_EXPORT_PARAMS:
        raise ExportRefusedError(
            413,
            "config",
            f"this subnet has {params:,} parameters; exports are limited to {MAX_EXPORT_PARAMS:,} "
            "(smaller width_scale or a smaller config), or export locally with the library",
            f"<= {MAX_EXPORT_PARAMS} parameters",
        )
    if fmt == "coreml":
        try:
            from latency_lut._coreml import _coremltools

            _coremltools()
        except BackendUnavailableError as exc:
            raise ExportRefusedError(501, "format", str(exc), ["torchscript", "onnx"]) from None
    if not _EXPORTS.acquire(blocking=False):
        raise ExportRefusedError(
            503, "format", f"{MAX_CONCURRENT_EXPORTS} exports are running; retry in a few seconds"
        )
    try:
        content = _build_export(space, canonical, fmt, precision)
    finally:
        _EXPORTS.release()
    suffix, media_type = _FILES[fmt]
    return ModelFile(content, media_type, f"{space.name}-{space.config_id(canonical)}{suffix}")


def _build_export(space: SearchSpace, config: dict[str, Any], fmt: str, precision: str) -> bytes:
    import torch

    module = space.build(config).eval()
    inputs = space.example_inputs()
    if fmt == "onnx":
        from latency_lut._onnx import export_onnx

        buffer = io.BytesIO()
        export_onnx(module, inputs, buffer)
        return buffer.getvalue()
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape checks baked into the graph
            traced = torch.jit.trace(module, tuple(inputs), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        return buffer.getvalue()
    from latency_lut._coreml import CoreMLBackend

    with tempfile.TemporaryDirectory() as folder:
        package = CoreMLBackend(precision=precision).export(module, inputs, Path(folder) / "model.mlpackage")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(package.rglob("*")):
                if path.is_file():
                    archive.write(path, Path("model.mlpackage") / path.relative_to(package))
        return buffer.getvalue()
