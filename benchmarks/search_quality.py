"""Which strategy finds the best front, on problems it was not tuned on? Hypervolume after N evaluations,
per space and problem family, over seeds, against the peers users would run instead.

Spaces (`_frozen_luts.BENCH_SPACES`): EfficientFormerV2 at 224 px, UNet at latent 16 / width 0.25,
SnapGen-V temporal at 16 frames / latent 16 / width 0.25. Problem families (`FAMILIES`):
- `synthetic`: the original problem, 3 objectives from the blocks: a synthetic LUT
  (`(0.5 + h(key)) * log1p(params) / 10` ms per block, `h` from the key's hash), `params`, and a
  made-up proxy with diminishing returns (`proxy:bench`, maximised);
- `torch-macs`: latency from the frozen `host-cpu-torch` table against MACs maximised (`proxy:macs`,
  the counting zero-cost proxy: more compute predicts better quality), 2 objectives;
- `torch-macs-constrained`: the same with `latency <= lo + 0.3 * (hi - lo)` (lo, hi: the smallest and
  largest subnets' latencies): only feasible trials count;
- `ort-3obj`: latency from the frozen `host-cpu-onnxruntime` table, `params`, MACs maximised.
Latency tables are measured on this host once and frozen under `benchmarks/results/search_quality/luts`
(`_frozen_luts.py`), as are the per-block MAC counts (`macs__<space>.json`).

Hypervolume: `nas.pareto.normalized_hypervolume`, the runner's figure (bounds from the space's
smallest and largest subnets, values beyond them clipped, reference 1.1 per objective, so at most
1.21 or 1.331). Our strategies ask in batches of `--batch` as the runner does with that parallelism;
the peers run as their users run them, every proposal evaluated (duplicates included):
`optuna-tpe` (`TPESampler(seed=...)`, defaults, multi-objective), `optuna-nsga2` (`NSGAIISampler`
defaults), both told constraints by `Trial.set_constraint` (Optuna 5), through `study.optimize`; `pymoo-nsga2`
(`NSGA2` with pymoo's documented recipe for integer variables: integer sampling, SBX and PM with
rounding repair, duplicate elimination, default population 100; `minimize` to `n_eval`). Choices are
categorical for Optuna and option indices for pymoo.

Output (`--out`): per space and family a table (mean final hypervolume, 95% interval over seeds,
evaluations for the mean curve to reach plain Optuna NSGA-II's mean final value, optimizer seconds
per run), a goal table for `--default`, curves as CSV and PNG, and the optimizer's milliseconds per
ask at 100 and 1,000 trials for every registered sampling strategy, with the load average.

    python benchmarks/search_quality.py            # 3 spaces x 4 families x 3 seeds x 300 evaluations
    python benchmarks/search_quality.py --quick    # smoke run: 1 seed x 40 evaluations, no timing
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _frozen_luts import BENCH_SPACES, frozen_lut, frozen_macs
from _png import line_chart
from _search_peers import PEERS, run_peer

from nas import Trial
from nas.objectives import Constraint, Objective, parse_constraint
from nas.pareto import Normalizer, ParetoFront, normalized_hypervolume
from nas.strategies import make_strategy
from search_spaces import Config, SearchSpace, config_id, get_space

SYNTHETIC = "bench-synthetic"
TORCH, ORT = "host-cpu-torch", "host-cpu-onnxruntime"
MAXIMIZE_MACS = Objective("proxy:macs", "maximize")


@dataclass(frozen=True)
class Family:
    """A problem family: objectives and, optionally, a latency bound at `share` of the anchors' span."""

    objectives: tuple[Objective, ...]
    bound_share: float | None = None


FAMILIES = {
    "synthetic": Family(
        (
            Objective(f"latency:{SYNTHETIC}", "minimize"),
            Objective("params", "minimize"),
            Objective("proxy:bench", "maximize"),
        )
    ),
    "torch-macs": Family((Objective(f"latency:{TORCH}", "minimize"), MAXIMIZE_MACS)),
    "torch-macs-constrained": Family((Objective(f"latency:{TORCH}", "minimize"), MAXIMIZE_MACS), 0.3),
    "ort-3obj": Family(
        (Objective(f"latency:{ORT}", "minimize"), Objective("params", "minimize"), MAXIMIZE_MACS)
    ),
}
OURS = ["tpe-evolution", "evolution"]
DEFAULT_STRATEGIES = [*OURS, *PEERS]
TIMED = ["random", "evolution", "tpe-evolution", "nsga2", "nsga3", "tpe"]
# t quantiles (two-sided 95%) for n - 1 degrees of freedom.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _unit(text: str) -> float:
    import hashlib

    return int(hashlib.sha256(text.encode()).hexdigest()[:4], 16) / 0x10000


class SpaceValues:
    """Every objective value of any subnet of one space, from its blocks; cached by config id."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self.luts = {TORCH: frozen_lut(space, TORCH), ORT: frozen_lut(space, ORT)}
        self.macs = frozen_macs(space)
        self._cache: dict[str, dict[str, float]] = {}

    def __call__(self, config: Config) -> dict[str, float]:
        cid = config_id(config)
        if cid not in self._cache:
            blocks = self.space.blocks(config)
            self._cache[cid] = {
                f"latency:{SYNTHETIC}": sum((0.5 + _unit(b.key)) * math.log1p(b.params) / 10 for b in blocks),
                "proxy:bench": sum((0.5 + _unit(b.kind)) * math.log1p(b.params) ** 0.75 for b in blocks),
                f"latency:{TORCH}": sum(self.luts[TORCH][b.key] for b in blocks),
                f"latency:{ORT}": sum(self.luts[ORT][b.key] for b in blocks),
                "params": float(sum(b.params for b in blocks)),
                "proxy:macs": float(sum(self.macs[b.key] for b in blocks)),
            }
        return self._cache[cid]


class Problem:
    """One space and family: the objectives, the constraint, the anchors' normaliser."""

    def __init__(self, values: SpaceValues, family: Family):
        self.space, self.values = values.space, values
        self.objectives = list(family.objectives)
        anchors = [self.point(values(c)) for c in (self.space.smallest(), self.space.largest())]
        self.normalizer = Normalizer.from_points(anchors)
        self.constraints: list[Constraint] = []
        if family.bound_share is not None:
            latency = self.objectives[0]
            lo, hi = sorted(values(c)[latency.name] for c in (self.space.smallest(), self.space.largest()))
            bound = lo + family.bound_share * (hi - lo)
            text = f"{latency.name} <= {bound:.6g}"
            self.constraints = [parse_constraint(text, [TORCH, ORT], proxies={"macs": "maximize"})]

    def point(self, values: dict[str, float]) -> list[float]:
        return [o.to_min(values[o.name]) for o in self.objectives]

    def feasible(self, values: dict[str, float]) -> bool:
        return all(c.satisfied(values) for c in self.constraints)


class Curve:
    """Hypervolume of the feasible front after each evaluation (sampled every `every`)."""

    def __init__(self, problem: Problem, every: int, limit: int):
        self.problem, self.every, self.limit = problem, every, limit
        self.front = ParetoFront(len(problem.objectives))
        self.n = 0
        self.points: list[float] = []
        self.eval_s = 0.0

    def add(self, config: Config) -> dict[str, float]:
        start = time.perf_counter()
        values = self.problem.values(config)
        if self.n < self.limit:
            if self.problem.feasible(values):
                self.front.add(self.n, self.problem.point(values))
            self.n += 1
            if self.n % self.every == 0:
                self.points.append(self.hv())
        self.eval_s += time.perf_counter() - start
        return values

    def hv(self) -> float:
        return normalized_hypervolume(self.front.points, self.problem.normalizer)


def run_ours(problem: Problem, name: str, seed: int, evals: int, batch: int, curve: Curve) -> list[float]:
    """Drive a registered strategy to `evals` distinct subnets; ms per asked config, per ask. `name` may
    carry params: `tpe-evolution:switch_after=50,population_size=16`."""
    base, _, text = name.partition(":")
    params = {k: json.loads(v) for k, v in (item.split("=", 1) for item in text.split(",") if item)}
    strategy = make_strategy(
        base, problem.space, problem.objectives, problem.constraints, seed=seed, **params
    )
    ask_ms: list[float] = []
    number = 0
    while curve.n < evals:
        start = time.perf_counter()
        configs = strategy.ask(min(batch, evals - curve.n))
        if not configs:
            break
        ask_ms.append(1e3 * (time.perf_counter() - start) / len(configs))
        trials = []
        for config in configs:
            values = curve.add(config)
            trials.append(
                Trial(number, config, config_id(config), values=values, feasible=problem.feasible(values))
            )
            number += 1
        strategy.tell(trials)
    return ask_ms


def run(problem: Problem, name: str, seed: int, evals: int, batch: int, every: int) -> tuple[Curve, float]:
    """One run; its curve and the optimizer's seconds (wall time less evaluation)."""
    curve = Curve(problem, every, evals)
    start = time.perf_counter()
    if name in PEERS:
        run_peer(name, problem, curve, seed, evals)
    else:
        run_ours(problem, name, seed, evals, batch, curve)
    return curve, time.perf_counter() - start - curve.eval_s


def _ci(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    return T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def _mean_curve(runs: list[list[float]]) -> list[float]:
    width = max(len(c) for c in runs)
    return [statistics.mean(c[min(i, len(c) - 1)] for c in runs) for i in range(width)]


def _reach(mean: list[float], target: float, every: int) -> int | None:
    """Evaluations after which the mean curve first reaches `target` (to rounding), or None."""
    for i, value in enumerate(mean):
        if value >= target - 1e-12:
            return (i + 1) * every
    return None


def time_asks(problem: Problem, names: list[str], trials: int, batch: int) -> list[dict[str, Any]]:
    """Median optimizer ms per asked config around 100 and around `trials` trials (one run each)."""
    rows = []
    for name in names:
        curve = Curve(problem, trials, trials)
        ask_ms = run_ours(problem, name, 0, trials, batch, curve)
        per_ask = len(ask_ms)
        near = {
            n: ask_ms[max(0, n // batch - 5) : n // batch + 5] for n in (100, min(trials, per_ask * batch))
        }
        rows.append(
            {
                "strategy": name,
                "trials": curve.n,
                "ms_at_100": statistics.median(near[100]) if near[100] else math.nan,
                "ms_at_end": statistics.median(near[max(near)]),
                "loadavg": os.getloadavg()[0],
            }
        )
        print(f"timing {name}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spaces", nargs="+", default=list(BENCH_SPACES))
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--strategies", nargs="+", default=DEFAULT_STRATEGIES)
    parser.add_argument("--default", default="tpe-evolution", help="the strategy the goal table judges")
    parser.add_argument("--seeds", type=int, help="default 3 (--quick: 1)")
    parser.add_argument("--evals", type=int, help="default 300 (--quick: 40)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--timing-trials", type=int, help="default 1000 (--quick: 0, no ms-per-ask table)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 40 evaluations, no timing")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search_quality"))
    parser.add_argument(
        "--report", action="store_true", help="print the tables of every summary*.json in --out; run nothing"
    )
    args = parser.parse_args(argv)
    for name, full, quick in (("seeds", 3, 1), ("evals", 300, 40), ("timing_trials", 1000, 0)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.report:
        return report(args)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()}, "problems": {}}
    for space_name in args.spaces:
        values = SpaceValues(get_space(space_name, **BENCH_SPACES[space_name]))
        for family_name in args.families:
            problem = Problem(values, FAMILIES[family_name])
            key = f"{space_name}/{family_name}"
            curves: dict[str, list[list[float]]] = {}
            rows = []
            for name in args.strategies:
                runs, optimizer_s = [], []
                for seed in range(args.seeds):
                    curve, seconds = run(problem, name, seed, args.evals, args.batch, args.every)
                    runs.append(curve.points or [curve.hv()])
                    optimizer_s.append(seconds)
                curves[name] = runs
                finals = [c[-1] for c in runs]
                rows.append(
                    {
                        "strategy": name,
                        "finals": finals,
                        "hv_mean": statistics.mean(finals),
                        "hv_ci95": _ci(finals),
                        "optimizer_s": statistics.median(optimizer_s),
                        "loadavg": os.getloadavg()[0],
                    }
                )
                print(
                    f"{key:40s} {name:14s} hv {rows[-1]['hv_mean']:.4f} ± {rows[-1]['hv_ci95']:.4f} "
                    f"optimizer {rows[-1]['optimizer_s']:.1f} s/run (load {rows[-1]['loadavg']:.1f})",
                    file=sys.stderr,
                    flush=True,
                )
            means = {name: _mean_curve(runs) for name, runs in curves.items()}
            target = means["optuna-nsga2"][-1] if "optuna-nsga2" in means else None
            for row in rows:
                row["evals_to_optuna_nsga2"] = (
                    _reach(means[row["strategy"]], target, args.every) if target is not None else None
                )
            results["problems"][key] = rows
            stem = f"{space_name}__{family_name}"
            with open(args.out / f"{stem}_curves.csv", "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["evaluations", *means])
                for i in range(max(len(m) for m in means.values())):
                    writer.writerow(
                        [(i + 1) * args.every, *(f"{m[min(i, len(m) - 1)]:.5f}" for m in means.values())]
                    )
            line_chart(args.out / f"{stem}_curves.png", means)
    if args.timing_trials:
        space_name = args.spaces[0]
        problem = Problem(
            SpaceValues(get_space(space_name, **BENCH_SPACES[space_name])), FAMILIES["torch-macs"]
        )
        results["timing"] = {
            "space": space_name,
            "rows": time_asks(problem, TIMED, args.timing_trials, args.batch),
        }
    results["seconds"] = time.perf_counter() - started
    (args.out / f"summary__{'+'.join(args.spaces)}.json").write_text(json.dumps(results, indent=1))
    print_tables(results, args)
    return 0


def report(args: argparse.Namespace) -> int:
    """Merge the summaries of runs made separately (e.g. one process per space) and print them."""
    merged: dict[str, Any] = {"problems": {}, "seconds": 0.0}
    for path in sorted(args.out.glob("summary*.json")):
        part = json.loads(path.read_text())
        merged["problems"].update(part["problems"])
        merged["seconds"] = max(merged["seconds"], part["seconds"])
        merged.setdefault("timing", part.get("timing"))
        settings = part["settings"]
    if not merged["problems"]:
        print(f"no summary*.json in {args.out}", file=sys.stderr)
        return 2
    if merged["timing"] is None:
        del merged["timing"]
    for name in ("seeds", "evals", "batch"):
        setattr(args, name, int(settings[name]))
    print_tables(merged, args)
    return 0


def print_goal(results: dict[str, Any], name: str, evals: int) -> None:
    """The issue's goal for strategy `name`: final HV >= the best peer's, and plain Optuna NSGA-II's
    final HV reached within 60% of the evaluations."""
    lines = []
    for key, rows in results["problems"].items():
        by_name = {r["strategy"]: r for r in rows}
        peers = [r for r in rows if r["strategy"] in PEERS]
        if name not in by_name or not peers:
            continue
        mine, best = by_name[name], max(peers, key=lambda r: r["hv_mean"])
        reach = mine["evals_to_optuna_nsga2"]
        fast = reach is not None and reach <= 0.6 * evals
        lines.append(
            f"| {key} | {mine['hv_mean']:.4f} | {best['strategy']} | {best['hv_mean']:.4f} "
            f"| {'yes' if mine['hv_mean'] >= best['hv_mean'] else 'no'} | {reach or 'never'} "
            f"| {'yes' if fast else 'no'} |"
        )
    if not lines:
        return
    print(f"\n### goal: `{name}` against the best peer\n")
    print(
        "| problem | its HV | best peer | peer's HV | >= best peer "
        "| evals to Optuna NSGA-II's final | <= 60% |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(lines))


def print_tables(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\nseeds={args.seeds} evaluations={args.evals} batch={args.batch}; {results['seconds'] / 60:.1f} min"
    )
    for key, rows in results["problems"].items():
        print(f"\n### {key}\n")
        print(
            "| strategy | final HV (mean ± 95% CI) | evals to reach Optuna NSGA-II's final HV "
            "| optimizer s/run |"
        )
        print("|---|---|---|---|")
        for r in sorted(rows, key=lambda r: -r["hv_mean"]):
            reach = r["evals_to_optuna_nsga2"]
            print(
                f"| {r['strategy']} | {r['hv_mean']:.4f} ± {r['hv_ci95']:.4f} | {reach or 'never'} "
                f"| {r['optimizer_s']:.2f} (load {r['loadavg']:.1f}) |"
            )
    for mine_name in dict.fromkeys([args.default, *OURS]):
        print_goal(results, mine_name, args.evals)
    if "timing" in results:
        print(f"\n### optimizer ms per asked config ({results['timing']['space']}, torch-macs)\n")
        print("| strategy | trials | ms/ask near 100 trials | ms/ask near the last trial | load average |")
        print("|---|---|---|---|---|")
        for r in results["timing"]["rows"]:
            print(
                f"| {r['strategy']} | {r['trials']} | {r['ms_at_100']:.2f} | {r['ms_at_end']:.2f} "
                f"| {r['loadavg']:.1f} |"
            )


if __name__ == "__main__":
    sys.exit(main())
