"""Subnets as model files (TorchScript, ONNX, zipped Core ML; for spaces with per-layer bit widths
also `quantized`, packed low-bit weights with the assignment: `search_spaces.quantized_export`) for
the export endpoints, with the
limits that keep one request from taking the server down: at most `MAX_EXPORT_PARAMS` parameters and
`MAX_CONCURRENT_EXPORTS` exports at once. Refusals are `ExportRefusedError`s that say what to do."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from latency_lut.backends import BackendUnavailableError
from latency_lut.coreml_backend import import_coremltools
from latency_lut.export import export_subnet
from search_spaces import SearchSpace
from search_spaces.precision import MixedPrecisionSpace
from search_spaces.quantized_export import export_quantized

MAX_EXPORT_PARAMS = 100_000_000
#: Exports built at once by this process (each builds a whole subnet); more are refused (503).
MAX_CONCURRENT_EXPORTS = 2
_EXPORTS = threading.BoundedSemaphore(MAX_CONCURRENT_EXPORTS)
_FILES = {
    "torchscript": (".pt", "application/octet-stream"),
    "onnx": (".onnx", "application/octet-stream"),
    "coreml": (".mlpackage.zip", "application/zip"),
    "quantized": (".quantized.zip", "application/zip"),
}
#: Formats every space exports; `quantized` (packed low-bit weights) needs a mixed-precision space.
ARCHITECTURE_FORMATS = ["torchscript", "onnx", "coreml"]


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
    if fmt == "quantized" and not isinstance(space, MixedPrecisionSpace):
        raise ExportRefusedError(
            422,
            "format",
            f"format 'quantized' packs per-layer bit widths: space {space.name!r} has none "
            "(use unet_bits or efficientformerv2_bits)",
            ARCHITECTURE_FORMATS,
        )
    if fmt == "coreml":
        try:
            import_coremltools()
        except BackendUnavailableError as exc:
            raise ExportRefusedError(501, "format", str(exc), ["torchscript", "onnx"]) from None
    if not _EXPORTS.acquire(blocking=False):
        raise ExportRefusedError(
            503, "format", f"{MAX_CONCURRENT_EXPORTS} exports are running; retry in a few seconds"
        )
    try:
        if isinstance(space, MixedPrecisionSpace) and fmt == "quantized":
            content = export_quantized(space, canonical)
        else:
            content = export_subnet(space, canonical, fmt, precision)
    finally:
        _EXPORTS.release()
    suffix, media_type = _FILES[fmt]
    return ModelFile(content, media_type, f"{space.name}-{space.config_id(canonical)}{suffix}")
