"""How well do latency tables predict whole subnets? RMSE, RMSPE and the shares within +-5/10/15%.

For each device measurable on this host (`host-cpu-torch`: PyTorch eager; `host-cpu-onnxruntime`:
ONNX Runtime; both one thread) and each space at options small enough for this machine:

1. `--calibration` random subnets and `--subnets` other random subnets (seeded, distinct) are drawn;
2. every block they contain is measured in isolation with the device's backend, as a farm agent
   would (`build_block`, `--warmup` untimed and `--repeats` timed runs);
3. every subnet is built with `space.build` and measured end to end with the same backend;
4. the held-out subnets are predicted (a) by the plain sum of their blocks' entries and (b) by the sum
   corrected with the device's subnet calibration (`latency_lut.calibration`), fitted on the
   calibration subnets only.

Prints one markdown table row per (device, space, predictor); `--json` also writes the raw pairs.

    python benchmarks/lut_accuracy.py                                  # all (about 15 minutes)
    python benchmarks/lut_accuracy.py --devices host-cpu-onnxruntime --spaces efficientformerv2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latency_lut import device_backend, needed_blocks, predict
from latency_lut.accuracy import AccuracyReport, accuracy_report
from latency_lut.calibration import CalibrationPoint, fit_calibration
from latency_lut.validate import SubnetMeasurement, measure_subnet, sample_configs
from search_spaces import SearchSpace, get_space, list_spaces

DEVICES = ("host-cpu-torch", "host-cpu-onnxruntime")
#: Statistics of samples a prediction can be made on: percentile of each block's and subnet's samples.
STATISTICS = {"median": 50, "p10": 10, "min": 0}


@dataclass(frozen=True)
class SpaceSetup:
    space: str
    options: dict[str, Any]


SETUPS = {
    "efficientformerv2": SpaceSetup("efficientformerv2", {"resolution": 64, "num_classes": 10}),
    "unet": SpaceSetup(
        "unet", {"latent_size": 8, "width_scale": 0.0625, "text_tokens": 4, "cross_attention_dim": 32}
    ),
    "temporal": SpaceSetup(
        "temporal",
        {"latent_size": 8, "width_scale": 0.0625, "text_tokens": 4, "cross_attention_dim": 32, "frames": 4},
    ),
}


def _row(device: str, setup: SpaceSetup, predictor: str, report: AccuracyReport, seconds: float) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    options = ",".join(f"{k}={v}" for k, v in setup.options.items() if k in ("resolution", "latent_size"))
    return (
        f"| {device} | {setup.space} ({options}) | {predictor} | {report.n} | {report.rmse_ms:.3f} | "
        f"{pct(report.rmspe)} | {pct(report.mean_error)} | {pct(report.within_5)} | "
        f"{pct(report.within_10)} | {pct(report.within_15)} | {seconds:.0f} |"
    )


def run_one(device: str, space: SearchSpace, args: argparse.Namespace) -> dict[str, Any]:
    """Measure blocks and subnets of one (device, space); returns the predictions and timings."""
    backend = device_backend(device, threads=args.threads, clock=args.clock)
    calibration_configs = sample_configs(space, args.calibration, seed=args.seed)
    test_configs = sample_configs(
        space,
        args.subnets,
        seed=args.seed + 1,
        exclude=[space.config_id(c) for c in calibration_configs],
    )
    started = time.perf_counter()
    # Every block once, as a farm agent would; all samples kept so any statistic can be compared.
    block_samples: dict[str, list[float]] = {}
    for spec in needed_blocks(space, calibration_configs + test_configs):
        module, inputs = space.build_block(spec)
        block_samples[spec.key] = backend.measure(module, inputs, warmup=args.warmup, repeats=args.repeats)
    seconds = time.perf_counter() - started
    print(f"  {device} {space.name}: {len(block_samples)} blocks in {seconds:.0f}s", file=sys.stderr)

    def measure(configs: list[dict[str, Any]]) -> list[SubnetMeasurement]:
        return [measure_subnet(space, c, backend, warmup=args.warmup, repeats=args.repeats) for c in configs]

    # Calibration and test subnets are measured interleaved, so that a change of the host's load
    # during the run affects both alike.
    order = np.random.default_rng(args.seed).permutation(len(calibration_configs) + len(test_configs))
    everything = calibration_configs + test_configs
    runs = dict(zip(order.tolist(), measure([everything[i] for i in order]), strict=True))
    calibration_runs = [runs[i] for i in range(len(calibration_configs))]
    test_runs = [runs[i] for i in range(len(calibration_configs), len(everything))]
    results: dict[str, Any] = {
        "device": device,
        "space": space.name,
        "options": dict(space.options),
        "blocks_measured": len(block_samples),
        "seconds": time.perf_counter() - started,
        "statistics": {},
    }
    for statistic in args.statistics:
        results["statistics"][statistic] = _predictions(
            space, device, block_samples, calibration_runs, test_runs, statistic
        )
    return results


def _statistic(samples: Any, statistic: str) -> float:
    return float(np.percentile(np.asarray(samples, dtype=np.float64), STATISTICS[statistic]))


def _predictions(
    space: SearchSpace,
    device: str,
    block_samples: dict[str, list[float]],
    calibration_runs: list[SubnetMeasurement],
    test_runs: list[SubnetMeasurement],
    statistic: str,
) -> dict[str, Any]:
    """Block sums and calibrated predictions of the test subnets, both sides on `statistic`."""
    entries = {key: _statistic(samples, statistic) for key, samples in block_samples.items()}

    def point(run: SubnetMeasurement, role: str) -> dict[str, Any]:
        blocks = space.blocks(run.config)
        return {
            "role": role,
            "config_id": run.config_id,
            "n_blocks": run.n_blocks,
            "params": sum(spec.params for spec in blocks),
            "measured_ms": _statistic(run.samples_ms, statistic),
            "block_sum_ms": predict(entries, device, blocks).total_ms,
        }

    calibration_points = [point(r, "calibration") for r in calibration_runs]
    calibration = fit_calibration(
        [CalibrationPoint(p["block_sum_ms"], p["n_blocks"], p["measured_ms"]) for p in calibration_points]
    )
    pairs = []
    for run in test_runs:
        pair = point(run, "test")
        raw = pair["block_sum_ms"]
        pair["calibrated_ms"] = calibration.apply(raw, run.n_blocks) if calibration is not None else raw
        pairs.append(pair)
    return {
        "calibration": None if calibration is None else calibration.to_dict(),
        "calibration_points": calibration_points,
        "pairs": pairs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", nargs="+", default=list(DEVICES), choices=DEVICES)
    parser.add_argument("--spaces", nargs="+", default=[s for s in SETUPS if s in list_spaces()])
    parser.add_argument("--subnets", type=int, default=50, help="held-out subnets per (device, space)")
    parser.add_argument("--calibration", type=int, default=16, help="calibration subnets per (device, space)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", default="thread", choices=["wall", "thread"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--statistics",
        nargs="+",
        default=["median", "p10", "min"],
        choices=sorted(STATISTICS),
        help="per-block and per-subnet statistic compared (both sides alike)",
    )
    parser.add_argument("--json", type=Path, help="write every pair and calibration here")
    args = parser.parse_args(argv)
    unknown = [s for s in args.spaces if s not in SETUPS]
    if unknown:
        parser.error(f"unknown spaces {unknown}; allowed: {sorted(SETUPS)}")
    torch.manual_seed(args.seed)
    results = []
    lines = [
        "| device | space | predictor | subnets | RMSE ms | RMSPE | mean error | ±5% | ±10% | ±15% | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for device in args.devices:
        for name in args.spaces:
            setup = SETUPS[name]
            result = run_one(device, get_space(setup.space, **setup.options), args)
            results.append(result)
            for statistic, data in result["statistics"].items():
                for predictor, column in (("block sum", "block_sum_ms"), ("calibrated", "calibrated_ms")):
                    report = accuracy_report((p[column], p["measured_ms"]) for p in data["pairs"])
                    lines.append(_row(device, setup, f"{predictor} ({statistic})", report, result["seconds"]))
                    print(lines[-1], file=sys.stderr)
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
