"""How well does a subnet's measurement repeat, and over what time does the host's speed wander?

Two parts, on one device (one thread, thread clock, p10 of each measurement's samples):

1. **Spans.** One subnet's session is run back to back for `--trace-seconds`; the samples are cut
   into windows of 0.05, 0.2, 1 and 5 seconds and the 10th percentile of each window is taken: their
   spread (coefficient of variation, 5th-95th percentile) says how much a measurement that lasts
   that long moves with the host alone (same session, same process, nothing rebuilt).
2. **Passes.** `--subnets` random subnets are measured end to end twice in a row (a pass over all of
   them, then a second pass) for each `--min-seconds` value (a measurement's timed runs go on past
   `--repeats` until they span that long, `latency_lut.backends.time_calls`), in one process that
   first builds and times `--busy` other subnets (as a farm agent or `lut_accuracy.py` has done by
   the time it measures): the share of subnets whose two measurements agree within +-5% / +-10%.

Prints a markdown table per part with the load average; `--json` keeps every number.

    python benchmarks/lut_repeatability.py
    python benchmarks/lut_repeatability.py --device host-cpu-torch --min-seconds 0 1
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latency_lut import device_backend
from latency_lut.validate import measure_subnet, sample_configs
from search_spaces import get_space

DEVICES = ("host-cpu-onnxruntime", "host-cpu-torch")
WINDOWS_S = (0.05, 0.2, 1.0, 5.0)


def load() -> float:
    return os.getloadavg()[0]


def _log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')} load {load():.1f}] {message}", file=sys.stderr, flush=True)


def _runner(device: str, space: Any, config: dict[str, Any]) -> Any:
    """One forward pass of `config` per call, prepared once (an ONNX Runtime session or the module)."""
    module = space.build(space.canonicalize(config)).eval()
    inputs = space.example_inputs()
    if device == "host-cpu-onnxruntime":
        from latency_lut.onnxruntime_backend import OnnxRuntimeBackend, export_onnx

        buffer = io.BytesIO()
        export_onnx(module, inputs, buffer)
        session = OnnxRuntimeBackend(threads=1).session(buffer.getvalue())
        feeds = {f"input{i}": t.numpy() for i, t in enumerate(inputs)}
        return lambda: session.run(None, feeds)

    def call() -> Any:
        with torch.inference_mode():
            return module(*inputs)

    return call


def spans(device: str, space: Any, config: dict[str, Any], seconds: float) -> list[dict[str, Any]]:
    """Part 1: the spread of the p10 of windows of each length over `seconds` of back-to-back runs."""
    call = _runner(device, space, config)
    for _ in range(5):
        call()
    stamps, samples = [], []
    end = time.perf_counter() + seconds
    while (now := time.perf_counter()) < end:
        started = time.thread_time_ns()
        call()
        samples.append((time.thread_time_ns() - started) / 1e6)
        stamps.append(now)
    at = np.asarray(stamps) - stamps[0]
    values = np.asarray(samples)
    rows = []
    for window in WINDOWS_S:
        bins = (at // window).astype(int)
        kept = [b for b in np.unique(bins) if (bins == b).sum() >= 5]
        p10 = np.array([np.percentile(values[bins == b], 10) for b in kept])
        if len(p10) < 2:
            continue
        rows.append(
            {
                "window_s": window,
                "windows": len(p10),
                "median_ms": float(np.median(p10)),
                "cv": float(p10.std() / p10.mean()),
                "p5_ms": float(np.percentile(p10, 5)),
                "p95_ms": float(np.percentile(p10, 95)),
            }
        )
    return rows


def passes(
    device: str, space: Any, configs: list[dict[str, Any]], min_seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Part 2: two passes over `configs`, each measurement spanning at least `min_seconds`."""
    backend = device_backend(device, threads=1, clock="thread", min_seconds=min_seconds)
    started = time.perf_counter()
    measured = []
    for _ in range(2):
        runs = [measure_subnet(space, c, backend, warmup=args.warmup, repeats=args.repeats) for c in configs]
        measured.append([float(np.percentile(r.samples_ms, 10)) for r in runs])
    diff = np.asarray(measured[1]) / np.asarray(measured[0]) - 1
    return {
        "min_seconds": min_seconds,
        "first": measured[0],
        "second": measured[1],
        "median_diff": float(np.median(diff)),
        "within_5": float(np.mean(np.abs(diff) <= 0.05)),
        "within_10": float(np.mean(np.abs(diff) <= 0.10)),
        "min_diff": float(diff.min()),
        "max_diff": float(diff.max()),
        "pass_seconds": (time.perf_counter() - started) / 2,
        "load": load(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=DEVICES[0], choices=DEVICES)
    parser.add_argument("--resolution", type=int, default=32, help="EfficientFormerV2 input (default 32 px)")
    parser.add_argument("--subnets", type=int, default=20)
    parser.add_argument("--busy", type=int, default=120, help="other subnets timed first in the process")
    parser.add_argument("--min-seconds", type=float, nargs="+", default=[0.0, 1.0, 3.0])
    parser.add_argument("--trace-seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.subnets < 2 or args.busy < 0 or args.trace_seconds <= 0:
        parser.error("--subnets must be >= 2, --busy >= 0 and --trace-seconds > 0")
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    space = get_space("efficientformerv2", resolution=args.resolution, num_classes=10)
    configs = sample_configs(space, args.subnets, seed=args.seed + 11)
    what = f"{args.device}, efficientformerv2 at {args.resolution} px"

    _log(f"{what}: one subnet run back to back for {args.trace_seconds:g}s")
    load_before = load()
    span_rows = spans(args.device, space, configs[0], args.trace_seconds)
    lines = [
        f"Spans ({what}, one session, load {load_before:.1f}-{load():.1f}):",
        "",
        "| window | windows | median p10 ms | CV of the windows' p10 | p5-p95 ms |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['window_s']:g} s | {r['windows']} | {r['median_ms']:.3f} | {100 * r['cv']:.1f}% | "
        f"{r['p5_ms']:.3f}-{r['p95_ms']:.3f} |"
        for r in span_rows
    ]

    busy = sample_configs(space, args.busy, seed=args.seed + 12) if args.busy else []
    _log(f"{what}: {len(busy)} other subnets timed first")
    ordinary = device_backend(args.device, threads=1, clock="thread")
    for config in busy:
        measure_subnet(space, config, ordinary, warmup=args.warmup, repeats=args.repeats)
    pass_rows = []
    for min_seconds in args.min_seconds:
        pass_rows.append(passes(args.device, space, configs, min_seconds, args))
        r = pass_rows[-1]
        _log(f"min_seconds {min_seconds:g}: within 10% {100 * r['within_10']:.0f}%")
    lines += [
        "",
        f"Passes ({what}, {len(configs)} subnets measured twice in a row, after {len(busy)} others, "
        f"{args.repeats} runs, p10):",
        "",
        "| min_seconds | ±5% | ±10% | median difference | range | seconds per pass | load |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['min_seconds']:g} | {100 * r['within_5']:.0f}% | {100 * r['within_10']:.0f}% | "
        f"{100 * r['median_diff']:+.1f}% | {100 * r['min_diff']:+.0f}% to {100 * r['max_diff']:+.0f}% | "
        f"{r['pass_seconds']:.0f} | {r['load']:.1f} |"
        for r in pass_rows
    ]
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps({"spans": span_rows, "passes": pass_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
