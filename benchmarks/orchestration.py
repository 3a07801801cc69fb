"""How many trials per second can the runner orchestrate? Next to Optuna with its SQLite storage.

The evaluation is trivial on purpose (parameters and MACs of an EfficientFormerV2 subnet at 32 px,
summed over its blocks, MACs cached per block key after a warm-up run), so the numbers measure the
loop: ask the strategy, evaluate, record the trial through the store, tell, update the front and
hypervolume. Rows:
- the runner with in-process evaluation (`use_ray=False`) and `services.core.trial_store.SqlTrialStore` on a
  SQLite file (WAL, the service's pragmas), per strategy; the same with `PRAGMA synchronous=NORMAL`
  (the usual setting with WAL: a commit no longer waits for fsync; a power cut may lose the last
  commits but never corrupts the file); and with the in-memory store;
- the runner on a local Ray actor pool (`use_ray=True`, `--ray-parallelism` actors), SQLite store;
  its time includes starting the actors;
- Optuna: `study.optimize` with `RandomSampler` / `NSGAIISampler` and `storage="sqlite:///..."`,
  the same evaluation per trial.
Reported: trials/s over the whole run, the share of the time spent in evaluation itself, and
trials/s of the loop alone (evaluation time taken out).

    python benchmarks/orchestration.py                     # 2,000 runner trials, 200 Optuna trials
    python benchmarks/orchestration.py --trials 500 --optuna-trials 100 --no-ray
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import event

from nas import MemoryTrialStore, SearchSpec, resolve
from nas.evaluate import SubnetEvaluator
from nas.runner import Runner, init_ray
from nas.trial_store import TrialStore
from services.core.db import SearchRow, make_engine
from services.core.migrations import init_db
from services.core.search_queue import SearchQueue
from services.core.trial_store import SqlTrialStore

SPACE = {"space": "efficientformerv2", "space_options": {"resolution": 32, "num_classes": 10}}
OBJECTIVES = ["params", "macs"]


def run_runner(
    store: TrialStore, search_id: str, strategy: str, trials: int, parallelism: int, use_ray: bool
) -> tuple[float, float]:
    spec = SearchSpec(
        **SPACE,
        objectives=OBJECTIVES,
        strategy=strategy,
        budget={"trials": trials, "parallelism": parallelism},
        seed=0,
    )
    runner = Runner(resolve(spec, []), search_id, store, {}, use_ray=use_ray)
    start = time.perf_counter()
    result = runner.run()
    elapsed = time.perf_counter() - start
    assert result.state == "succeeded" and result.n_trials == trials, result
    evaluation = sum(t.duration_s for t in store.trials(search_id))
    return elapsed, evaluation


def run_optuna(path: Path, sampler: optuna.samplers.BaseSampler, trials: int) -> tuple[float, float]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = SearchSpec(**SPACE, objectives=OBJECTIVES)
    resolved = resolve(spec, [])
    space = resolved.space
    evaluator = SubnetEvaluator(space.name, space.options, resolved.objectives, {}, space=space)
    study = optuna.create_study(
        storage=f"sqlite:///{path}", directions=["minimize", "minimize"], sampler=sampler
    )
    choices = list(space.choice_map.values())
    spent = 0.0

    def objective(trial: optuna.Trial) -> list[float]:
        nonlocal spent
        config = space.canonicalize({c.name: trial.suggest_categorical(c.name, c.options) for c in choices})
        outcome = evaluator.evaluate(config)
        spent += outcome.duration_s
        return [outcome.values[o] for o in OBJECTIVES]

    start = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    return time.perf_counter() - start, spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--optuna-trials", type=int, default=200)
    parser.add_argument("--parallelism", type=int, default=4)
    parser.add_argument("--ray-parallelism", type=int, default=2)
    parser.add_argument("--strategies", nargs="+", default=["random", "evolution", "nsga2"])
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args(argv)
    rows: list[tuple[str, str, int, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'nas.db'}")
        init_db(engine)
        queue = SearchQueue(engine)
        sql = SqlTrialStore(engine)

        def new_search(strategy: str) -> str:
            spec = SearchSpec(**SPACE, objectives=OBJECTIVES, strategy=strategy)
            row: SearchRow = queue.submit(spec)
            return row.id

        run_runner(MemoryTrialStore(), "warm-up", "random", 300, args.parallelism, False)  # MACs cache
        for strategy in args.strategies:
            elapsed, spent = run_runner(
                sql, new_search(strategy), strategy, args.trials, args.parallelism, False
            )
            rows.append(
                (f"runner, in-process, `{strategy}`", "SQLite (SqlTrialStore)", args.trials, elapsed, spent)
            )
            print(rows[-1], file=sys.stderr, flush=True)
        fast = make_engine(f"sqlite:///{Path(tmp) / 'nas-normal.db'}")
        event.listen(fast, "connect", lambda conn, _: conn.execute("PRAGMA synchronous=NORMAL"))
        init_db(fast)
        spec = SearchSpec(**SPACE, objectives=OBJECTIVES)
        elapsed, spent = run_runner(
            SqlTrialStore(fast),
            SearchQueue(fast).submit(spec).id,
            "random",
            args.trials,
            args.parallelism,
            False,
        )
        rows.append(
            ("runner, in-process, `random`", "SQLite, synchronous=NORMAL", args.trials, elapsed, spent)
        )
        elapsed, spent = run_runner(MemoryTrialStore(), "mem", "random", args.trials, args.parallelism, False)
        rows.append(("runner, in-process, `random`", "memory", args.trials, elapsed, spent))
        if not args.no_ray:
            init_ray(num_cpus=args.ray_parallelism)
            elapsed, spent = run_runner(
                sql, new_search("random"), "random", args.trials, args.ray_parallelism, True
            )
            rows.append(
                (
                    f"runner, Ray ({args.ray_parallelism} actors), `random`",
                    "SQLite (SqlTrialStore)",
                    args.trials,
                    elapsed,
                    spent,
                )
            )
            print(rows[-1], file=sys.stderr, flush=True)
        samplers: list[tuple[str, Any]] = [
            ("random", optuna.samplers.RandomSampler(seed=0)),
            ("nsga2", optuna.samplers.NSGAIISampler(seed=0)),
        ]
        for i, (name, sampler) in enumerate(samplers):
            elapsed, spent = run_optuna(Path(tmp) / f"optuna{i}.db", sampler, args.optuna_trials)
            rows.append(
                (
                    f"Optuna `study.optimize`, {name}",
                    "SQLite (RDBStorage)",
                    args.optuna_trials,
                    elapsed,
                    spent,
                )
            )
            print(rows[-1], file=sys.stderr, flush=True)
    print("| loop | storage | trials | seconds | trials/s | evaluation share | trials/s without evaluation |")
    print("|---|---|---|---|---|---|---|")
    for loop, storage, n, elapsed, spent in rows:
        # With several actors, evaluations overlap: their summed time can exceed the wall time.
        loop_only = f"{n / (elapsed - spent):.0f}" if spent < elapsed else "n/a"
        print(
            f"| {loop} | {storage} | {n} | {elapsed:.1f} | {n / elapsed:.0f} | {spent / elapsed:.0%} "
            f"| {loop_only} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
