"""How well does each latency predictor match whole subnets, next to how well the measurement matches
itself? RMSE, RMSPE, mean error, the shares within +-5/10/15%, Spearman's rho, per predictor.

For each device measurable on this host (`host-cpu-torch`: PyTorch eager; `host-cpu-onnxruntime`:
ONNX Runtime; one thread, thread clock by default) and each space setup:

1. `--train` subnets are chosen as a farm's are (`latency_lut.sampling.choose_subnets`: the first half
   spread over the space, the second half where the learned predictors fitted on the first half
   disagree most) and `--test` random subnets are drawn apart from them (held out: never fitted on);
2. every block they contain is timed the three ways a farm times it (alone, right after its
   predecessor, and the runtime's call overhead), `--block-warmup` / `--block-repeats` runs each;
3. the training subnets are measured end to end once and the test subnets twice (a full pass over
   all of them, then a second pass), `--warmup` / `--repeats` runs each, with the same backend
   (`--min-seconds S`: every block and subnet timed past its repeats until its runs span S seconds);
4. `select_predictor` fits every candidate on the training subnets and picks the service's default;
   every candidate then predicts the test subnets, judged against their first measurement, and the
   second measurement is judged the same way: the *ceiling*.

Both sides use the same statistic of their samples (`--statistic`, p10 by default, as the service).
Prints one markdown row per (device, setup, predictor) with the load average; `--json` writes every
pair. About 90 minutes for the defaults on 2 cores; `--setups small` takes a few minutes.

    python benchmarks/lut_accuracy.py
    python benchmarks/lut_accuracy.py --devices host-cpu-onnxruntime --setups effv2-224 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latency_lut import (
    MeasuredSubnet,
    MemoryLatencyTable,
    TableView,
    device_backend,
    measure_missing,
    select_predictor,
)
from latency_lut.accuracy import AccuracyReport, accuracy_report
from latency_lut.measure import DEFAULT_TIMINGS
from latency_lut.predictors import STATISTICS, sample_statistic
from latency_lut.sampling import choose_subnets
from latency_lut.validate import measure_subnet, sample_configs
from search_spaces import SearchSpace, get_space

DEVICES = ("host-cpu-torch", "host-cpu-onnxruntime")


@dataclass(frozen=True)
class Setup:
    space: str
    options: dict[str, Any]
    label: str


SETUPS = {
    "effv2-224": Setup("efficientformerv2", {"resolution": 224, "num_classes": 1000}, "224 px, 1000 classes"),
    "unet-32": Setup("unet", {"latent_size": 32, "width_scale": 0.25}, "latent 32, width 0.25"),
    "temporal-16": Setup(
        "temporal", {"latent_size": 16, "width_scale": 0.25, "frames": 8}, "latent 16, width 0.25, 8 frames"
    ),
    "small": Setup("efficientformerv2", {"resolution": 32, "num_classes": 10}, "32 px (the tests' size)"),
}
DEFAULT_SETUPS = ("effv2-224", "unet-32", "temporal-16", "small")


def load() -> float:
    return os.getloadavg()[0]


def _log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')} load {load():.1f}] {message}", file=sys.stderr, flush=True)


def _measure_all(
    space: SearchSpace, configs: Sequence[dict[str, Any]], backend: Any, args: argparse.Namespace
) -> list[Any]:
    return [
        measure_subnet(space, config, backend, warmup=args.warmup, repeats=args.repeats) for config in configs
    ]


def run_one(device: str, setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one (device, setup) and judge every predictor; returns the rows' data."""
    space = get_space(setup.space, **setup.options)
    backend = device_backend(device, threads=1, clock=args.clock, min_seconds=args.min_seconds)
    started = time.perf_counter()
    loads = [load()]
    table = MemoryLatencyTable()

    def fill(configs: Sequence[dict[str, Any]]) -> None:
        report = measure_missing(
            space,
            device,
            table,
            configs=configs,
            backend=backend,
            warmup=args.block_warmup,
            repeats=args.block_repeats,
            timings=DEFAULT_TIMINGS,
        )
        _log(f"{device} {setup.space}: {report.measured} entries timed in {report.seconds:.0f}s")

    def view() -> TableView:
        return TableView.from_entries(device, table.entries(device), args.statistic)

    def subnets(runs: Sequence[Any]) -> list[MeasuredSubnet]:
        return [
            MeasuredSubnet(space.blocks(r.config), sample_statistic(r.samples_ms, args.statistic))
            for r in runs
        ]

    # Training subnets in two rounds, as a farm asks for them: spread first, then where fits disagree.
    pool = sample_configs(space, 20 * args.train, seed=args.seed)
    first_half = [pool[i] for i, _ in choose_subnets(space, pool, args.train // 2, {})]
    fill(first_half)
    train_runs = _measure_all(space, first_half, backend, args)
    loads.append(load())
    early = select_predictor(view(), subnets(train_runs))
    rest = [c for c in pool if c not in first_half]
    second_half = [
        rest[i] for i, _ in choose_subnets(space, rest, args.train - len(first_half), early.predictors)
    ]
    fill(second_half)
    train_runs += _measure_all(space, second_half, backend, args)
    train = first_half + second_half
    test = sample_configs(space, args.test, seed=args.seed + 1, exclude=[space.config_id(c) for c in train])
    fill(test)
    loads.append(load())
    first = _measure_all(space, test, backend, args)
    loads.append(load())
    second = _measure_all(space, test, backend, args)
    loads.append(load())
    selection = select_predictor(view(), subnets(train_runs))
    measured = [sample_statistic(r.samples_ms, args.statistic) for r in first]
    again = [sample_statistic(r.samples_ms, args.statistic) for r in second]
    rows: dict[str, Any] = {}
    for name, predictor in selection.predictors.items():
        predicted = [predictor.predict(space.blocks(r.config)).total_ms for r in first]
        rows[name] = {
            "predicted": predicted,
            "report": accuracy_report(zip(predicted, measured, strict=True)),
        }
    return {
        "device": device,
        "setup": setup,
        "selected": selection.predictor.label,
        "rows": rows,
        "ceiling": accuracy_report(zip(again, measured, strict=True)),
        "measured": measured,
        "again": again,
        "train": len(train_runs),
        "entries": len(table.entries(device)),
        "seconds": time.perf_counter() - started,
        "load": (min(loads), max(loads)),
    }


def _row(result: dict[str, Any], name: str, report: AccuracyReport) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.0f}%"

    setup: Setup = result["setup"]
    chosen = " **(default)**" if name == result["selected"] else ""
    rho = "-" if report.spearman is None else f"{report.spearman:.3f}"
    lo, hi = result["load"]
    return (
        f"| {result['device']} | {setup.space} ({setup.label}) | {name}{chosen} | {report.n} | "
        f"{report.rmse_ms:.2f} | {pct(report.rmspe)} | {100 * (report.mean_error or 0):+.1f}% | "
        f"{pct(report.within_5)} | {pct(report.within_10)} | {pct(report.within_15)} | {rho} | "
        f"{lo:.1f}-{hi:.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", nargs="+", default=list(DEVICES), choices=DEVICES)
    parser.add_argument("--setups", nargs="+", default=list(DEFAULT_SETUPS), choices=sorted(SETUPS))
    parser.add_argument(
        "--train", type=int, default=80, help="measured subnets the learned predictors fit on"
    )
    parser.add_argument("--test", type=int, default=50, help="held-out subnets, measured twice")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per subnet measurement")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per subnet measurement")
    parser.add_argument("--block-warmup", type=int, default=3)
    parser.add_argument("--block-repeats", type=int, default=11)
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=0.0,
        help="every measurement (block or subnet) times calls past its repeats until they span this many "
        "seconds (default 0: exactly the repeats)",
    )
    parser.add_argument("--clock", default="thread", choices=["wall", "thread"])
    parser.add_argument("--statistic", default="p10", choices=STATISTICS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every prediction and measurement here")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    lines = [
        "| device | space | predictor | held-out subnets | RMSE ms | RMSPE | mean error | ±5% | ±10% | ±15% "
        "| Spearman | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    dump = []
    for device in args.devices:
        for name in args.setups:
            result = run_one(device, SETUPS[name], args)
            for predictor, data in result["rows"].items():
                lines.append(_row(result, predictor, data["report"]))
                print(lines[-1], file=sys.stderr, flush=True)
            lines.append(_row(result, "ceiling: measured again", result["ceiling"]))
            print(lines[-1], file=sys.stderr, flush=True)
            seconds, entries, train = result["seconds"], result["entries"], result["train"]
            _log(f"{device} {name}: {seconds:.0f}s, {entries} entries, {train} training subnets")
            dump.append(
                {
                    "device": device,
                    "setup": name,
                    "selected": result["selected"],
                    "measured": result["measured"],
                    "again": result["again"],
                    "predicted": {k: v["predicted"] for k, v in result["rows"].items()},
                    "seconds": result["seconds"],
                    "load": result["load"],
                }
            )
            if args.json is not None:  # after each setup: a long run keeps what it measured
                args.json.write_text(json.dumps(dump, indent=1))
    print(f"statistic {args.statistic}, clock {args.clock}; error = (predicted - measured) / measured")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
