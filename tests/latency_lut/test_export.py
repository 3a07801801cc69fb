"""`export_subnet`: whole subnets as TorchScript, ONNX and zipped Core ML files that compute what the
built module computes (the tiny space of conftest.py, so every format is quick)."""

from __future__ import annotations

import importlib.util
import io
import zipfile

import pytest
import torch

from latency_lut.export import EXPORT_FORMATS, export_subnet
from search_spaces import FieldError, SearchSpace

CONFIG = {"width": 8, "depth": 2, "block1.kernel": 3, "block2.kernel": 1}


def built(space: SearchSpace, seed: int) -> torch.nn.Module:
    """The module `export_subnet` exports after `torch.manual_seed(seed)`."""
    torch.manual_seed(seed)
    return space.build(CONFIG).eval()


def test_torchscript_computes_what_the_module_computes(space: SearchSpace) -> None:
    expected_module = built(space, 0)
    torch.manual_seed(0)
    traced = torch.jit.load(io.BytesIO(export_subnet(space, CONFIG, "torchscript")))
    (image,) = space.example_inputs()
    with torch.no_grad():
        assert torch.equal(traced(image), expected_module(image))


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs the extra [onnx]")
def test_onnx_runs_in_onnxruntime_like_the_module(space: SearchSpace) -> None:
    import onnx
    import onnxruntime

    expected_module = built(space, 1)
    torch.manual_seed(1)
    content = export_subnet(space, CONFIG, "onnx")
    onnx.checker.check_model(onnx.load_model_from_string(content))
    session = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
    (image,) = space.example_inputs()
    (logits,) = session.run(None, {"input0": image.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), expected_module(image), atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("coremltools") is None, reason="needs the extra [coreml]")
def test_coreml_is_a_zipped_mlpackage(space: SearchSpace) -> None:
    archive = zipfile.ZipFile(io.BytesIO(export_subnet(space, CONFIG, "coreml", precision="fp32")))
    names = archive.namelist()
    assert "model.mlpackage/Manifest.json" in names
    assert all(name.startswith("model.mlpackage/") for name in names)


def test_unknown_format_names_the_formats(space: SearchSpace) -> None:
    with pytest.raises(FieldError, match="unknown export format 'tflite'") as info:
        export_subnet(space, CONFIG, "tflite")
    assert info.value.field == "format" and info.value.allowed == list(EXPORT_FORMATS)
