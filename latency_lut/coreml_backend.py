"""The `coreml` backend: `.mlpackage` export with coremltools (any OS), timing with Core ML (macOS).

Core ML runs only on Apple's operating systems. On Linux and Windows this backend still exports every
block (so a Mac or an iPhone harness can time the files), and `measure` says that timing needs macOS.
"""

from __future__ import annotations

import contextlib
import io
import platform
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latency_lut.backends import (
    BackendUnavailableError,
    MeasurementBackend,
    Runnable,
    base_provenance,
    check_min_seconds,
)

COMPUTE_UNITS = {"all": "ALL", "cpu": "CPU_ONLY", "cpu_gpu": "CPU_AND_GPU", "cpu_ne": "CPU_AND_NE"}
PRECISIONS = ("fp16", "fp32")


def import_coremltools() -> Any:
    """The coremltools module; `BackendUnavailableError` saying how to install it where it is absent."""
    try:
        # On Linux coremltools reports at import that its native Core ML bindings are absent and that
        # this torch is newer than it was tested with; exports work regardless, so that stays quiet.
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import coremltools
    except ImportError:
        raise BackendUnavailableError(
            "backend 'coreml' needs coremltools: pip install 'hwnas[coreml]' (or: pip install coremltools)"
        ) from None
    return coremltools


@contextlib.contextmanager
def _group_norm_at_rank_4() -> Iterator[None]:
    """Run `F.group_norm` of 5-D tensors (videos: B, C, F, H, W) on a 4-D view while exporting.

    Core ML tensors have rank 5 at most and coremltools lowers a group norm by adding a groups
    dimension, so a 5-D group norm cannot convert. Normalising (B, C, F*H, W) instead computes the
    same statistics over the same elements of every group, so the exported block is unchanged.
    """
    original = F.group_norm

    def group_norm(x: torch.Tensor, num_groups: int, *args: Any, **kwargs: Any) -> torch.Tensor:
        if x.dim() != 5:
            return original(x, num_groups, *args, **kwargs)
        n, c, frames, h, w = x.shape
        flat = original(x.reshape(n, c, frames * h, w), num_groups, *args, **kwargs)
        return flat.reshape(n, c, frames, h, w)

    F.group_norm = group_norm
    try:
        yield
    finally:
        F.group_norm = original


def timing_supported() -> bool:
    """Core ML predictions run on macOS only."""
    return platform.system() == "Darwin"


class CoreMLBackend(MeasurementBackend):
    """Core ML `mlprogram` models (`.mlpackage`), converted from a traced module with coremltools.

    `compute_units` picks where Core ML may run the model (`all`, `cpu`, `cpu_gpu`, `cpu_ne`: CPU and
    Neural Engine); `precision` is the compute precision of the program (`fp16`, what the GPU and the
    Neural Engine run, or `fp32`).
    """

    name = "coreml"
    runtime = "coreml"
    export_suffix = ".mlpackage"

    def __init__(self, compute_units: str = "all", precision: str = "fp16", min_seconds: float = 0.0):
        if compute_units not in COMPUTE_UNITS:
            raise ValueError(f"compute_units must be one of {list(COMPUTE_UNITS)}, got {compute_units!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.compute_units = compute_units
        self.precision = precision
        self.min_seconds = check_min_seconds(min_seconds)
        self._ct = import_coremltools()

    @property
    def can_time(self) -> bool:
        return timing_supported()

    def convert(self, module: nn.Module, inputs: Sequence[torch.Tensor]) -> Any:
        """The Core ML model of `module` in eval mode on the example inputs.

        The module goes through `torch.export` (what coremltools supports best for recent torch);
        a module `torch.export` cannot capture is traced with `torch.jit.trace` instead.
        """
        ct = self._ct
        was_training = module.training
        module.eval()
        try:
            with (
                warnings.catch_warnings(),
                torch.inference_mode(False),
                torch.no_grad(),
                _group_norm_at_rank_4(),
                # coremltools draws tqdm progress bars on stderr for every conversion.
                contextlib.redirect_stderr(io.StringIO()),
            ):
                warnings.simplefilter("ignore")
                # Inputs are named input0, input1, ... whichever route captures the module.
                tensor_inputs = [
                    ct.TensorType(name=f"input{i}", shape=tuple(t.shape)) for i, t in enumerate(inputs)
                ]
                try:
                    program: Any = torch.export.export(module, tuple(inputs)).run_decompositions({})
                except Exception:  # any capture failure: the TorchScript route may still work
                    program = torch.jit.trace(module, tuple(inputs))
                precision = ct.precision.FLOAT16 if self.precision == "fp16" else ct.precision.FLOAT32
                return ct.convert(
                    program,
                    inputs=tensor_inputs,
                    convert_to="mlprogram",
                    minimum_deployment_target=ct.target.iOS16,
                    compute_precision=precision,
                    compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[self.compute_units]),
                )
        finally:
            module.train(was_training)

    def export(self, module: nn.Module, inputs: Sequence[torch.Tensor], path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != self.export_suffix:
            raise ValueError(f"a Core ML model file must end in {self.export_suffix!r}, got {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.convert(module, inputs).save(str(path))
        return path

    @contextlib.contextmanager
    def runnable(self, module: nn.Module, inputs: Sequence[torch.Tensor]) -> Iterator[Runnable]:
        if not self.can_time:
            raise BackendUnavailableError(
                f"Core ML timing needs macOS (this is {platform.system()}); on this host the 'coreml' "
                "backend can only export .mlpackage files (nas farm run --backend coreml --export-dir DIR)"
            )
        ct = self._ct
        with tempfile.TemporaryDirectory() as folder:
            path = self.export(module, inputs, Path(folder) / f"block{self.export_suffix}")
            units = getattr(ct.ComputeUnit, COMPUTE_UNITS[self.compute_units])
            model = ct.models.MLModel(str(path), compute_units=units)
            feeds = {f"input{i}": t.detach().cpu().numpy() for i, t in enumerate(inputs)}
            yield lambda: model.predict(feeds)

    def provenance(self) -> dict[str, Any]:
        return {
            **base_provenance(self.name),
            "runtime": "coreml",
            "clock": self.clock,
            "min_seconds": self.min_seconds,
            "coremltools": self._ct.__version__,
            "torch": torch.__version__,
            "compute_units": self.compute_units,
            "precision": self.precision,
            "macos": platform.mac_ver()[0] or None,
        }
