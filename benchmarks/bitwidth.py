"""Mixed-precision search on a small UNet: per-layer sensitivity, fronts, and does the proxy rank right?

On `unet_bits` (the `sd15` architecture at small options, random init from seed 0, one torch thread):

1. the sensitivity S(i, b) = M(i, b) * N_i^-0.3 of every searched layer at 1-4 bits, summarised per
   layer kind (the per-layer values go to `--csv`);
2. a front of `size_mb` against summed sensitivity (`proxy:quant_sensitivity`) from NSGA-II, the
   `bitsfusion` strategy's single point for a mean of 1.99 bits, and uniform 2 / 3 / 4-bit configs;
3. for every one of those points the real end-to-end output error (MSE of the fully quantized
   network against the float one, on a held-out batch: other latents, timesteps and text than the
   proxy's batch), and Spearman's rho between the proxy and that error;
4. host-CPU latency per weight width of real UNet blocks (SD-v1.5 layout at half width) on torch and
   ONNX Runtime, each width on the runtime's real low-bit kernel where it has one
   (`latency_lut.low_bit`: torch int8 dynamic Linear; ONNX Runtime int8 MatMulInteger and 4 / 2-bit
   MatMulNBits), else timed as fake-quantized float (the table says "modelled"). Run it pinned to one
   core (`taskset -c 0`); the load average is printed beside the timings.

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

from latency_lut import get_backend  # noqa: E402
from nas import Trial  # noqa: E402
from nas.evaluate import SubnetEvaluator  # noqa: E402
from nas.objectives import parse_constraint, parse_objective  # noqa: E402
from nas.pareto import non_dominated  # noqa: E402
from nas.proxies import spearman  # noqa: E402
from nas.proxies.quant_sensitivity import sensitivity_table  # noqa: E402
from nas.strategies import make_strategy  # noqa: E402
from search_spaces import BlockSpec, config_id, get_space  # noqa: E402
from search_spaces.precision import MixedPrecisionSpace, quantize_module  # noqa: E402
from search_spaces.unet import UNetSpace  # noqa: E402

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


#: The blocks timed per bit width: SD-v1.5's layout at half width and a 256-px latent (32 x 32), with
#: SD's 77 text tokens of 768 features; (label, block kind, stage of the block).
LATENCY_OPTIONS = {"latent_size": 32, "width_scale": 0.5}
LATENCY_BLOCKS = (
    ("transformer, 160 ch, 32x32 tokens", "unet.transformer", "down0"),
    ("transformer, 640 ch, 8x8 tokens", "unet.transformer", "down2"),
    ("ResNet, 320 ch, 16x16", "unet.resnet", "down1"),
    ("time MLP 160 -> 640 -> 640", "unet.time_embed", ""),
)
LATENCY_BITS = (16, 8, 4, 2)


def latency_blocks(space: MixedPrecisionSpace) -> list[tuple[str, BlockSpec]]:
    assert isinstance(space.base, UNetSpace)
    entries = space.base.layout(space.architecture).entries
    out = []
    for label, kind, stage in LATENCY_BLOCKS:
        entry = next(e for e in entries if e.spec.kind == kind and e.stage == stage)
        out.append((label, entry.spec))
    return out


def latency(repeats: int) -> None:
    """Median ms per forward pass of real UNet blocks at each weight width, on torch and ONNX Runtime
    (one thread, thread clock), each width on the runtime's real low-bit kernel where it has one."""
    space = get_space("unet_bits", **LATENCY_OPTIONS)
    assert isinstance(space, MixedPrecisionSpace)
    print(
        f"\n### Host-CPU latency per weight width (median of {repeats} ms, one thread; "
        f"unet_bits {LATENCY_OPTIONS}; load {load()})\n"
    )
    header = " | ".join(f"{b} bits" if b < 16 else "16 bits (float)" for b in LATENCY_BITS)
    print(f"| runtime | block | {header} | 1, 3 bits |")
    print("|---|---|" + "---|" * (len(LATENCY_BITS) + 1))
    kernels: dict[str, str] = {}
    for runtime in ("torch-cpu", "onnxruntime-cpu"):
        backend = get_backend(runtime, threads=1)
        for label, spec in latency_blocks(space):
            cells = []
            for bits in LATENCY_BITS:
                block = BlockSpec.make(spec.kind, **{**spec.arg_dict, "wbits": bits})
                module, inputs = space.build_block(block)
                if bits == 16:
                    samples = backend.measure(module, inputs, warmup=3, repeats=repeats)
                    cells.append(f"{statistics.median(samples):.2f}")
                    continue
                samples, kernel = backend.measure_weight_bits(
                    module, inputs, bits=bits, warmup=3, repeats=repeats
                )
                mark = "m" if kernel.modelled else f"k{len(kernels) + 1}"
                if not kernel.modelled:
                    mark = next((m for m, k in kernels.items() if k == kernel.kernel), mark)
                    kernels.setdefault(mark, kernel.kernel)
                note = "m" if kernel.modelled else f"{mark}, {kernel.on_kernel} on kernel"
                cells.append(f"{statistics.median(samples):.2f} ({note})")
            print(f"| {runtime} | {label} | " + " | ".join(cells) + " | = 16 bits (m) |")
        print(f"(load after {runtime}: {load()})")
    print("\nm: modelled, timed as fake-quantized float (no kernel for that width on that runtime)")
    for mark, kernel in kernels.items():
        print(f"{mark}: {kernel}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--population", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=15)
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
        latency(args.repeats)


if __name__ == "__main__":
    main()
