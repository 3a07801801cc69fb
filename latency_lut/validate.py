"""End-to-end measurement of whole subnets: the ground truth a device's table is judged by.

`sample_configs` draws distinct random subnets reproducibly; `measure_subnet` builds one with
`space.build` and times it with the same backend (and so the same runtime, threads and export) that
measured its blocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latency_lut.backends import MeasurementBackend, check_counts
from search_spaces import Config, SearchSpace, config_id

#: Draws per wanted subnet before `sample_configs` gives up on a small space.
_DRAWS_PER_CONFIG = 50


@dataclass(frozen=True)
class SubnetMeasurement:
    """One subnet timed end to end: its canonical config and id, block count and samples (ms)."""

    config: Config
    config_id: str
    n_blocks: int
    samples_ms: Sequence[float]

    @property
    def median_ms(self) -> float:
        return float(np.median(np.asarray(self.samples_ms, dtype=np.float64)))


def sample_configs(space: SearchSpace, n: int, *, seed: int = 0, exclude: Iterable[str] = ()) -> list[Config]:
    """`n` distinct random canonical configs (uniform per choice, as `space.sample`), none of whose
    ids is in `exclude`; fewer when the space has fewer distinct subnets left."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of subnets must be an integer >= 1, got {n!r}")
    rng = np.random.default_rng(seed)
    seen = set(exclude)
    configs: list[Config] = []
    for _ in range(n * _DRAWS_PER_CONFIG):
        config = space.sample(rng)
        cid = config_id(config)
        if cid in seen:
            continue
        seen.add(cid)
        configs.append(config)
        if len(configs) == n:
            break
    return configs


def measure_subnet(
    space: SearchSpace,
    config: Mapping[str, Any],
    backend: MeasurementBackend,
    *,
    warmup: int,
    repeats: int,
) -> SubnetMeasurement:
    """Build `config` with `space.build` and time it on `space.example_inputs()` with `backend`."""
    check_counts(warmup, repeats)
    canonical = space.canonicalize(config)
    module = space.build(canonical)
    samples = backend.measure(module, space.example_inputs(), warmup=warmup, repeats=repeats)
    return SubnetMeasurement(
        config=canonical,
        config_id=config_id(canonical),
        n_blocks=len(space.blocks(canonical)),
        samples_ms=samples,
    )
