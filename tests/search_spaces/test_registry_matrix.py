"""Contract tests run against every registered search space and every reference config.

Registering a space puts it into this matrix (timm-style): nothing here names a particular space.
Full-size models are only counted (built on the meta device, no memory, no forward); blocks run at
each space's smallest size options.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch

from search_spaces import (
    BlockSpec,
    ConfigError,
    OptionError,
    SearchSpace,
    config_id,
    count_params,
    get_space,
    list_spaces,
    space_class,
)

SPACES = list_spaces()
REFERENCES = [(space, ref) for space in SPACES for ref in space_class(space).reference_configs()]
SIZE_WORDS = ("resolution", "size", "frames")
SCALE_WORDS = ("scale",)


def small_options(name: str) -> dict[str, Any]:
    """The smallest allowed value of every integer size option (resolution, latent size, frames, ...)
    and of every float scale option (width scale)."""
    options: dict[str, Any] = {}
    for spec in space_class(name).option_specs():
        if spec.minimum is None:
            continue
        if spec.type is int and any(w in spec.name for w in SIZE_WORDS):
            options[spec.name] = int(spec.minimum)
        elif spec.type is float and any(w in spec.name for w in SCALE_WORDS):
            options[spec.name] = float(spec.minimum)
    try:
        space_class(name)(**options)
    except OptionError:
        return {}
    return options


def random_configs(space: SearchSpace, n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]


def assert_valid_canonical(space: SearchSpace, config: dict[str, Any]) -> None:
    assert list(config) == list(space.choice_map), "a canonical config lists every choice, in order"
    for name, value in config.items():
        options = space.choice_map[name].options
        assert value in options or value == 0, f"{name}={value!r} not in {options}"
    assert space.canonicalize(config) == config
    json.dumps(config)


@pytest.fixture(scope="module", params=SPACES)
def space(request: pytest.FixtureRequest) -> SearchSpace:
    return get_space(request.param)


@pytest.fixture(scope="module", params=SPACES)
def small_space(request: pytest.FixtureRequest) -> SearchSpace:
    return get_space(request.param, **small_options(request.param))


def test_registry_lists_every_space_with_reference_configs() -> None:
    assert SPACES, "no search space is registered"
    for name in SPACES:
        assert space_class(name).name == name
        assert space_class(name).reference_configs(), f"{name} has no reference configs"


@pytest.mark.parametrize(("space_name", "ref"), REFERENCES)
def test_reference_config_is_canonical_and_idempotent(space_name: str, ref: str) -> None:
    space = get_space(space_name)
    canonical = space.canonicalize(space.reference_configs()[ref])
    assert_valid_canonical(space, canonical)
    assert space.canonicalize(ref) == canonical
    assert space.canonicalize(space.canonicalize(canonical)) == canonical


def test_sample_mutate_crossover_give_valid_canonical_configs(space: SearchSpace) -> None:
    rng = np.random.default_rng(1)
    for _ in range(25):
        a, b = space.sample(rng), space.sample(rng)
        assert_valid_canonical(space, a)
        child = space.mutate(a, rng)
        assert_valid_canonical(space, child)
        if space.cardinality > 1:
            assert child != a, "mutate must change the subnet"
        assert_valid_canonical(space, space.crossover(a, b, rng))
        assert_valid_canonical(space, space.crossover(a, child, rng))


def test_extremes_and_describe(space: SearchSpace) -> None:
    assert_valid_canonical(space, space.smallest())
    assert_valid_canonical(space, space.largest())
    assert space.default_config() == space.largest()
    assert space.cardinality >= len(space.reference_configs())
    description = json.loads(json.dumps(space.describe()))
    assert [c["name"] for c in description["choices"]] == list(space.choice_map)
    assert int(description["cardinality"]) == space.cardinality


def test_config_id_is_equal_for_equal_subnets(space: SearchSpace) -> None:
    pairs = set()
    for config in random_configs(space, 20, seed=2):
        # Filling the entries the config makes irrelevant with any option names the same subnet.
        filled = {}
        for name, value in config.items():
            options = space.choice_map[name].options
            filled[name] = options[0] if value == 0 and 0 not in options else value
        shuffled = dict(reversed(list(config.items())))
        assert space.config_id(filled) == space.config_id(config) == config_id(config)
        assert space.config_id(shuffled) == config_id(config)
        pairs.add((config_id(config), json.dumps(config, sort_keys=True)))
    # One id per distinct canonical config and one config per id.
    assert len({i for i, _ in pairs}) == len({c for _, c in pairs}) == len(pairs)


@pytest.mark.parametrize(("space_name", "ref"), REFERENCES)
def test_encode_shape_and_range(space_name: str, ref: str) -> None:
    space = get_space(space_name)
    code = space.encode(ref)
    assert code.shape == (len(space.choice_map),)
    assert code.dtype == np.float32
    assert np.all(((code >= 0) & (code <= 1)) | (code == -1))
    assert not np.array_equal(space.encode(space.smallest()), space.encode(space.largest()))


@pytest.mark.parametrize(("space_name", "ref"), REFERENCES)
def test_block_params_add_up_to_build_at_full_size(space_name: str, ref: str) -> None:
    space = get_space(space_name)
    config = space.canonicalize(ref)
    with torch.device("meta"):
        model = space.build(config)
    assert sum(spec.params for spec in space.blocks(config)) == count_params(model)


@pytest.mark.parametrize(("space_name", "ref"), REFERENCES)
def test_block_params_add_up_to_build_at_small_size(space_name: str, ref: str) -> None:
    space = get_space(space_name, **small_options(space_name))
    config = space.canonicalize(ref)
    assert sum(spec.params for spec in space.blocks(config)) == count_params(space.build(config))


def test_unknown_choice_is_a_config_error_naming_it(space: SearchSpace) -> None:
    with pytest.raises(ConfigError) as info:
        space.canonicalize({**space.smallest(), "no_such_choice": 1})
    assert info.value.field == "no_such_choice"
    assert info.value.allowed == list(space.choice_map)
    assert "no_such_choice" in str(info.value)


def test_bad_choice_value_is_a_config_error_listing_options(space: SearchSpace) -> None:
    for name, choice in space.choice_map.items():
        with pytest.raises(ConfigError) as info:
            space.canonicalize({**space.largest(), name: "not-an-option"})
        assert info.value.field == name
        assert info.value.allowed == list(choice.options)
        assert name in str(info.value)


def test_non_mapping_config_is_a_config_error(space: SearchSpace) -> None:
    with pytest.raises(ConfigError) as info:
        space.canonicalize([1, 2, 3])  # type: ignore[arg-type]
    assert info.value.field == "config"
    with pytest.raises(ConfigError) as info:
        space.canonicalize("no-such-reference")
    assert info.value.allowed == sorted(space.reference_configs())


def test_unknown_or_bad_option_is_an_option_error(space: SearchSpace) -> None:
    cls = type(space)
    with pytest.raises(OptionError) as info:
        cls(no_such_option=1)
    assert info.value.field == "no_such_option"
    assert info.value.allowed == sorted(spec.name for spec in cls.option_specs())
    for spec in cls.option_specs():
        with pytest.raises(OptionError) as info:
            cls(**{spec.name: [1, 2]})
        assert info.value.field == spec.name
        assert spec.name in str(info.value)
        assert info.value.allowed


_KEYS_SCRIPT = """
import json
from search_spaces import get_space, list_spaces, space_class
out = {}
for name in list_spaces():
    space = get_space(name)
    out[name] = {ref: [(s.key, s.key_hash, s.params) for s in space.blocks(ref)]
                 for ref in space_class(name).reference_configs()}
print(json.dumps(out))
"""


def test_block_keys_are_stable_across_processes() -> None:
    here = {
        name: {
            ref: [[s.key, s.key_hash, s.params] for s in get_space(name).blocks(ref)]
            for ref in space_class(name).reference_configs()
        }
        for name in SPACES
    }
    result = subprocess.run(
        [sys.executable, "-c", _KEYS_SCRIPT], capture_output=True, text=True, check=True, timeout=300
    )
    assert json.loads(result.stdout) == here


def test_every_block_is_in_all_blocks(space: SearchSpace) -> None:
    listed = space.all_blocks()
    keys = {spec.key for spec in listed}
    assert len(keys) == len(listed), "all_blocks lists a key twice"
    configs = [space.canonicalize(r) for r in space.reference_configs()]
    configs += [space.smallest(), space.largest(), *random_configs(space, 20, seed=3)]
    for config in configs:
        missing = [spec.key for spec in space.blocks(config) if spec.key not in keys]
        assert not missing, f"blocks of {config_id(config)} missing from all_blocks: {missing[:3]}"


def test_every_block_kind_has_the_space_prefix(space: SearchSpace) -> None:
    for spec in space.all_blocks():
        assert spec.kind.count(".") >= 1
        assert {"batch", "dtype"} <= set(spec.arg_dict), spec.key


def test_build_block_runs_every_block_of_the_smallest_config(small_space: SearchSpace) -> None:
    config = small_space.smallest()
    for spec in small_space.blocks(config):
        # A farm only has the key: building from the parsed key must give the same block.
        parsed = BlockSpec.from_key(spec.key)
        assert parsed == spec
        module, inputs = small_space.build_block(parsed)
        assert count_params(module) == spec.params, spec.key
        module.eval()
        with torch.no_grad():
            out = module(*inputs)
        tensors = out if isinstance(out, tuple) else (out,)
        assert all(torch.isfinite(t).all() for t in tensors), spec.key


def test_build_block_rejects_a_foreign_kind(space: SearchSpace) -> None:
    with pytest.raises(ValueError, match="no_such_kind"):
        space.build_block(BlockSpec.make("no_such_space.no_such_kind", batch=1, dtype="fp32"))


def test_build_and_example_inputs_run_the_smallest_config(small_space: SearchSpace) -> None:
    model = small_space.build(small_space.smallest()).eval()
    with torch.no_grad():
        out = model(*small_space.example_inputs(batch=2))
    tensors = out if isinstance(out, tuple) else (out,)
    assert all(t.shape[0] == 2 and torch.isfinite(t).all() for t in tensors)
