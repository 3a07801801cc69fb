"""How long a person waits: `nas` commands, and a search from submit to its first recorded trial.

Rows:
- CLI latency: `nas --help` and `nas search list` (against a live server), each run as a fresh
  process, median and max of `--runs` runs (the goal: under 1 s);
- submit to first trial: a real `nas serve` (its own SQLite file, a local Ray of 2 CPUs, auth off)
  runs the same small search (`SPEC`: EfficientFormerV2 at 64 px, latency on this CPU and the
  synflow proxy, 2 evaluators) `--searches` times in a row. The first search on a fresh server is
  "cold" (Ray starts, evaluator actors start, the hypervolume anchors are evaluated); the later ones
  are "warm". Both with the warm evaluator pool (`NAS_WARM_EVALUATORS=2`, the default) and without
  it (`NAS_WARM_EVALUATORS=0`: every search starts its own actors), next to each other; the goal for
  a warm server with the pool: under 5 s.

The latency table of the space is measured once before the servers start (`nas lut measure`, one
warm-up and three repeats per block: fast, not accurate; not timed), so no search waits for it.
Every timing is printed with the 1-minute load average when it was taken.

    python benchmarks/startup.py                   # 10 CLI runs, 3 searches per server
    python benchmarks/startup.py --runs 5 --searches 2 --port 18310
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
NAS = str(Path(sys.executable).with_name("nas"))
SPEC: dict[str, Any] = {
    "name": "startup-benchmark",
    "space": "efficientformerv2",
    "space_options": {"resolution": 64, "num_classes": 10},
    "objectives": ["latency:host-cpu-torch", "proxy:synflow"],
    "strategy": "random",
    "budget": {"trials": 4, "parallelism": 2},
}


def load() -> float:
    return os.getloadavg()[0]


def timed_runs(argv: list[str], runs: int, env: dict[str, str]) -> tuple[list[float], list[float], float]:
    """Wall-clock and CPU (user + system) seconds of `runs` fresh processes of `argv` (each must
    succeed), and the mean load. CPU time hardly depends on the load; wall time does."""
    seconds, cpu, loads = [], [], []
    for _ in range(runs):
        loads.append(load())
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True, cwd=ROOT)
        seconds.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return seconds, cpu, statistics.mean(loads)


class Server:
    """`nas serve` in a subprocess on `port`, with its log in `folder`."""

    def __init__(self, folder: Path, port: int, env: dict[str, str]):
        self.url = f"http://127.0.0.1:{port}"
        self.log = (folder / f"serve-{port}.log").open("w")
        argv = [NAS, "serve", "--no-auth", "--port", str(port)]
        self.process = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"nas serve did not start; see {self.log.name}")
            time.sleep(0.2)

    def first_trial_s(self, seed: int) -> tuple[float, float]:
        """Seconds from submit to the first recorded trial of one search (run to its end), and the load."""
        before = load()
        start = time.perf_counter()
        created = httpx.post(f"{self.url}/v1/searches", json={**SPEC, "seed": seed}, timeout=60)
        created.raise_for_status()
        search_id = created.json()["id"]
        first = None
        while True:
            row = httpx.get(f"{self.url}/v1/searches/{search_id}", timeout=60).json()
            if first is None and row["trials_done"] >= 1:
                first = time.perf_counter() - start
            if row["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.05)
        if row["status"] != "succeeded" or first is None:
            raise SystemExit(f"search {search_id} ended {row['status']}: {row.get('error')}")
        return first, (before + load()) / 2

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(120)
        self.log.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10, help="CLI runs per command")
    parser.add_argument("--searches", type=int, default=3, help="searches per server (the first is cold)")
    parser.add_argument("--port", type=int, default=18310, help="first port; the servers use it and the next")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nas-startup-") as tmp:
        folder = Path(tmp)
        env = {
            **os.environ,
            "NAS_DATABASE_URL": f"sqlite:///{folder / 'nas.db'}",
            "NAS_RAY_NUM_CPUS": "2",
            "NAS_SCHEDULER_POLL_S": "0.2",
            "NAS_LUT_WARMUP": "1",
            "NAS_LUT_REPEATS": "3",
        }
        env.pop("NAS_RAY_ADDRESS", None)
        options = [f"-o{k}={v}" for k, v in SPEC["space_options"].items()]
        print("measuring the latency table once (not timed) ...", file=sys.stderr)
        subprocess.run(
            [NAS, "lut", "measure", "--device", "host-cpu-torch", "--space", SPEC["space"], *options],
            env=env,
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        rows: list[tuple[str, str, str, str]] = []
        searches: dict[str, list[tuple[float, float]]] = {}
        for column, keep, port in (("pool on", "2", args.port), ("pool off", "0", args.port + 1)):
            server = Server(folder, port, {**env, "NAS_WARM_EVALUATORS": keep})
            try:
                if keep == "2":
                    for name, argv in (
                        ("nas --help", [NAS, "--help"]),
                        ("nas search list", [NAS, "search", "list", "--server", server.url]),
                    ):
                        seconds, cpu, mean_load = timed_runs(argv, args.runs, env)
                        median, worst = statistics.median(seconds), max(seconds)
                        rows.append(
                            (
                                name,
                                f"{median:.2f} s (max {worst:.2f})",
                                f"{statistics.median(cpu):.2f} s",
                                f"{mean_load:.1f}",
                            )
                        )
                searches[column] = [server.first_trial_s(seed) for seed in range(args.searches)]
            finally:
                server.stop()

    print(f"\nCLI latency: a fresh process per run, median of {args.runs}\n")
    print("| command | wall, median (max) | CPU user+sys, median | load average |")
    print("|---|---|---|---|")
    for name, value, cpu_s, mean_load in rows:
        print(f"| `{name}` | {value} | {cpu_s} | {mean_load} |")
    print("\nSubmit to first recorded trial, seconds (load average)\n")
    print("| search on the server | warm evaluator pool on (default) | pool off (`NAS_WARM_EVALUATORS=0`) |")
    print("|---|---|---|")
    for i in range(args.searches):
        label = (
            "1st (cold server)" if i == 0 else f"{i + 1}{'nd' if i == 1 else 'rd' if i == 2 else 'th'} (warm)"
        )
        cells = [f"{searches[c][i][0]:.1f} s ({searches[c][i][1]:.1f})" for c in ("pool on", "pool off")]
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    print(json.dumps({"cli": rows, "first_trial": searches}), file=sys.stderr)


if __name__ == "__main__":
    main()
