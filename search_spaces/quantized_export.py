"""A mixed-precision config's weights as they would be shipped: packed codes and scales per layer,
the assignment as JSON, in one zip; `load_quantized` rebuilds the network from it.

Zip members:

- `assignment.json`: space, options, config id, and per quantizable layer (module path) its width,
  weight shape and where its codes and scales are; 16-bit layers are listed with `"bits": 16`.
- `codes/<path>.bin`: the layer's codes packed at n + 1 bits each (`search_spaces._quantize`).
- `tensors.pt`: the float16 channel scales of the quantized layers (`<path>.scale`) and every other
  tensor of the state dict (biases, norms, 16-bit layers, buffers) as the model holds it.

The network `load_quantized` returns has exactly the fake-quantized weights of `space.build(config)`
(codes times float16 scales), so its outputs equal the fake-quantized model's.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from search_spaces._quantize import UNQUANTIZED, pack_codes, quantize_codes, unpack_codes
from search_spaces.precision import MixedPrecisionSpace

FORMAT = "hwnas-quantized/1"


def export_quantized(
    space: MixedPrecisionSpace, config: Mapping[str, Any], model: nn.Module | None = None
) -> bytes:
    """The zip of `config`'s weights: those of `model` (a float network of the architecture, e.g.
    `space.float_model()` with trained weights) quantized to the config's widths."""
    canonical = space.canonicalize(config)
    bits = space.assignment(canonical)
    model = model if model is not None else space.float_model()
    state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, Any]] = {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for path, width in bits.items():
            weight = state[f"{path}.weight"]
            entry: dict[str, Any] = {"bits": width, "shape": list(weight.shape)}
            if width < UNQUANTIZED:
                codes, scale = quantize_codes(weight, width)
                archive.writestr(f"codes/{path}.bin", pack_codes(codes, width))
                tensors[f"{path}.scale"] = scale.half()
                entry["codes"] = f"codes/{path}.bin"
            layers[path] = entry
        quantized = {f"{path}.weight" for path, width in bits.items() if width < UNQUANTIZED}
        tensors.update({name: value for name, value in state.items() if name not in quantized})
        tensor_bytes = io.BytesIO()
        torch.save(tensors, tensor_bytes)
        archive.writestr("tensors.pt", tensor_bytes.getvalue())
        header = {
            "format": FORMAT,
            "space": space.name,
            "options": space.options,
            "config_id": space.config_id(canonical),
            "config": canonical,
            "layers": layers,
        }
        archive.writestr("assignment.json", json.dumps(header, indent=1))
    return buffer.getvalue()


def read_assignment(data: bytes) -> dict[str, Any]:
    """The `assignment.json` of an exported zip."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return json.loads(archive.read("assignment.json"))


def load_quantized(space: MixedPrecisionSpace, data: bytes) -> nn.Module:
    """The network an `export_quantized` zip holds, decoded to float weights."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        header = json.loads(archive.read("assignment.json"))
        if header.get("format") != FORMAT or header.get("space") != space.name:
            raise ValueError(f"not a {FORMAT} export of space {space.name!r}")
        tensors = torch.load(io.BytesIO(archive.read("tensors.pt")), weights_only=True)
        state = {name: value for name, value in tensors.items() if not name.endswith(".scale")}
        for path, entry in header["layers"].items():
            if entry["bits"] >= UNQUANTIZED:
                continue
            codes = unpack_codes(archive.read(entry["codes"]), entry["bits"], entry["shape"])
            scale = tensors[f"{path}.scale"].float()
            shape = (-1,) + (1,) * (codes.dim() - 1)
            state[f"{path}.weight"] = codes.float() * scale.view(shape)
    model = space.base.build(space.architecture)
    model.load_state_dict(state)
    return model


__all__ = ["FORMAT", "export_quantized", "load_quantized", "read_assignment"]
