"""NNI interop: the space as NNI search-space JSON (always), and an NNI strategy exploring it (only
where the extra `nni` is installed; it is not in the project's environment, see docs/strategies.md)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from nas_testing import TinySpace

from nas.strategies.nni_adapter import explore_with_nni, from_nni_sample, nni_model_space, nni_search_space
from search_spaces import config_id, get_space, list_spaces

HAVE_NNI = importlib.util.find_spec("nni") is not None


@pytest.mark.parametrize("name", list_spaces())
def test_every_space_exports_as_nni_choices(name: str) -> None:
    space = get_space(name)
    exported = json.loads(json.dumps(nni_search_space(space)))
    assert list(exported) == list(space.choice_map)
    for choice in space.choice_map.values():
        assert exported[choice.name] == {"_type": "choice", "_value": list(choice.options)}
    rng = np.random.default_rng(0)
    for _ in range(5):
        sample = {k: v["_value"][int(rng.integers(len(v["_value"])))] for k, v in exported.items()}
        assert from_nni_sample(space, sample) == space.canonicalize(sample)


def test_nni_sample_canonicalises_irrelevant_entries(tiny_space: TinySpace) -> None:
    a = from_nni_sample(
        tiny_space, {"depth": 1, "width": 8, "block0.ratio": 2, "block1.ratio": 2, "block2.ratio": 4}
    )
    b = from_nni_sample(
        tiny_space, {"depth": 1, "width": 8, "block0.ratio": 2, "block1.ratio": 4, "block2.ratio": 2}
    )
    assert config_id(a) == config_id(b)


@pytest.mark.skipif(HAVE_NNI, reason="nni is installed here; the missing-extra message cannot be shown")
def test_missing_nni_names_the_extra(tiny_space: TinySpace) -> None:
    with pytest.raises(ImportError, match=r"extra 'nni' \(pip install nni==3.0"):
        nni_model_space(tiny_space)


@pytest.mark.skipif(not HAVE_NNI, reason="the extra 'nni' (nni 3.0 + pytorch_lightning) is not installed")
def test_nni_regularized_evolution_explores_the_space(tiny_space: TinySpace) -> None:
    from nni.nas.strategy import RegularizedEvolution

    def score(config: dict) -> float:
        return -float(sum(b.params for b in tiny_space.blocks(config)))

    found = explore_with_nni(
        tiny_space, RegularizedEvolution(population_size=4, sample_size=2), score, max_models=12
    )
    assert len(found) == 12
    assert all(tiny_space.canonicalize(c) == c for c, _ in found)
    assert found[0][1] == max(s for _, s in found)
