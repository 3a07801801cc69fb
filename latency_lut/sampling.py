"""Which whole subnets a device should measure end to end next (its calibration subnets).

nn-Meter and LitePred sample adaptively: they measure where their predictors are least sure rather
than at random. Here, among candidate subnets, `choose_subnets` takes those the device's learned
predictors disagree on most (the relative spread of their predictions); before any learned predictor
exists, those that spread furthest over the block groups the predictors are fitted on (farthest-point
sampling from the largest), so the first fits see the space's range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from latency_lut.predictors import LatencyPredictor, group_of
from search_spaces import BlockSpec, SearchSpace


def choose_subnets(
    space: SearchSpace,
    pool: Sequence[Mapping[str, Any]],
    n: int,
    predictors: Mapping[str, LatencyPredictor],
) -> list[tuple[int, str]]:
    """Indexes into `pool` of the `n` subnets to measure, each with why it was chosen.

    `predictors` are a device's candidates (`Selection.predictors`); the learned ones and the plain
    block sum judge the disagreement."""
    blocks = [space.blocks(space.canonicalize(config)) for config in pool]
    learned = [p for name, p in predictors.items() if name.startswith("learned")]
    if learned and "block_sum" in predictors:
        spread = np.array([_spread([*learned, predictors["block_sum"]], subnet) for subnet in blocks])
        order = np.argsort(-spread, kind="stable")[:n]
        return [(int(i), f"its predictions disagree by {spread[i]:.1%}") for i in order]
    reason = "spreads the first measured subnets over the space's block groups"
    return [(i, reason) for i in _farthest_points(_group_counts(blocks), n)]


def _spread(predictors: Sequence[LatencyPredictor], blocks: Sequence[BlockSpec]) -> float:
    estimates = [p.predict(blocks) for p in predictors]
    totals = np.array([e.total_ms for e in estimates if e.complete])
    if totals.size < 2 or totals.mean() <= 0:
        return 0.0
    return float(totals.std() / totals.mean())


def _group_counts(subnets: Sequence[Sequence[BlockSpec]]) -> np.ndarray:
    """Each subnet's block counts per group (kind and resolution), columns scaled to [0, 1]."""
    groups: dict[str, int] = {}
    for blocks in subnets:
        for spec in blocks:
            groups.setdefault(group_of(spec, "group"), len(groups))
    counts = np.zeros((len(subnets), max(1, len(groups))))
    for i, blocks in enumerate(subnets):
        for spec in blocks:
            counts[i, groups[group_of(spec, "group")]] += 1
    scale = counts.max(axis=0)
    scale[scale == 0] = 1.0
    return counts / scale


def _farthest_points(points: np.ndarray, n: int) -> list[int]:
    """`n` rows of `points` that spread out: the largest first, then each the farthest from those chosen."""
    if len(points) == 0:
        return []
    chosen = [int(np.argmax(points.sum(axis=1)))]
    distance = np.linalg.norm(points - points[chosen[0]], axis=1)
    distance[chosen[0]] = -1.0
    while len(chosen) < min(n, len(points)):
        nxt = int(np.argmax(distance))
        chosen.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(points - points[nxt], axis=1))
        distance[chosen] = -1.0  # never twice, even among equal points
    return chosen
