"""NNI 3.0 interop: a space as `nni.mutable` choices, and an NNI strategy exploring it.

`nni_search_space(space)` exports the space's choices in NNI's search-space JSON format
(`{"<choice>": {"_type": "choice", "_value": [...]}}`), which `nni.mutable` and NNI's HPO tuners
read; it needs no NNI. `nni_model_space(space)` builds the `nni.mutable.MutableDict` of
`nni.mutable.Categorical`s itself, and `explore_with_nni` lets an NNI strategy (e.g.
`nni.nas.strategy.RegularizedEvolution`) drive the search in-process through NNI's
`SequentialExecutionEngine`, scoring each sample with a function of the canonical config. Both need
the extra `nni` (`pip install nni==3.0 pytorch_lightning`); see docs/strategies.md for what works
with current PyTorch and what does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from search_spaces import Config, SearchSpace


def nni_search_space(space: SearchSpace) -> dict[str, dict[str, Any]]:
    """The space's choices as NNI search-space JSON: one `choice` per choice, options in order."""
    return {c.name: {"_type": "choice", "_value": list(c.options)} for c in space.choice_map.values()}


def from_nni_sample(space: SearchSpace, sample: dict[str, Any]) -> Config:
    """The canonical config of an NNI sample (a dict choice -> value)."""
    return space.canonicalize({name: sample[name] for name in space.choice_map if name in sample})


def _nni() -> Any:
    try:
        import nni
        import nni.mutable
    except ImportError as exc:
        raise ImportError(
            f"NNI interop needs the extra 'nni' (pip install nni==3.0 pytorch_lightning): {exc}"
        ) from None
    return nni


def nni_model_space(space: SearchSpace) -> Any:
    """The space as an `nni.mutable.MutableDict` of `Categorical`s labelled by choice name."""
    nni = _nni()

    class _Sample(dict):
        """A frozen sample; NNI keeps a weak reference to the model it evaluates, which a plain
        dict does not allow."""

    class _SpaceDict(nni.mutable.MutableDict):
        def freeze(self, sample: dict[str, Any]) -> _Sample:
            return _Sample(super().freeze(sample))

    return _SpaceDict(
        {c.name: nni.mutable.Categorical(list(c.options), label=c.name) for c in space.choice_map.values()}
    )


def explore_with_nni(
    space: SearchSpace,
    strategy: Any,
    score: Callable[[Config], float],
    *,
    max_models: int,
) -> list[tuple[Config, float]]:
    """Run the NNI strategy `strategy` (e.g. `RegularizedEvolution(population_size=..)`) over
    `space` for `max_models` evaluations; `score(config)` is maximised. Returns (canonical config,
    score) per evaluated model, best first."""
    nni = _nni()
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.execution import SequentialExecutionEngine
    from nni.nas.space import RawFormatModelSpace

    def evaluate(model: dict[str, Any]) -> None:
        nni.report_final_result(float(score(from_nni_sample(space, model))))

    model_space = RawFormatModelSpace(nni_model_space(space), FunctionalEvaluator(evaluate))
    strategy.initialize(model_space, SequentialExecutionEngine(max_model_count=max_models))
    strategy.run()
    return [(from_nni_sample(space, m.sample), float(m.metric)) for m in strategy.list_models()]
