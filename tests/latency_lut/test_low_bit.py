"""Blocks with low-bit weights timed on real kernels where the runtime has one (`latency_lut.low_bit`):
torch's int8 dynamic Linear, ONNX Runtime's int8 `MatMulInteger` and 4 / 2-bit `MatMulNBits`; every
other width is timed as built and its entry says `modelled`. Real blocks of the small `unet_bits`."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch

from latency_lut import MemoryLatencyTable, get_backend, measure_missing
from latency_lut.low_bit import onnx_low_bit, torch_low_bit
from latency_lut.onnxruntime_backend import export_onnx
from search_spaces import BlockSpec, get_space
from search_spaces.precision import MixedPrecisionSpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL_UNET = {"latent_size": 8, "width_scale": 0.0625, "text_tokens": 4, "cross_attention_dim": 32}


def small_space() -> MixedPrecisionSpace:
    space = get_space("unet_bits", **SMALL_UNET)
    assert isinstance(space, MixedPrecisionSpace)
    return space


def block(kind: str, bits: int) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The first block of `kind` of the small UNet, every layer at `bits`."""
    space = small_space()
    spec = next(s for s in space.blocks("w4") if s.kind == kind)
    return space.build_block(BlockSpec.make(spec.kind, **{**spec.arg_dict, "wbits": bits}))


def test_torch_runs_8_bit_linear_layers_on_the_int8_kernel() -> None:
    module, inputs = block("unet.transformer", 8)
    lowered, kernel = torch_low_bit(module, 8)
    linear = sum(isinstance(m, torch.nn.Linear) for m in module.modules())
    assert kernel.kernel == "torch.ao quantize_dynamic int8 Linear" and not kernel.modelled
    assert kernel.on_kernel == linear == 10 and kernel.float_layers == 2  # proj_in / proj_out convs
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert sum(isinstance(m, dynamic) for m in lowered.modules()) == linear
    assert not any(isinstance(m, dynamic) for m in module.modules()), "the block itself is left as built"
    with torch.no_grad():
        expected, got = module.eval()(*inputs), lowered(*inputs)
    assert torch.allclose(got, expected, atol=0.05 * expected.abs().max().item())
    # The time MLP (fixed at 8 bits) runs on the kernel too.
    time_mlp, timestep = block("unet.time_embed", 8)
    lowered_mlp, mlp_kernel = torch_low_bit(time_mlp, 8)
    assert mlp_kernel.on_kernel == 2 and lowered_mlp(*timestep).shape == time_mlp(*timestep).shape


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_torch_has_no_kernel_below_8_bits(bits: int) -> None:
    module, _ = block("unet.transformer", bits)
    lowered, kernel = torch_low_bit(module, bits)
    assert lowered is module and kernel.modelled
    assert kernel.kernel == f"modelled: fake-quant float, no torch kernel for {bits} bits"
    conv, _ = block("unet.conv_in", 8)
    assert torch_low_bit(conv, 8)[1].kernel.endswith("no linear layer for torch's int8 kernel")


@pytest.mark.parametrize(("bits", "op"), [(8, "MatMulInteger"), (4, "MatMulNBits"), (2, "MatMulNBits")])
def test_onnxruntime_runs_the_weights_on_its_low_bit_kernels(bits: int, op: str) -> None:
    module, inputs = block("unet.transformer", bits)
    buffer = io.BytesIO()
    export_onnx(module, inputs, buffer)
    lowered, kernel = onnx_low_bit(buffer.getvalue(), bits)
    ops = [node.op_type for node in onnx.load_from_string(lowered).graph.node]
    assert ops.count(op) == kernel.on_kernel == 10 and kernel.float_layers == 2
    assert kernel.kernel.startswith("onnxruntime") and str(bits) in kernel.kernel
    backend = get_backend("onnxruntime-cpu")
    feeds = {f"input{i}": t.numpy() for i, t in enumerate(inputs)}
    got = backend.session(lowered).run(None, feeds)[0]
    expected = module.eval()(*inputs).detach().numpy()
    assert np.abs(got - expected).max() < 0.5 * np.abs(expected).max()


@pytest.mark.parametrize("bits", [1, 3])
def test_onnxruntime_has_no_kernel_for_1_and_3_bits(bits: int) -> None:
    module, inputs = block("unet.transformer", bits)
    buffer = io.BytesIO()
    export_onnx(module, inputs, buffer)
    lowered, kernel = onnx_low_bit(buffer.getvalue(), bits)
    assert lowered == buffer.getvalue() and kernel.modelled and kernel.float_layers == 12
    assert kernel.kernel == f"modelled: fake-quant float, no onnxruntime kernel for {bits} bits"


def test_table_entries_say_how_their_block_was_timed() -> None:
    space = small_space()
    table = MemoryLatencyTable()
    config = space.canonicalize(
        {**space.canonicalize("w4"), "bits.down0.transformer0.layers.0.attn1.to_q": 8}
    )
    measure_missing(
        space, "host-cpu-torch", table, configs=[config], warmup=0, repeats=1, timings=["isolated"]
    )
    entries = {entry.key: entry for entry in table.entries("host-cpu-torch")}
    by_kind: dict[tuple[str, int], dict] = {}
    for key, entry in entries.items():
        spec = BlockSpec.from_key(key)
        by_kind.setdefault((spec.kind, int(spec.arg_dict["wbits"])), entry.provenance)
    assert by_kind[("unet.transformer", 8)]["weight_kernel"] == "torch.ao quantize_dynamic int8 Linear"
    assert by_kind[("unet.transformer", 8)]["layers_on_kernel"] == 10
    assert (
        by_kind[("unet.transformer", 4)]["weight_kernel"]
        == "modelled: fake-quant float, no torch kernel for 4 bits"
    )
    assert by_kind[("unet.time_embed", 8)]["layers_on_kernel"] == 2
    # A ResNet is keyed by its widest layer, the fixed 8-bit time_emb_proj: that one runs on int8.
    assert ("unet.resnet", 4) not in by_kind
    assert by_kind[("unet.resnet", 8)]["layers_on_kernel"] == 1
    assert by_kind[("unet.resnet", 8)]["layers_float"] == 2
