"""MAC counting sees every multiply-accumulate: attention matmuls (QK^T, AV) are counted in every space,
whether written as `q @ k` or as `scaled_dot_product_attention`, and skipped operations are reported.

Per block kind of every registered space (at small options), the attention MACs the counter finds (its
count minus the count with every matmul-like operation ignored) equal the analytic formula of that
kind, and no skipped operation can carry MACs.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from fvcore.nn import FlopCountAnalysis
from torch import nn

from search_spaces import NO_MAC_OPS, BlockSpec, count_mac_details, count_macs, get_space, list_spaces
from search_spaces._counting import _WARNED

SMALL = {
    "efficientformerv2": {"resolution": 64},
    "unet": {"latent_size": 8, "width_scale": 0.1, "text_tokens": 8, "cross_attention_dim": 32},
    "temporal": {"frames": 4, "latent_size": 8, "width_scale": 0.125, "text_tokens": 8},
    "efficientformerv2_bits": {"resolution": 64},
    "unet_bits": {"latent_size": 8, "width_scale": 0.1, "text_tokens": 8, "cross_attention_dim": 32},
}
MATMUL_OPS = ("aten::matmul", "aten::bmm", "aten::einsum", "aten::scaled_dot_product_attention")
# effv2 attention: 8 heads, key_dim 32 (attention downsampling: 16), values 4x the key width.
EFFV2_HEADS, EFFV2_KEY, EFFV2_DOWN_KEY, EFFV2_RATIO = 8, 32, 16, 4
TEMPORAL_HEAD_DIM = 64


def _side(spec: BlockSpec) -> int:
    return int(str(spec["hw"]).split("x")[0])


def attention_macs(spec: BlockSpec) -> int:
    """QK^T plus AV MACs of one block, from its key alone (0 for blocks without attention)."""
    args = spec.arg_dict
    batch = int(args["batch"])
    if spec.kind == "effv2.attn_ffn":
        n = math.ceil(_side(spec) / int(args["stride"])) ** 2
        return batch * EFFV2_HEADS * n * n * (EFFV2_KEY + EFFV2_RATIO * EFFV2_KEY)
    if spec.kind == "effv2.attn_downsample":
        n, n_out = _side(spec) ** 2, math.ceil(_side(spec) / 2) ** 2
        return batch * EFFV2_HEADS * n_out * n * (EFFV2_DOWN_KEY + EFFV2_RATIO * EFFV2_DOWN_KEY)
    if spec.kind == "unet.transformer":
        head_dim = int(args["head_dim"])
        heads = max(1, int(args["dim"]) // head_dim)
        pixels = _side(spec) ** 2
        per_layer = heads * pixels * int(args["tokens"]) * 2 * head_dim
        if args["self_attention"] == "on":
            per_layer += heads * pixels * pixels * 2 * head_dim
        return batch * int(args["depth"]) * per_layer
    if spec.kind in ("temporal.attn", "temporal.st_attn"):
        heads = max(1, int(args["dim"]) // TEMPORAL_HEAD_DIM)
        frames, pixels = int(args["frames"]), _side(spec) ** 2
        if spec.kind == "temporal.attn":  # one sequence of frames per pixel
            return batch * pixels * heads * frames * frames * 2 * TEMPORAL_HEAD_DIM
        tokens = frames * pixels  # one sequence of every position of the video
        return batch * heads * tokens * tokens * 2 * TEMPORAL_HEAD_DIM
    return 0


def matmul_free_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """fvcore's count with every matmul-like operation ignored: convolutions, linear layers, norms."""
    module.eval()
    with torch.no_grad():
        analysis = FlopCountAnalysis(module, inputs)
        for op in MATMUL_OPS:
            analysis.set_op_handle(op, lambda inputs, outputs: 0)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return int(analysis.total())


def _one_block_per_kind(space_name: str) -> list[tuple[str, str, BlockSpec]]:
    space = get_space(space_name, **SMALL[space_name])
    chosen: dict[str, BlockSpec] = {}
    for spec in space.all_blocks():
        # Prefer blocks with self-attention on and more than one layer: every formula term shows.
        current = chosen.get(spec.kind)
        rich = spec.arg_dict.get("self_attention", "on") == "on" and int(spec.arg_dict.get("depth", 1)) > 1
        if current is None or (rich and int(current.arg_dict.get("depth", 1)) < 2):
            chosen[spec.kind] = spec
    return [(space_name, kind, spec) for kind, spec in sorted(chosen.items())]


CASES = [case for name in list_spaces() if name in SMALL for case in _one_block_per_kind(name)]


def test_every_registered_space_has_small_options_here() -> None:
    assert set(list_spaces()) <= set(SMALL)


@pytest.mark.parametrize(("space_name", "kind", "spec"), CASES, ids=[f"{s}:{k}" for s, k, _ in CASES])
def test_attention_macs_of_each_block_kind_match_the_formula(
    space_name: str, kind: str, spec: BlockSpec
) -> None:
    space = get_space(space_name, **SMALL[space_name])
    module, inputs = space.build_block(spec)
    count = count_mac_details(module, inputs)
    assert count.uncounted == [], f"{kind}: operations that may carry MACs were skipped: {count.uncounted}"
    assert set(count.skipped) <= NO_MAC_OPS
    expected = attention_macs(spec)
    assert count.macs - matmul_free_macs(module, inputs) == expected, spec.key
    assert space.mac_count(space.largest()).macs == space.count(space.largest())["macs"]


def test_attention_kinds_are_covered() -> None:
    """The formula above is exercised on every kind that attends (a renamed kind must not slip by)."""
    kinds = {kind for _, kind, _ in CASES}
    assert {"effv2.attn_ffn", "effv2.attn_downsample", "unet.transformer"} <= kinds
    assert {"temporal.attn", "temporal.st_attn"} <= kinds
    assert all(attention_macs(spec) > 0 for _, kind, spec in CASES if "attn" in kind or "transformer" in kind)


def test_scaled_dot_product_attention_counts_scores_and_weighted_sum() -> None:
    class Sdpa(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 6)
    assert count_macs(Sdpa(), (q, k, v)) == 2 * 3 * 5 * 7 * (8 + 6)
    explicit = count_macs(_Explicit(), (q, k, v))
    assert explicit == 2 * 3 * 5 * 7 * (8 + 6)


class _Explicit(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return ((q @ k.transpose(-1, -2)).softmax(-1)) @ v


def test_an_operation_fvcore_cannot_count_is_reported_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Cdist(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cdist(x, x)

    _WARNED.discard("aten::cdist")
    x = torch.randn(1, 4, 3)
    with caplog.at_level(logging.WARNING, logger="search_spaces._counting"):
        first = count_mac_details(Cdist(), (x,))
        second = count_mac_details(Cdist(), (x,))
    assert first.uncounted == ["aten::cdist"] == second.uncounted
    assert first.skipped["aten::cdist"] == 1
    warnings = [r.getMessage() for r in caplog.records if "aten::cdist" in r.getMessage()]
    assert len(warnings) == 1 and "not counted" in warnings[0]


def test_a_subnets_skipped_operations_add_up_over_its_blocks() -> None:
    space = get_space("unet", **SMALL["unet"])
    total = space.mac_count("sd15")
    assert total.uncounted == []
    assert total.skipped["aten::silu"] >= len([s for s in space.blocks("sd15") if s.kind == "unet.resnet"])


@pytest.mark.slow
def test_sd15_macs_with_attention_match_the_reference_at_full_size() -> None:
    """ARCHITECTURES.md: ~338.6 GMACs of conv and linear layers, ~401.6 GMACs with the attention
    matmuls, at a 64x64 latent and 77 tokens (fvcore's norm and upsampling figures add ~0.1%)."""
    space = get_space("unet")
    blocks = space.blocks("sd15")
    attention = sum(attention_macs(spec) for spec in blocks)
    assert attention / 1e9 == pytest.approx(401.6 - 338.6, rel=0.005)
    total = space.mac_count("sd15")
    assert total.uncounted == []
    assert total.macs / 1e9 == pytest.approx(401.6, rel=0.005)
    assert (total.macs - attention) / 1e9 == pytest.approx(338.6, rel=0.005)
