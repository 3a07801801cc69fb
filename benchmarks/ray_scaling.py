"""Evaluation throughput with 1, 2, ... Ray evaluator workers on this machine.

Each worker is one `nas.evaluator_pool.EvaluatorActor` (one CPU, one torch thread), exactly what a search's
runner starts. The same list of sampled subnets is evaluated with each worker count, keeping every
worker busy (one evaluation in flight per worker, as the runner does), and the table shows evaluations
per second, the speed-up over one worker and the parallel efficiency. Worker counts are measured in
alternating rounds (1, 2, 1, 2, ...) and the median round is reported, so load from other processes
that comes and goes hits every count alike; the load average is printed with the table.

Two workloads:
- `cpu-bound`: a CPU-bound quality proxy (default `proxy:synflow`, a forward and backward pass of the
  subnet at 64 px) plus `params`: the evaluation dominates, so throughput should grow with workers;
- `dispatch`: `params` only (a sum over the block list, well under a millisecond), which measures what
  one evaluation costs the driver and Ray (task round trip, serialisation).

and, without Ray, the runner's own serial work per trial (`nas.runner.Runner` with in-process
evaluation of `params` only: strategy ask/tell, canonicalisation, front and hypervolume update, store
write) for NSGA-II and random search: together with `dispatch` this is the ceiling no number of workers
can pass, since one runner thread does it for every trial.

With `--address HOST:PORT` the actors run on an existing Ray cluster (`ray start --head` and
`ray start --address` on each machine) instead of a local Ray, and each row also counts the evaluations
per node (`head`, `node2`, ...: each outcome records the node that evaluated it), so a cluster that
leaves a node idle shows it.

    .venv/bin/python benchmarks/ray_scaling.py                       # 1 and 2 workers (2 cores here)
    .venv/bin/python benchmarks/ray_scaling.py --workers 1 2 4 --evaluations 48
    .venv/bin/python benchmarks/ray_scaling.py --address 127.0.0.1:6379   # an existing cluster
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import ray

from nas import MemoryTrialStore, SearchSpec, parse_objective, resolve
from nas.evaluator_pool import EvaluatorActor
from nas.runner import Runner
from search_spaces import get_space


@dataclass
class Row:
    workload: str
    workers: int
    evaluations: int
    wall_s: float
    per_s: float
    mean_eval_s: float
    errors: int
    speedup: float = 1.0
    efficiency: float = 1.0
    per_node: dict[str, int] = field(default_factory=dict)


def run(workload: str, objectives: list[str], options: dict, configs: list[dict], workers: int) -> Row:
    """Evaluate `configs` on `workers` actors (started and warmed up outside the timing)."""
    parsed = [parse_objective(name, []) for name in objectives]
    actors = [EvaluatorActor.remote("efficientformerv2", options, parsed, {}) for _ in range(workers)]
    try:
        ray.get([actor.ready.remote() for actor in actors])
        # One untimed evaluation per actor: imports, first-call allocations and caches happen here.
        ray.get([actor.evaluate.remote(configs[0]) for actor in actors])
        pending = list(configs)
        running: dict[ray.ObjectRef, object] = {}
        durations, errors = [], 0
        per_node: dict[str, int] = {}
        start = time.perf_counter()
        idle = list(actors)
        while pending or running:
            while idle and pending:
                actor = idle.pop()
                running[actor.evaluate.remote(pending.pop())] = actor
            done, _ = ray.wait(list(running), num_returns=1)
            idle.append(running.pop(done[0]))
            outcome = ray.get(done[0])
            durations.append(outcome.duration_s)
            errors += outcome.error is not None
            node = outcome.metrics.get("node_id", "?")
            per_node[node] = per_node.get(node, 0) + 1
        wall = time.perf_counter() - start
    finally:
        for actor in actors:
            ray.kill(actor)
    return Row(
        workload=workload,
        workers=workers,
        evaluations=len(configs),
        wall_s=wall,
        per_s=len(configs) / wall,
        mean_eval_s=float(np.mean(durations)),
        errors=errors,
        per_node=per_node,
    )


def node_names() -> dict[str, str]:
    """Ray node id -> `head`, `node2`, `node3`, ... (the head first, the others in Ray's order)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    nodes.sort(key=lambda n: "node:__internal_head__" not in n.get("Resources", {}))
    return {n["NodeID"]: ("head" if i == 0 else f"node{i + 1}") for i, n in enumerate(nodes)}


def runner_overhead(strategy: str, trials: int, options: dict) -> tuple[float, int]:
    """Seconds per trial of the runner loop itself (evaluation of `params` in-process, no Ray)."""
    spec = SearchSpec(
        space="efficientformerv2",
        space_options=options,
        objectives=["params"],
        strategy=strategy,
        budget={"trials": trials, "parallelism": 1},
    )
    runner = Runner(resolve(spec, []), "bench", MemoryTrialStore(), {}, use_ray=False)
    start = time.perf_counter()
    result = runner.run()
    return (time.perf_counter() - start) / max(1, result.n_trials), result.n_trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--evaluations", type=int, default=24, help="per worker count, CPU-bound workload")
    parser.add_argument("--dispatch-evaluations", type=int, default=400)
    parser.add_argument("--runner-trials", type=int, default=300)
    parser.add_argument("--proxy", default="synflow", help="the CPU-bound proxy (see nas.proxies)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--address", help="an existing Ray cluster (HOST:PORT) instead of a local Ray")
    args = parser.parse_args()

    options = {"resolution": args.resolution, "num_classes": 10}
    space = get_space("efficientformerv2", **options)
    rng = np.random.default_rng(0)
    configs = [space.sample(rng) for _ in range(max(args.evaluations, args.dispatch_evaluations))]
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False)
    names = node_names()
    cluster = ", ".join(
        sorted(
            f"{names.get(n['NodeID'], '?')} {n['Resources'].get('CPU', 0):.0f} CPU"
            for n in ray.nodes()
            if n.get("Alive")
        )
    )
    rows: list[Row] = []
    load_before = os.getloadavg()
    try:
        workloads = [
            ("cpu-bound", ["params", f"proxy:{args.proxy}"], configs[: args.evaluations]),
            ("dispatch", ["params"], configs[: args.dispatch_evaluations]),
        ]
        for workload, objectives, chosen in workloads:
            rounds: dict[int, list[Row]] = {w: [] for w in args.workers}
            for _ in range(args.rounds):
                for workers in args.workers:
                    rounds[workers].append(run(workload, objectives, options, chosen, workers))
            medians = [sorted(rounds[w], key=lambda r: r.per_s)[len(rounds[w]) // 2] for w in args.workers]
            for row in medians:
                row.speedup = row.per_s / medians[0].per_s
                row.efficiency = row.speedup / (row.workers / medians[0].workers)
                rows.append(row)
    finally:
        ray.shutdown()

    machine = platform.processor() or platform.machine()
    print(
        f"EfficientFormerV2 at {args.resolution} px; {os.cpu_count()} CPUs ({machine}); ray {ray.__version__}"
    )
    load = ", ".join(f"{a:.1f}->{b:.1f}" for a, b in zip(load_before, os.getloadavg(), strict=True))
    print(f"median of {args.rounds} alternating rounds; load average (1/5/15 min, before->after): {load}")
    print(f"Ray: {args.address or 'local'} ({cluster})")
    header = f"{'workload':<10} {'workers':>7} {'evals':>6} {'wall s':>8} {'evals/s':>9} {'speed-up':>9} "
    print(header + f"{'efficiency':>10} {'mean eval s':>12} {'errors':>6}  evals per node")
    for r in rows:
        per_node = ", ".join(
            f"{names.get(n, n[:8])} {c}"
            for n, c in sorted(r.per_node.items(), key=lambda i: names.get(i[0], i[0]))
        )
        print(
            f"{r.workload:<10} {r.workers:>7} {r.evaluations:>6} {r.wall_s:>8.2f} {r.per_s:>9.2f} "
            f"{r.speedup:>8.2f}x {r.efficiency:>9.0%} {r.mean_eval_s:>12.4f} {r.errors:>6}  {per_node}"
        )
    overhead = {s: runner_overhead(s, args.runner_trials, options) for s in ("random", "nsga2")}
    for strategy, (per_trial, n) in overhead.items():
        print(
            f"runner loop, {strategy:<6} ({n} trials, no Ray): {per_trial * 1000:.2f} ms per trial "
            f"-> at most {1 / per_trial:.0f} trials/s whatever the workers"
        )
    if args.json:
        with open(args.json, "w") as fh:
            payload = {"rows": [asdict(r) for r in rows], "runner_s_per_trial": overhead}
            json.dump(payload, fh, indent=2)


if __name__ == "__main__":
    main()
