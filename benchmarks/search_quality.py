"""Which strategy finds the best front? Hypervolume after N evaluations, per space, over seeds.

The benchmark problem of each space is fixed and cheap, so the numbers measure the strategies and not
the evaluator: three objectives per subnet, all from its blocks (`space.blocks`):
- `latency:bench-synthetic` (minimise): a committed-by-construction synthetic LUT, the sum over the
  subnet's blocks of `(0.5 + h(key)) * log1p(params) / 10` ms, where `h(key)` in [0, 1) is the first
  16 bits of the block key's hash: fixed, but disagreeing with the parameter count block by block;
- `params` (minimise): the subnet's parameter count;
- `proxy:bench` (maximise): a fixed proxy with diminishing returns, the sum over blocks of
  `w(kind) * log1p(params) ** 0.75`, `w(kind)` in [0.5, 1.5) from the hash of the block kind.
Hypervolumes use the runner's convention (`nas.runner`): points normalised by the space's smallest
and largest subnets, reference point 1.1 per objective (so the most a 3-objective front could score
is 1.331).

Each strategy asks in batches of `--batch` (as the runner does with that parallelism) until
`--evals` distinct subnets are evaluated; `optuna-nsga2` is a plain Optuna study (`NSGAIISampler`
with its defaults, `study.optimize`, every proposal evaluated, duplicates included), which is what a
user would run instead of this project. Output: a table (mean final hypervolume, 95% interval from
the t distribution over seeds, evaluations to reach plain Optuna's mean final hypervolume) and
per-space curves of the mean hypervolume after every `--every` evaluations, as CSV and as PNG
(drawn by `benchmarks/_png.py`: matplotlib is not in the project's environment), under `--out`.

    python benchmarks/search_quality.py                         # 3 spaces x 5 seeds x 300 evaluations
    python benchmarks/search_quality.py --spaces efficientformerv2 --seeds 2 --evals 100
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from _png import line_chart

from nas import Trial, TrialState
from nas.objectives import Objective, parse_constraint
from nas.pareto import Normalizer, ParetoFront, hypervolume
from nas.strategies import make_strategy
from search_spaces import BlockSpec, Config, SearchSpace, config_id, get_space

DEVICE = "bench-synthetic"
OBJECTIVES = [
    Objective(f"latency:{DEVICE}", "minimize"),
    Objective("params", "minimize"),
    Objective("proxy:bench", "maximize"),
]
SPACES = {
    "efficientformerv2": {},
    "unet": {},
    "temporal": {},
}
STRATEGIES = ["random", "nsga2", "nsga3", "tpe", "evolution", "optuna-nsga2"]
#: Single-path strategies, run only where they make sense, with their params.
EXTRA = {
    "efficientformerv2": {"slimming": {"quality": "proxy:bench"}},
    "unet": {"evolving": {"quality": "proxy:bench", "base": "sd15"}},
}
# t quantiles (two-sided 95%) for n - 1 degrees of freedom.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _unit(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:4], 16) / 0x10000


class Problem:
    """The fixed benchmark problem of one space (see the module docstring)."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self._cache: dict[str, dict[str, float]] = {}
        anchors = [self.point(self.values(space.smallest())), self.point(self.values(space.largest()))]
        self.normalizer = Normalizer.from_points(anchors)

    def values(self, config: Config) -> dict[str, float]:
        cid = config_id(config)
        if cid not in self._cache:
            blocks: list[BlockSpec] = self.space.blocks(config)
            latency = sum((0.5 + _unit(b.key)) * math.log1p(b.params) / 10 for b in blocks)
            quality = sum((0.5 + _unit(b.kind)) * math.log1p(b.params) ** 0.75 for b in blocks)
            self._cache[cid] = {
                f"latency:{DEVICE}": latency,
                "params": float(sum(b.params for b in blocks)),
                "proxy:bench": quality,
            }
        return self._cache[cid]

    def point(self, values: dict[str, float]) -> list[float]:
        return [o.to_min(values[o.name]) for o in OBJECTIVES]


class Curve:
    """Hypervolume of the front after each evaluation (sampled every `every`)."""

    def __init__(self, problem: Problem, every: int):
        self.problem, self.every = problem, every
        self.front = ParetoFront(len(OBJECTIVES))
        self.n = 0
        self.points: list[float] = []

    def add(self, values: dict[str, float]) -> None:
        self.front.add(self.n, self.problem.point(values))
        self.n += 1
        if self.n % self.every == 0:
            self.points.append(self.hv())

    def hv(self) -> float:
        if not len(self.front):
            return 0.0
        return hypervolume(self.problem.normalizer(self.front.points), [1.1] * len(OBJECTIVES))


def run_strategy(
    problem: Problem, name: str, params: dict[str, Any], seed: int, evals: int, batch: int, every: int
) -> Curve:
    curve = Curve(problem, every)
    space = problem.space
    if name == "optuna-nsga2":
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            directions=[o.direction for o in OBJECTIVES], sampler=optuna.samplers.NSGAIISampler(seed=seed)
        )
        choices = list(space.choice_map.values())

        def objective(trial: optuna.Trial) -> list[float]:
            raw = {c.name: trial.suggest_categorical(c.name, c.options) for c in choices}
            values = problem.values(space.canonicalize(raw))
            curve.add(values)
            return [values[o.name] for o in OBJECTIVES]

        study.optimize(objective, n_trials=evals)
        return curve
    constraints = []
    if name == "evolving":
        target = 0.5 * problem.values(space.canonicalize(params["base"]))[f"latency:{DEVICE}"]
        constraints = [
            parse_constraint(f"latency:{DEVICE} <= {target:.6g}", [DEVICE], proxies={"bench": "maximize"})
        ]
    strategy = make_strategy(name, space, OBJECTIVES, constraints, seed=seed, **params)
    number = 0
    while curve.n < evals:
        configs = strategy.ask(min(batch, evals - curve.n))
        if not configs:
            break
        trials = []
        for config in configs:
            values = problem.values(config)
            curve.add(values)
            trials.append(Trial(number, config, config_id(config), TrialState.COMPLETE, values))
            number += 1
        strategy.tell(trials)
    return curve


def _ci(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    return T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def _reach(curves: list[list[float]], target: float, every: int) -> str:
    """Evaluations after which the mean curve first reaches `target` (to rounding), or "never"."""
    width = max(len(c) for c in curves)
    for i in range(width):
        if statistics.mean(c[min(i, len(c) - 1)] for c in curves) >= target - 1e-12:
            return str((i + 1) * every)
    return "never"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spaces", nargs="+", default=list(SPACES))
    parser.add_argument("--strategies", nargs="+", default=None)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--evals", type=int, default=300)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search_quality"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    for space_name in args.spaces:
        problem = Problem(get_space(space_name, **SPACES.get(space_name, {})))
        runs = {name: {} for name in args.strategies or STRATEGIES}
        if args.strategies is None:
            runs.update(EXTRA.get(space_name, {}))
        curves: dict[str, list[list[float]]] = {}
        seconds: dict[str, float] = {}
        for name, params in runs.items():
            start = time.perf_counter()
            curves[name] = []
            for seed in range(args.seeds):
                curve = run_strategy(problem, name, dict(params), seed, args.evals, args.batch, args.every)
                curves[name].append(curve.points or [curve.hv()])
            seconds[name] = (time.perf_counter() - start) / args.seeds
            finals = [c[-1] for c in curves[name]]
            print(
                f"{space_name:18s} {name:13s} hv {statistics.mean(finals):.4f} ± {_ci(finals):.4f} "
                f"({seconds[name]:.1f} s/seed)",
                file=sys.stderr,
                flush=True,
            )
        target = statistics.mean(c[-1] for c in curves["optuna-nsga2"]) if "optuna-nsga2" in curves else None
        rows = []
        for name, runs_ in curves.items():
            finals = [c[-1] for c in runs_]
            rows.append(
                {
                    "strategy": name,
                    "hv_mean": statistics.mean(finals),
                    "hv_ci95": _ci(finals),
                    "evals": max(len(c) for c in runs_) * args.every,
                    "evals_to_optuna_final": _reach(runs_, target, args.every)
                    if target is not None
                    else "n/a",
                    "seconds_per_run": seconds[name],
                }
            )
        summary[space_name] = rows
        width = max(len(c) for runs_ in curves.values() for c in runs_)
        with open(args.out / f"{space_name}_curves.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["evaluations", *curves])
            means = {
                name: [statistics.mean(c[min(i, len(c) - 1)] for c in runs_) for i in range(width)]
                for name, runs_ in curves.items()
            }
            for i in range(width):
                writer.writerow([(i + 1) * args.every, *(f"{means[name][i]:.5f}" for name in curves)])
        legend = line_chart(args.out / f"{space_name}_curves.png", means)
        print(f"{space_name}_curves.png: {legend}", file=sys.stderr)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nseeds={args.seeds} evaluations={args.evals} batch={args.batch}")
    for space_name, rows in summary.items():
        print(f"\n### {space_name}\n")
        print(
            "| strategy | final HV (mean ± 95% CI) | evaluations to reach Optuna NSGA-II's final HV | s/run |"
        )
        print("|---|---|---|---|")
        for r in sorted(rows, key=lambda r: -r["hv_mean"]):
            print(
                f"| {r['strategy']} | {r['hv_mean']:.4f} ± {r['hv_ci95']:.4f} | {r['evals_to_optuna_final']} "
                f"| {r['seconds_per_run']:.1f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
