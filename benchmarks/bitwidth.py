"""Mixed-precision search on a small UNet: per-layer sensitivity, fronts, and does the proxy rank right?

On `unet_bits` (the `sd15` architecture at small options, random init from seed 0, one torch thread):

1. the sensitivity S(i, b) = M(i, b) * N_i^-0.3 of every searched layer at 1-4 bits, summarised per
   layer kind (the per-layer values go to `--csv`);
2. a front of `size_mb` against summed sensitivity (`proxy:quant_sensitivity`) from NSGA-II, the
   `bitsfusion` strategy's single point for a mean of 1.99 bits, and uniform 2 / 3 / 4-bit configs;
3. for every one of those points the real end-to-end output error (MSE of the fully quantized
   network against the float one, on a held-out batch: other latents, timesteps and text than the
   proxy's batch), and Spearman's rho between the proxy and that error;
4. host-CPU latency per bit width where torch has a low-bit kernel: linear layers through int8
   dynamic quantization (`torch.ao.quantization.quantize_dynamic`); below 8 bits there is no
   kernel, so those widths run as float (the table says "modelled").

    python benchmarks/bitwidth.py                 # about 5-10 minutes on 2 busy cores
    python benchmarks/bitwidth.py --trials 200 --population 16
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nas import Trial  # noqa: E402
from nas.evaluate import SubnetEvaluator  # noqa: E402
from nas.objectives import parse_constraint, parse_objective  # noqa: E402
from nas.pareto import non_dominated  # noqa: E402
from nas.proxies import spearman  # noqa: E402
from nas.proxies.quant_sensitivity import sensitivity_table  # noqa: E402
from nas.strategies import make_strategy  # noqa: E402
from search_spaces import config_id, get_space  # noqa: E402
from search_spaces.precision import MixedPrecisionSpace, quantize_module  # noqa: E402

OPTIONS = {"latent_size": 8, "width_scale": 0.0625, "text_tokens": 4, "cross_attention_dim": 32}


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def layer_kind(path: str) -> str:
    leaf = path.split(".")[-1]
    if leaf in ("full",):
        leaf = path.split(".")[-2]
    return leaf


def sensitivity_summary(space: MixedPrecisionSpace, csv_path: Path | None) -> None:
    table = sensitivity_table(space, 0)
    rows = []
    for layer in space.searched_layers:
        rows.append(
            {
                "layer": layer.name,
                "weights": layer.weights,
                **{f"S{b}": table.sensitivity(layer.name, b) for b in (1, 2, 3, 4)},
            }
        )
    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with csv_path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    kinds: dict[str, list[dict[str, Any]]] = {}
    for layer, row in zip(space.searched_layers, rows, strict=True):
        kinds.setdefault(layer_kind(layer.path), []).append(row)
    print(f"\n### Sensitivity per layer kind (median S(i, b) over the kind's layers; load {load()})\n")
    print("| layer kind | layers | median weights | S at 1 bit | 2 bits | 3 bits | 4 bits |")
    print("|---|---|---|---|---|---|---|")
    for kind, group in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        medians = [statistics.median(r[f"S{b}"] for r in group) for b in (1, 2, 3, 4)]
        weights = statistics.median(r["weights"] for r in group)
        print(f"| {kind} | {len(group)} | {weights:,.0f} | " + " | ".join(f"{m:.2e}" for m in medians) + " |")
    ratio = statistics.median(r["S1"] / r["S4"] for r in rows if r["S4"] > 0)
    print(f"\nmedian S(i,1) / S(i,4) over layers: {ratio:.0f}")


def drive(strategy, evaluator: SubnetEvaluator, limit: int) -> list[tuple[dict, dict[str, float]]]:
    seen: list[tuple[dict, dict[str, float]]] = []
    while len(seen) < limit:
        configs = strategy.ask(min(64, limit - len(seen)))
        if not configs:
            break
        trials = []
        for config in configs:
            values = evaluator.evaluate(config).values
            trials.append(Trial(len(seen), config, config_id(config), values=values))
            seen.append((config, values))
        strategy.tell(trials)
    return seen


def end_to_end_error(space: MixedPrecisionSpace, float_model: nn.Module, config: dict, inputs) -> float:
    model = quantize_module(copy.deepcopy(float_model), space.assignment(config)).eval()
    with torch.no_grad():
        reference = float_model(*inputs).double()
        return float((model(*inputs).double() - reference).pow(2).mean())


def held_out_inputs(space: MixedPrecisionSpace, batch: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    sample, _, context = space.example_inputs(batch)
    return (
        torch.randn(sample.shape, generator=generator),
        torch.randint(0, 1000, (batch,), generator=generator).float(),
        torch.randn(context.shape, generator=generator),
    )


def fronts(space: MixedPrecisionSpace, trials: int, population: int) -> None:
    objectives = [parse_objective(n, []) for n in ("size_mb", "bits", "proxy:quant_sensitivity")]
    evaluator = SubnetEvaluator(space.name, space.options, objectives, {}, space=space)
    started = time.perf_counter()
    nsga = make_strategy("nsga2", space, [objectives[0], objectives[2]], seed=0, population_size=population)
    searched = drive(nsga, evaluator, trials)
    points = np.array([[v["size_mb"], v["proxy:quant_sensitivity"]] for _, v in searched])
    front = [searched[i] for i in non_dominated(points)]
    front.sort(key=lambda cv: cv[1]["size_mb"])
    constraint = parse_constraint("bits <= 1.99", [])
    bitsfusion = make_strategy("bitsfusion", space, objectives, [constraint])
    assigned = drive(bitsfusion, evaluator, 10_000)[-1]
    seconds = time.perf_counter() - started

    torch.manual_seed(0)
    float_model = space.float_model().eval()
    inputs = held_out_inputs(space, 4)
    rows: list[tuple[str, dict, dict[str, float]]] = []
    step = max(1, len(front) // 10)
    for k, (config, values) in enumerate(front[::step]):
        rows.append((f"NSGA-II front #{k * step}", config, values))
    rows.append(("bitsfusion strategy (bits <= 1.99)", *assigned))
    for bits in (2, 3, 4):
        config = space.canonicalize(f"w{bits}")
        rows.append((f"uniform {bits} bits", config, evaluator.evaluate(config).values))
    print(
        f"\n### size against sensitivity: NSGA-II ({trials} trials, population {population}), the bitsfusion "
        f"strategy and uniform widths; end-to-end output MSE on a held-out batch ({seconds:.0f} s; "
        f"load {load()})\n"
    )
    print("| point | size_mb | mean bits | proxy: summed S | end-to-end MSE |")
    print("|---|---|---|---|---|")
    proxy, real = [], []
    for name, config, values in rows:
        error = end_to_end_error(space, float_model, config, inputs)
        proxy.append(values["proxy:quant_sensitivity"])
        real.append(error)
        print(
            f"| {name} | {values['size_mb']:.3f} | {values['bits']:.2f} | "
            f"{values['proxy:quant_sensitivity']:.3e} | {error:.3e} |"
        )
    rho = spearman(proxy, real)
    print(f"\nSpearman rho (proxy vs end-to-end MSE) over these {len(rows)} points: {rho:+.2f}")
    sample = searched[:: max(1, len(searched) // 40)]
    p = [v["proxy:quant_sensitivity"] for _, v in sample]
    r = [end_to_end_error(space, float_model, c, inputs) for c, _ in sample]
    print(f"Spearman rho over {len(sample)} searched configs (all sizes): {spearman(p, r):+.2f}")


def time_ms(module: nn.Module, inputs: tuple[torch.Tensor, ...], repeats: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            module(*inputs)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            module(*inputs)
            samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def latency(space: MixedPrecisionSpace, repeats: int) -> None:
    print(f"\n### Host-CPU latency per bit width (median of {repeats}, one thread; load {load()})\n")
    print("| block | fp32 (16-bit weights, as float) | 8 bits: int8 dynamic linear | 1-4 bits |")
    print("|---|---|---|---|")
    cases: list[tuple[str, nn.Module, tuple[torch.Tensor, ...]]] = []
    for dim, tokens in ((320, 64), (640, 256)):
        ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)).eval()
        cases.append((f"FFN {dim} -> {4 * dim} -> {dim}, {tokens} tokens", ffn, (torch.randn(tokens, dim),)))
    config = space.canonicalize("fp16")
    model = space.build(config).eval()
    cases.append(("whole small UNet (sd15, latent 8, width x0.0625)", model, space.example_inputs()))
    large = get_space("unet_bits", **{**OPTIONS, "width_scale": 0.25, "latent_size": 16})
    assert isinstance(large, MixedPrecisionSpace)
    cases.append(
        ("whole UNet (sd15, latent 16, width x0.25)", large.build("fp16").eval(), large.example_inputs())
    )
    for name, module, inputs in cases:
        fp32 = time_ms(module, inputs, repeats)
        # The time embedding reads its first linear layer's weight dtype: it stays float.
        linear = {
            path: torch.ao.quantization.default_dynamic_qconfig
            for path, layer in module.named_modules()
            if isinstance(layer, nn.Linear) and not path.startswith("blocks.0.")
        }
        int8 = torch.ao.quantization.quantize_dynamic(module, linear, dtype=torch.qint8)
        q8 = time_ms(int8, inputs, repeats)
        print(f"| {name} | {fp32:.2f} ms | {q8:.2f} ms | = fp32 (modelled: no kernel) |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--population", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--csv", type=Path, default=ROOT / "benchmarks" / "results" / "bitwidth_sensitivity.csv"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["sensitivity", "fronts", "latency"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    space = get_space("unet_bits", **OPTIONS)
    assert isinstance(space, MixedPrecisionSpace)
    print(f"unet_bits {OPTIONS}: {len(space.searched_layers)} searched layers, torch {torch.__version__}")
    started = time.perf_counter()
    if "sensitivity" not in args.skip:
        sensitivity_summary(space, args.csv)
        print(f"\n(sensitivity table: {time.perf_counter() - started:.0f} s)")
    if "fronts" not in args.skip:
        fronts(space, args.trials, args.population)
    if "latency" not in args.skip:
        latency(space, args.repeats)


if __name__ == "__main__":
    main()
