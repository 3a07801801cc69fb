"""Every proxy against a value computed independently: by hand (numpy) on a tiny two-layer network.

The network is `Linear(4, h, bias=False) -> ReLU -> Linear(h, 3, bias=False)` trained (in the
proxies' view) with cross-entropy on Gaussian inputs; its gradients, activation codes and input
Jacobians have closed forms, written out below without autograd.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from nas.proxies import ProxyContext, ProxyError, available_proxies, get_proxy, list_proxies, training_speed
from nas.training.data import batch_generator
from nas.training.tasks import TrainingTask, register_task
from search_spaces import BlockSpec, Choice, OptionSpec, SearchSpace, Supernet

INPUTS, CLASSES = 4, 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class HandSpace(SearchSpace):
    """One choice: the hidden width of the two-layer network (unregistered, test only)."""

    name = "proxy-hand-test"

    @classmethod
    def option_specs(cls) -> list[OptionSpec]:
        return [OptionSpec("dtype", "fp32", str, allowed=("fp32",))]

    def choices(self) -> list[Choice]:
        return [Choice("hidden", (8, 16))]

    @classmethod
    def reference_configs(cls) -> dict[str, dict[str, Any]]:
        return {}

    def _canonicalize(self, config: dict[str, Any]) -> dict[str, Any]:
        return config

    def blocks(self, config: Mapping[str, Any]) -> list[BlockSpec]:
        hidden = int(config["hidden"])
        return [
            BlockSpec.make("hand.up", params=INPUTS * hidden, cin=INPUTS, cout=hidden),
            BlockSpec.make("hand.down", params=hidden * CLASSES, cin=hidden, cout=CLASSES),
        ]

    def _layer(self, spec: BlockSpec) -> nn.Module:
        layer = nn.Linear(int(spec["cin"]), int(spec["cout"]), bias=False)
        return nn.Sequential(layer, nn.ReLU()) if spec.kind == "hand.up" else layer

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        up, down = (self._layer(spec) for spec in self.blocks(self.canonicalize(config)))
        return nn.Sequential(*up, down)

    def build_block(self, spec: BlockSpec) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        return self._layer(spec), (torch.randn(1, int(spec["cin"])),)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        return (torch.randn(batch, INPUTS),)

    def supernet(self) -> Supernet:
        raise NotImplementedError("the hand-computed test space has no supernet")


@register_task
class HandTask(TrainingTask):
    """Gaussian inputs with random labels and cross-entropy: enough for every gradient proxy."""

    space_name = HandSpace.name
    rules = ("sandwich",)

    def draw(self, generator: torch.Generator, batch_size: int, held_out: bool) -> dict[str, torch.Tensor]:
        return {
            "x": torch.randn(batch_size, INPUTS, generator=generator),
            "labels": torch.randint(CLASSES, (batch_size,), generator=generator),
        }

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(model(batch["x"]), batch["labels"])


@pytest.fixture
def hand() -> tuple[HandSpace, ProxyContext, dict[str, Any]]:
    space = HandSpace()
    return space, ProxyContext(space, seed=3, batch_size=6), space.canonicalize({"hidden": 16})


def weights(context: ProxyContext, config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """W1 [h, 4] and W2 [3, h] of the subnet the proxies see (same seed, so the same init)."""
    model = context.model(config)
    return model[0].weight.detach().double().numpy(), model[2].weight.detach().double().numpy()


def data(context: ProxyContext) -> tuple[np.ndarray, np.ndarray]:
    batch = context.batch()
    return batch["x"].double().numpy(), batch["labels"].numpy()


def gradients(w1: np.ndarray, w2: np.ndarray, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """dL/dW1 and dL/dW2 of the mean cross-entropy, by the chain rule."""
    z = x @ w1.T
    h = np.maximum(z, 0)
    logits = h @ w2.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d_logits = (p - np.eye(CLASSES)[labels]) / len(x)
    d_w2 = d_logits.T @ h
    d_z = (d_logits @ w2) * (z > 0)
    return d_z.T @ x, d_w2


def value(name: str, context: ProxyContext, config: dict[str, Any]) -> float:
    return get_proxy(name).compute(context, config)


def test_synflow_is_twice_the_path_sum_of_the_absolute_network(hand) -> None:
    _, context, config = hand
    w1, w2 = weights(context, config)
    # R = 1^T |W2| |W1| 1 (all-ones input; the ReLU passes positives); each bias-free layer's
    # sum |w * dR/dw| equals R, so synflow = log(2 R).
    path_sum = np.ones(CLASSES) @ np.abs(w2) @ np.abs(w1) @ np.ones(INPUTS)
    assert value("synflow", context, config) == pytest.approx(math.log(2 * path_sum), rel=1e-12)


def test_snip_and_grad_norm(hand) -> None:
    _, context, config = hand
    w1, w2 = weights(context, config)
    g1, g2 = gradients(w1, w2, *data(context))
    snip = np.abs(w1 * g1).sum() + np.abs(w2 * g2).sum()
    assert value("snip", context, config) == pytest.approx(snip, rel=1e-5)
    norm = np.linalg.norm(g1) + np.linalg.norm(g2)
    assert value("grad_norm", context, config) == pytest.approx(norm, rel=1e-5)


def test_zico_over_two_mini_batches(hand) -> None:
    _, context, config = hand
    w1, w2 = weights(context, config)
    x, labels = data(context)
    halves = [gradients(w1, w2, x[:3], labels[:3]), gradients(w1, w2, x[3:], labels[3:])]
    expected = 0.0
    for layer in range(2):
        g = np.stack([halves[0][layer], halves[1][layer]])
        std = g.std(0)
        ratio = (np.abs(g).mean(0)[std > 0] / std[std > 0]).sum()
        expected += math.log(ratio)
    assert value("zico", context, config) == pytest.approx(expected, rel=1e-4)


def test_naswot_log_det_of_the_code_agreement_kernel(hand) -> None:
    _, context, config = hand
    w1, _ = weights(context, config)
    x, _ = data(context)
    codes = (x @ w1.T > 0).astype(np.float64)
    agree = codes @ codes.T + (1 - codes) @ (1 - codes).T
    sign, logdet = np.linalg.slogdet(agree)
    assert sign > 0
    assert value("naswot", context, config) == pytest.approx(logdet, rel=1e-9)


def test_jacob_cov_from_closed_form_input_jacobians(hand) -> None:
    _, context, config = hand
    w1, w2 = weights(context, config)
    x, _ = data(context)
    # d(sum of outputs)/dx for sample i = W1^T (mask_i * (W2^T 1)).
    jacobians = ((x @ w1.T > 0) * (w2.T @ np.ones(CLASSES))) @ w1
    eigenvalues = np.linalg.eigvalsh(np.corrcoef(jacobians)) + 1e-5
    expected = -np.sum(np.log(eigenvalues) + 1 / eigenvalues)
    assert value("jacob_cov", context, config) == pytest.approx(expected, rel=1e-6)


def test_params_and_macs_baselines(hand) -> None:
    _, context, config = hand
    hidden = config["hidden"]
    assert value("params", context, config) == (INPUTS + CLASSES) * hidden
    # fvcore counts one MAC per weight of a linear layer at batch 1.
    assert value("macs", context, config) == (INPUTS + CLASSES) * hidden


def test_every_proxy_is_tested_by_hand() -> None:
    tested = {"synflow", "snip", "grad_norm", "zico", "naswot", "jacob_cov", "params", "macs", "train_speed"}
    # tests/nas/test_proxy_supernet.py
    supernet_proxies = {"supernet_loss", "supernet_accuracy", "finetuned_loss", "train_speed_frozen"}
    quantization = {"quant_sensitivity"}  # tests/nas/test_quantization.py
    teacher_relative = {"teacher_distance", "predicted"}  # tests/nas/test_teacher_relative.py
    assert set(list_proxies()) == tested | supernet_proxies | quantization | teacher_relative


def test_contract_attributes() -> None:
    for name in list_proxies():
        proxy = get_proxy(name)
        assert proxy.name == name
        assert proxy.direction in ("maximize", "minimize")
        assert proxy.needs in ("nothing", "batch", "supernet", "predictor")
        assert proxy.cost in ("counting", "forward", "backward", "training", "inherited")
        assert proxy.description
    assert get_proxy("supernet_loss").direction == "minimize"
    assert get_proxy("synflow").direction == "maximize"


def test_hand_space_offers_every_batch_proxy_but_no_supernet_ones() -> None:
    offered = available_proxies(HandSpace())
    assert set(offered) == {
        "synflow",
        "snip",
        "grad_norm",
        "zico",
        "naswot",
        "jacob_cov",
        "params",
        "macs",
        "train_speed",
    }


def test_deterministic_per_seed_and_leaves_global_rng_alone(hand) -> None:
    space, context, config = hand
    state = torch.get_rng_state()
    names = [n for n in available_proxies(space) if get_proxy(n).needs == "batch"]
    first = {name: value(name, context, config) for name in names}
    again = ProxyContext(space, seed=3, batch_size=6)
    assert {name: value(name, again, config) for name in names} == first
    assert torch.equal(torch.get_rng_state(), state)
    other = ProxyContext(space, seed=4, batch_size=6)
    assert value("snip", other, config) != first["snip"]


def test_singular_kernel_and_dead_networks_are_proxy_errors(hand) -> None:
    space, _, config = hand
    # 40 samples, 8 ReLU units: at most 2 * 8 + 1 independent agreement patterns, so K is singular.
    wide = ProxyContext(space, seed=3, batch_size=40)
    with pytest.raises(ProxyError, match="singular"):
        value("naswot", wide, {"hidden": 8})

    class Dead(HandSpace):
        def build(self, config: Mapping[str, Any]) -> nn.Module:
            model = super().build(config)
            nn.init.zeros_(model[2].weight)
            return model

    dead = Dead()
    with pytest.raises(ProxyError, match="synflow is 0"):
        value("synflow", ProxyContext(dead, batch_size=6), dead.canonicalize(config))


def test_naswot_reads_functional_activations_too(hand) -> None:
    """Spaces call activations as functions (`F.silu`) as well as modules: both give the same codes."""
    _, context, config = hand

    class Functional(nn.Module):
        def __init__(self, model: nn.Sequential):
            super().__init__()
            self.up, self.down = model[0], model[2]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.down(torch.nn.functional.relu(self.up(x)))

    class FunctionalSpace(HandSpace):
        def build(self, config: Mapping[str, Any]) -> nn.Module:
            return Functional(super().build(config))

    functional = ProxyContext(FunctionalSpace(), seed=3, batch_size=6)
    assert value("naswot", functional, config) == value("naswot", context, config)


def test_train_speed_follows_adamw_by_hand(hand) -> None:
    """Three AdamW steps (decoupled weight decay, gradients clipped to norm 1) written out in numpy from
    the closed-form gradients: the losses of each step, and the proxy is their mean."""
    space, context, config = hand
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(context.seed * 1_000_003 + training_speed.INIT_SALT)
        model = space.build(config)
    w = [model[0].weight.detach().double().numpy().copy(), model[2].weight.detach().double().numpy().copy()]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    lr, wd, b1, b2, eps = training_speed.LR, training_speed.WEIGHT_DECAY, 0.9, 0.999, 1e-8
    expected = []
    for step in range(3):
        batch = context.task.draw(
            batch_generator(context.task.seed, training_speed.TRAIN_SPEED_STREAM, step), 6, held_out=False
        )
        x, labels = batch["x"].double().numpy(), batch["labels"].numpy()
        logits = np.maximum(x @ w[0].T, 0) @ w[1].T
        log_p = logits - logits.max(1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
        expected.append(-log_p[np.arange(len(x)), labels].mean())
        grads = list(gradients(w[0], w[1], x, labels))
        norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
        grads = [g * min(1.0, 1.0 / (norm + 1e-6)) for g in grads]
        for i, g in enumerate(grads):
            w[i] *= 1 - lr * wd
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g**2
            m_hat, v_hat = m[i] / (1 - b1 ** (step + 1)), v[i] / (1 - b2 ** (step + 1))
            w[i] -= lr * m_hat / (np.sqrt(v_hat) + eps)
    losses = training_speed.training_losses(context, config, steps=3, batch_size=6)
    assert losses == pytest.approx(expected, rel=1e-5)


def test_train_speed_is_the_mean_loss_of_its_steps_and_not_the_zero_cost_init(hand) -> None:
    space, context, config = hand
    losses = training_speed.training_losses(context, config)
    assert len(losses) == training_speed.STEPS
    assert value("train_speed", context, config) == pytest.approx(sum(losses) / len(losses), rel=1e-12)
    assert get_proxy("train_speed").direction == "minimize" and get_proxy("train_speed").cost == "training"
    # Its own init, not the one the zero-cost proxies (and a truth trained from the context's seed) use.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(context.seed * 1_000_003 + training_speed.INIT_SALT)
        own = space.build(config)
    assert not torch.equal(own[0].weight, context.model(config)[0].weight)
