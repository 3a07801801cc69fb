"""BlockSpec: one canonical, readable, stable key per block."""

from __future__ import annotations

import hashlib

import pytest

from search_spaces import BlockSpec


def test_key_sorts_args_and_reads_like_the_design() -> None:
    spec = BlockSpec.make("effv2.ffn", dim=96, ratio=3, hw="14x14", batch=1, dtype="fp32")
    assert spec.key == "effv2.ffn|batch=1|dim=96|dtype=fp32|hw=14x14|ratio=3"
    same = BlockSpec.make("effv2.ffn", ratio=3, dtype="fp32", batch=1, hw="14x14", dim=96)
    assert same == spec and same.key == spec.key and hash(same) == hash(spec)


def test_key_hash_is_the_sha256_prefix_of_the_key() -> None:
    spec = BlockSpec.make("effv2.stem", dim=32, hw="224x224", batch=1, dtype="fp32")
    assert spec.key_hash == hashlib.sha256(spec.key.encode()).hexdigest()[:16]
    assert spec.key_hash == BlockSpec.make("effv2.stem", hw="224x224", dim=32, dtype="fp32", batch=1).key_hash


def test_params_are_not_part_of_identity() -> None:
    a = BlockSpec.make("effv2.head", params=10, dim=8, hw="1x1", batch=1, dtype="fp32", heads="none")
    b = BlockSpec.make("effv2.head", params=99, dim=8, hw="1x1", batch=1, dtype="fp32", heads="none")
    assert a == b and a.key == b.key
    assert a.params == 10


def test_from_key_round_trips_ints_floats_and_strings() -> None:
    spec = BlockSpec.make("x.block", n=3, scale=0.1, big=1e-07, mode="fast", hw="7x7")
    parsed = BlockSpec.from_key(spec.key)
    assert parsed == spec
    assert parsed["n"] == 3 and isinstance(parsed["n"], int)
    assert parsed["scale"] == 0.1 and isinstance(parsed["scale"], float)
    assert parsed["big"] == 1e-07
    assert parsed["mode"] == "fast" and parsed["hw"] == "7x7"


def test_a_float_and_an_int_give_different_keys() -> None:
    assert BlockSpec.make("x.block", ratio=3).key != BlockSpec.make("x.block", ratio=3.0).key


@pytest.mark.parametrize(
    ("kind", "args", "error"),
    [
        ("", {}, ValueError),
        ("x|y", {}, ValueError),
        ("x=y", {}, ValueError),
        ("x.block", {"flag": True}, TypeError),
        ("x.block", {"mode": "a|b"}, ValueError),
        ("x.block", {"mode": "a=b"}, ValueError),
        ("x.block", {"mode": ""}, ValueError),
    ],
)
def test_make_rejects_ambiguous_kinds_and_values(kind: str, args: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        BlockSpec.make(kind, **args)


def test_from_key_rejects_malformed_segments() -> None:
    with pytest.raises(ValueError, match="name=value"):
        BlockSpec.from_key("effv2.ffn|dim")
    with pytest.raises(ValueError, match="name=value"):
        BlockSpec.from_key("effv2.ffn|=3")
