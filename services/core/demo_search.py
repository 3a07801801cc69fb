"""A synthetic finished search of any size, to see (and test) the dashboard at 100,000 trials without
running one: `python -m services.core.demo_search --trials 100000` (database: `NAS_DATABASE_URL`).

Configs are real subnets of EfficientFormerV2 at 32 px or of another space (a pool of sampled ones,
reused); the objective values are drawn, not measured: a latency/params trade-off with noise, a `params`
constraint that some trials violate, and a few failed trials. The stored front is the exact front of
the feasible trials.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from nas.pareto import non_dominated
from search_spaces import config_id, get_space
from services.core.db import SearchRow, SearchStatus, TrialRow, make_engine, new_search_id
from services.core.migrations import init_db
from services.settings import get_settings

LATENCY = "latency:host-cpu-torch"
PARAMS_BOUND = 6.0e6
_CHUNK = 5000


def insert_synthetic_search(
    engine: Engine,
    *,
    trials: int,
    seed: int = 0,
    name: str = "synthetic",
    failed_share: float = 0.01,
    space: str = "efficientformerv2",
    space_options: dict[str, Any] | None = None,
) -> str:
    """Store a finished search with `trials` synthetic trials over (latency, params) of sampled
    subnets of `space` (default EfficientFormerV2 at 32 px); its id."""
    rng = np.random.default_rng(seed)
    if space_options is None:
        space_options = {"resolution": 32, "num_classes": 10} if space == "efficientformerv2" else {}
    sampled = get_space(space, **space_options)
    pool = [sampled.sample(rng) for _ in range(min(256, max(1, trials)))]
    pool_ids = [config_id(c) for c in pool]
    latency = rng.uniform(1.0, 20.0, trials)
    params = 2.0e6 * (1.0 + 18.0 / (latency + 1.0)) * rng.lognormal(0.0, 0.35, trials)
    failed = rng.random(trials) < failed_share
    feasible = params <= PARAMS_BOUND
    candidates = np.flatnonzero(~failed & feasible)
    front = candidates[non_dominated(np.stack([latency[candidates], params[candidates]], axis=1))]
    on_front = np.zeros(trials, dtype=bool)
    on_front[front] = True

    search_id = new_search_id()
    now = datetime.now(UTC)
    spec = {
        "name": name,
        "space": space,
        "space_options": space_options,
        "objectives": [LATENCY, "params"],
        "constraints": [f"params <= {PARAMS_BOUND:g}"],
        "strategy": "random",
        "strategy_params": {},
        "budget": {"trials": trials, "seconds": None, "parallelism": 1},
        "seed": seed,
    }
    with engine.begin() as conn:
        conn.execute(
            sa.insert(SearchRow.__table__),
            {
                "id": search_id,
                "name": name,
                "spec": spec,
                "status": SearchStatus.SUCCEEDED.value,
                "status_message": f"succeeded: {trials} synthetic trials, front of {len(front)}",
                "cancel_requested": False,
                "trials_done": trials,
                "trials_failed": int(failed.sum()),
                "budget_trials": trials,
                "front_size": len(front),
                "elapsed_s": float(trials) * 0.01,
                "created_at": now,
                "started_at": now,
                "finished_at": now,
                "updated_at": now,
            },
        )
    for start in range(0, trials, _CHUNK):
        rows = []
        for i in range(start, min(trials, start + _CHUNK)):
            k = i % len(pool)
            done = not failed[i]
            rows.append(
                {
                    "search_id": search_id,
                    "number": i,
                    "config": pool[k],
                    "config_id": pool_ids[k],
                    "state": "complete" if done else "failed",
                    "values": {LATENCY: float(latency[i]), "params": float(params[i])} if done else {},
                    "feasible": bool(feasible[i]) if done else True,
                    "metrics": {},
                    "error": None if done else "synthetic failure",
                    "duration_s": 0.01,
                    "finished_at": now + timedelta(milliseconds=i),
                    "on_front": bool(on_front[i]),
                }
            )
        with engine.begin() as conn:
            conn.execute(sa.insert(TrialRow.__table__), rows)
    return search_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database-url", default=None, help="default: NAS_DATABASE_URL")
    args = parser.parse_args()
    engine = make_engine(args.database_url or get_settings().database_url)
    init_db(engine)
    search_id = insert_synthetic_search(
        engine, trials=args.trials, seed=args.seed, name=f"synthetic-{args.trials}"
    )
    print(f"stored search {search_id} with {args.trials} trials; open /#/search/{search_id}")


if __name__ == "__main__":
    main()
