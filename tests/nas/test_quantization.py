"""Mixed-precision search in `nas`: the `size_mb` / `bits` objectives and the `quant_sensitivity`
proxy on a small UNet (real modules, real forward passes)."""

from __future__ import annotations

import pytest
import torch
from nas_testing import SMALL_OPTIONS

from nas.evaluate import SubnetEvaluator
from nas.objectives import parse_objective
from nas.proxies import ProxyContext, available_proxies, get_proxy
from nas.proxies.quant_sensitivity import sensitivity_table
from search_spaces import OptionError, get_space

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OPTIONS = SMALL_OPTIONS["unet_bits"]


def test_size_and_bits_objectives_count_the_weights() -> None:
    space = get_space("unet_bits", **OPTIONS)
    objectives = [parse_objective(name, []) for name in ("size_mb", "bits", "params")]
    evaluator = SubnetEvaluator("unet_bits", OPTIONS, objectives, {}, space=space)
    four = evaluator.evaluate(space.canonicalize("w4")).values
    two = evaluator.evaluate(space.canonicalize("w2")).values
    assert two["size_mb"] < four["size_mb"] and two["bits"] < four["bits"]
    assert two["params"] == four["params"]
    digest = evaluator.evaluate(space.canonicalize("w2")).metrics["weights_by_bits"]
    assert set(digest) == {"2", "8"} and sum(digest.values()) == sum(layer.weights for layer in space.layers)
    assert four["size_mb"] == pytest.approx(space.weight_storage("w4").size_mb)
    plain = SubnetEvaluator("unet", SMALL_OPTIONS["unet"], objectives, {})
    values = plain.evaluate("sd15").values
    assert values["size_mb"] == pytest.approx(values["params"] * 2 / 1e6)
    assert values["bits"] == 16.0


def test_quant_sensitivity_orders_widths_and_is_repeatable() -> None:
    space = get_space("unet_bits", **OPTIONS)
    assert "quant_sensitivity" in available_proxies(space, supernet=False)
    assert "quant_sensitivity" not in available_proxies(get_space("unet", **SMALL_OPTIONS["unet"]))
    proxy = get_proxy("quant_sensitivity")
    context = ProxyContext(space)
    # A few layers only: each (layer, width) costs one forward pass.
    names = [f"bits.{layer.name}" for layer in space.searched_layers[:4]]
    values = {bits: proxy.compute(context, {name: bits for name in names}) for bits in (2, 4, 8, 16)}
    assert values[16] == 0.0
    assert values[2] > values[4] > values[8] > 0
    table = sensitivity_table(space, 0)
    layer = space.searched_layers[0]
    assert table.mse(layer.name, 1) > table.mse(layer.name, 3) > 0
    assert table.sensitivity(layer.name, 2) == pytest.approx(table.mse(layer.name, 2) * layer.weights**-0.3)
    # One layer quantized: the proxy is exactly that layer's sensitivity; the sum adds up.
    assert proxy.compute(ProxyContext(space), {names[0]: 2}) == pytest.approx(
        table.sensitivity(layer.name, 2)
    )
    mixed = {names[0]: 2, names[1]: 4}
    assert proxy.compute(ProxyContext(space, seed=0), mixed) == pytest.approx(
        table.sensitivity(layer.name, 2) + table.sensitivity(space.searched_layers[1].name, 4)
    )


def test_quant_sensitivity_uses_given_weights(tmp_path) -> None:
    space = get_space("unet_bits", **OPTIONS)
    torch.manual_seed(7)
    path = tmp_path / "unet.pt"
    torch.save(space.float_model().state_dict(), path)
    loaded = get_space("unet_bits", **OPTIONS, weights=str(path))
    table = sensitivity_table(loaded, 0)
    assert table.weights == f"checkpoint {path}"
    name = space.searched_layers[0].name
    assert table.mse(name, 1) != sensitivity_table(space, 0).mse(name, 1)
    with pytest.raises(OptionError, match="weights"):
        get_space("unet_bits", **OPTIONS, weights=str(tmp_path / "missing.pt")).float_model()


def test_layers_measured_together_match_layers_measured_alone() -> None:
    from nas.proxies.quant_sensitivity import SensitivityTable

    space = get_space("unet_bits", **OPTIONS)
    names = [layer.name for layer in space.searched_layers[:8]]
    together = SensitivityTable(space, 0, samples_per_pass=8 * 10)
    alone = SensitivityTable(space, 0, samples_per_pass=1)
    assert (together.group_size, alone.group_size) == (8, 1)
    for name in names:
        for bits in (1, 2, 3, 4, 8):
            # Up to float rounding: batches of different sizes round differently.
            assert together.mse(name, bits) == pytest.approx(alone.mse(name, bits), rel=1e-3, abs=1e-10)
    assert len(together._mse) == len(alone._mse) == 8 * 5
    assert together.mse(names[0], 1) > together.mse(names[0], 4) > 0
