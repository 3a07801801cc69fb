"""What do the input checks every request passes cost? (`services/server/input_checks.py`: NUL
characters and nesting depth of JSON bodies, read whole before the route reads them again.)

For JSON bodies of the shapes the API takes, from a small search spec to the largest measurement
upload (10,000 rows of 30 samples) and a body at the 32 MiB limit, times the middleware's check
(`json.loads` plus a walk of every value) and, beside it, `json.loads` alone (what FastAPI pays to
read the body anyway), median of `--repeats` runs, with the load average.

    python benchmarks/input_checks.py
    python benchmarks/input_checks.py --repeats 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

from services.server.input_checks import _body_problem


def upload(rows: int, samples: int = 30) -> bytes:
    body = {
        "run_id": "bench",
        "space": "unet",
        "space_options": {},
        "provenance": {"backend": "torch-cpu", "runtime": "torch", "machine": {"cpu": "x", "threads": 1}},
        "measurements": [
            {
                "key": f"unet.resnet|batch=1|dim={i}|dtype=fp32|hw=64x64",
                "samples_ms": [1.0 + j * 1e-3 for j in range(samples)],
            }
            for i in range(rows)
        ],
    }
    return json.dumps(body).encode()


def spec() -> bytes:
    return json.dumps(
        {
            "name": "bench",
            "space": "efficientformerv2",
            "space_options": {"resolution": 224},
            "objectives": ["latency:host-cpu-torch", "params"],
            "budget": {"trials": 100},
        }
    ).encode()


def median_ms(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    bodies = {
        "search spec": spec(),
        "upload, 1,000 rows": upload(1_000),
        "upload, 10,000 rows (the row limit)": upload(10_000),
    }
    limit = 32 << 20
    rows = 10_000
    while len(upload(rows)) < limit * 0.95:
        rows = int(rows * limit * 0.97 / len(upload(rows)))
    bodies[f"upload, {rows:,} rows (~32 MiB)"] = upload(rows)
    load = os.getloadavg()
    averages = " ".join(f"{value:.1f}" for value in load)
    print(f"load average {averages}, {os.cpu_count()} CPUs, median of {args.repeats}")
    print()
    print("| body | bytes | json.loads (ms) | input check (ms) | check / loads |")
    print("|---|---|---|---|---|")
    for name, body in bodies.items():
        assert _body_problem(body) is None
        loads = median_ms(lambda b=body: json.loads(b), args.repeats)
        check = median_ms(lambda b=body: _body_problem(b), args.repeats)
        print(f"| {name} | {len(body):,} | {loads:.2f} | {check:.2f} | {check / loads:.1f} |")


if __name__ == "__main__":
    main()
