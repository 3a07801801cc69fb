"""Real low-bit kernels for blocks whose weights are quantized, and what is modelled where none exists.

A block of a bit-width space (`unet_bits`, `efficientformerv2_bits`) carries `wbits` in its key and is
built with fake-quantized float weights (`search_spaces.precision`). Timed as built, it costs what a
float block costs. Where a runtime has a kernel that computes with low-bit weights, the backend runs
the block's linear layers on it instead, and the entry says so:

- torch, 8 bits: `torch.ao.quantization.quantize_dynamic`, int8 weights, activations quantized per
  call (fbgemm / qnnpack);
- onnxruntime, 8 bits: `onnxruntime.quantization.quantize_dynamic` on MatMul (`MatMulInteger` after
  `DynamicQuantizeLinear`);
- onnxruntime, 4 and 2 bits: `MatMulNBits` weight-only (`matmul_nbits_quantizer`, blocks of 32,
  symmetric, accuracy level 4).

Only linear layers (torch `nn.Linear`, ONNX `MatMul`) have such kernels here: convolutions keep float
weights in every case, and the entry counts the layers on the kernel and those left float. Every
other width (1 and 3 bits everywhere, 2 and 4 on torch) has no kernel: the block is timed as built
and the entry says `modelled: fake-quant float, no <runtime> kernel for <n> bits`. The kernels'
own quantizers (per tensor or per block of 32, asymmetric activations) are not the space's
(per-channel, 2^n + 1 levels): the timings say what a deployment of that width costs, the space's
`build` says what it computes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: Widths with a real kernel, per runtime: bits -> the kernel's name.
KERNELS: dict[str, dict[int, str]] = {
    "torch": {8: "torch.ao quantize_dynamic int8 Linear"},
    "onnxruntime": {
        8: "onnxruntime quantize_dynamic int8 MatMulInteger",
        4: "onnxruntime MatMulNBits 4-bit weight-only",
        2: "onnxruntime MatMulNBits 2-bit weight-only",
    },
}
#: Block size and accuracy level of the `MatMulNBits` weights (4: int8 compute, the fast CPU path).
NBITS_BLOCK = 32
NBITS_ACCURACY = 4


@dataclass(frozen=True)
class WeightKernel:
    """How a block with `bits`-bit weights was run: the kernel (or `modelled: ...`), the layers that
    ran on it and the conv / linear layers that ran with float weights."""

    bits: int
    kernel: str
    on_kernel: int = 0
    float_layers: int = 0

    @property
    def modelled(self) -> bool:
        return self.on_kernel == 0

    def provenance(self) -> dict[str, Any]:
        """The entry's provenance fields."""
        return {
            "weight_bits": self.bits,
            "weight_kernel": self.kernel,
            "layers_on_kernel": self.on_kernel,
            "layers_float": self.float_layers,
        }


def modelled(runtime: str, bits: int, layers: int, reason: str | None = None) -> WeightKernel:
    why = reason or f"no {runtime} kernel for {bits} bits"
    return WeightKernel(bits, f"modelled: fake-quant float, {why}", 0, layers)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _layers(module: nn.Module, kinds: tuple[type[nn.Module], ...]) -> int:
    return sum(isinstance(m, kinds) for m in module.modules())


def weight_layers(module: nn.Module) -> int:
    """The conv and linear layers of `module`: the layers whose weights a width applies to."""
    return _layers(module, (nn.Linear, *_CONVS))


def torch_low_bit(module: nn.Module, bits: int) -> tuple[nn.Module, WeightKernel]:
    """`module` with its `nn.Linear` layers on torch's int8 dynamic kernel (a copy) when `bits` has a
    torch kernel, else `module` itself, modelled."""
    linear = _layers(module, (nn.Linear,))
    convs = _layers(module, _CONVS)
    if bits not in KERNELS["torch"]:
        return module, modelled("torch", bits, linear + convs)
    if linear == 0:
        return module, modelled("torch", bits, convs, "no linear layer for torch's int8 kernel")
    with warnings.catch_warnings():
        # torch 2.13 announces that its quantized tensors will move to torchao (docs/quantization.md).
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated", category=UserWarning)
        lowered = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(module).eval(), {nn.Linear}, dtype=torch.qint8
        )
    return lowered, WeightKernel(bits, KERNELS["torch"][bits], linear, convs)


def onnx_low_bit(model: bytes, bits: int) -> tuple[bytes, WeightKernel]:
    """The ONNX model with its `MatMul` weights on ONNX Runtime's kernel for `bits` when there is one,
    else the model itself, modelled. Only MatMuls whose weight is a constant are lowered."""
    import onnx

    proto = onnx.load_from_string(model)
    before = _float_weight_layers(proto)
    if bits not in KERNELS["onnxruntime"]:
        return model, modelled("onnxruntime", bits, before)
    with _quiet_quantizers():
        lowered = _dynamic_int8(model) if bits == 8 else _matmul_nbits(proto, bits)
    kernel_op = "MatMulInteger" if bits == 8 else "MatMulNBits"
    result = onnx.load_from_string(lowered)
    on_kernel = sum(node.op_type == kernel_op for node in result.graph.node)
    if on_kernel == 0:
        return model, modelled("onnxruntime", bits, before, "the quantizer put no layer on the kernel")
    return lowered, WeightKernel(bits, KERNELS["onnxruntime"][bits], on_kernel, _float_weight_layers(result))


def _float_weight_layers(proto: Any) -> int:
    """Conv, and MatMul / Gemm with a constant weight (not attention's activation products)."""
    constants = {tensor.name for tensor in proto.graph.initializer}
    constants |= {out for node in proto.graph.node if node.op_type == "Constant" for out in node.output}
    return sum(
        node.op_type == "Conv" or (node.op_type in ("MatMul", "Gemm") and node.input[1] in constants)
        for node in proto.graph.node
    )


@contextlib.contextmanager
def _quiet_quantizers() -> Iterator[None]:
    """ONNX Runtime's quantizers log every node (INFO) and suggest pre-processing (WARNING), on loggers
    of their own: silenced while they run."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _dynamic_int8(model: bytes) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder:
        source, target = os.path.join(folder, "float.onnx"), os.path.join(folder, "int8.onnx")
        with open(source, "wb") as handle:
            handle.write(model)
        quantize_dynamic(source, target, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
        with open(target, "rb") as handle:
            return handle.read()


def _matmul_nbits(proto: Any, bits: int) -> bytes:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        proto, bits=bits, block_size=NBITS_BLOCK, is_symmetric=True, accuracy_level=NBITS_ACCURACY
    )
    quantizer.process()
    return quantizer.model.model.SerializeToString()


__all__ = [
    "KERNELS",
    "NBITS_ACCURACY",
    "NBITS_BLOCK",
    "WeightKernel",
    "modelled",
    "onnx_low_bit",
    "torch_low_bit",
    "weight_layers",
]
