"""The `SearchSpace` contract: what can be searched, and how a subnet is named, built and priced.

A *config* is a flat JSON-able dict `{choice name: value}` naming one subnet. Every space lists its
discrete choices in a fixed order; `canonicalize` fills defaults, zeroes entries made irrelevant by
other choices (the expansion ratio of a block beyond the stage's depth) and rejects anything invalid
with a `ConfigError` naming the choice and its allowed values. Equal subnets therefore have equal
canonical configs and one `config_id`, so a search never pays twice for the same subnet.

A space instance is bound to its *options* (resolution, latent size, width scale, dtype, ...), which
are validated on construction and change the blocks' shapes but not the set of choices.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from search_spaces._blocks import BlockSpec
from search_spaces._counting import MacCount, block_mac_count
from search_spaces.errors import FieldError

Config = dict[str, Any]


class SpaceError(FieldError):
    """Base class of the errors a space raises for bad input; `field` names what was wrong."""


class ConfigError(SpaceError):
    """A config names an unknown choice, misses a required one, or gives a value not allowed."""


class OptionError(SpaceError):
    """A space option is unknown or out of range."""


class UnknownSpaceError(SpaceError):
    """No space is registered under that name."""


@dataclass(frozen=True)
class Choice:
    """One discrete decision of a space: its name and ordered options (smallest / cheapest first)."""

    name: str
    options: tuple[Any, ...]
    help: str = ""

    def __post_init__(self) -> None:
        if not self.options:
            raise ValueError(f"choice {self.name!r} has no options")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": list(self.options), "help": self.help}


@dataclass(frozen=True)
class OptionSpec:
    """One space option: default, type, and either the allowed values, an inclusive range (numbers) or
    `accepts`, a sentence saying what a free-form value may be (strings)."""

    name: str
    default: Any
    type: type
    allowed: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    help: str = ""
    accepts: str | None = None

    def validate(self, value: Any) -> Any:
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise OptionError(
                f"option {self.name!r} must be of type {self.type.__name__}, got {value!r}",
                field=self.name,
                allowed=self.describe_allowed(),
            )
        if self.allowed is not None and value not in self.allowed:
            raise OptionError(
                f"option {self.name!r} = {value!r} is not allowed; allowed: {list(self.allowed)}",
                field=self.name,
                allowed=list(self.allowed),
            )
        if (self.minimum is not None and value < self.minimum) or (
            self.maximum is not None and value > self.maximum
        ):
            raise OptionError(
                f"option {self.name!r} = {value!r} is out of range; allowed: {self.describe_allowed()}",
                field=self.name,
                allowed=self.describe_allowed(),
            )
        return value

    def describe_allowed(self) -> list[Any] | str:
        if self.allowed is not None:
            return list(self.allowed)
        if self.accepts is not None:
            return self.accepts
        if self.type not in (int, float):
            return f"any {self.type.__name__}" + (f": {self.help}" if self.help else "")
        low = "-inf" if self.minimum is None else self.minimum
        high = "inf" if self.maximum is None else self.maximum
        return f"{self.type.__name__} in [{low}, {high}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "default": self.default,
            "type": self.type.__name__,
            "allowed": self.describe_allowed(),
            "help": self.help,
        }


def config_id(config: Mapping[str, Any]) -> str:
    """Stable id of a (canonical) config: sha256 prefix of its sorted JSON."""
    text = json.dumps(dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Supernet(nn.Module, abc.ABC):
    """Weight-sharing supernet of a space.

    `activate(config)` selects a subnet, after which `forward` runs exactly that subnet;
    `extract(config)` returns a standalone module with the inherited weights whose output equals the
    activated supernet's (to 1e-5 in float32).
    """

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        self.active_config: Config | None = None

    @abc.abstractmethod
    def activate(self, config: Mapping[str, Any]) -> None: ...

    @abc.abstractmethod
    def extract(self, config: Mapping[str, Any]) -> nn.Module: ...

    def frozen_start(self, config: Mapping[str, Any]) -> nn.Module | None:
        """A standalone subnet to train the way this supernet trains: the parts the supernet keeps
        frozen carry its weights and stay frozen (`requires_grad=False`), the rest is freshly
        initialised from the global random state. None (the default): the supernet freezes nothing,
        so a subnet trains from scratch (`space.build`)."""
        return None


class SearchSpace(abc.ABC):
    """A family of subnets: its choices, options, reference configs, blocks and supernet.

    Subclasses set `name` and implement `choices`, `option_specs`, `reference_configs`,
    `_canonicalize` (dependent-choice rules), `blocks`, `build`, `build_block`, `example_inputs`
    and `supernet`. Sampling, mutation, crossover, encoding and counting have generic defaults.
    """

    name: ClassVar[str]
    #: Short description shown by `GET /v1/spaces`.
    description: ClassVar[str] = ""
    #: Whether the space's supernet keeps a part of every subnet frozen while it trains (its
    #: `Supernet.frozen_start` then returns subnets that start from that part).
    supernet_freezes: ClassVar[bool] = False

    def __init__(self, **options: Any):
        specs = {spec.name: spec for spec in self.option_specs()}
        unknown = sorted(set(options) - set(specs))
        if unknown:
            raise OptionError(
                f"unknown option {unknown[0]!r} for space {self.name!r}; known options: {sorted(specs)}",
                field=unknown[0],
                allowed=sorted(specs),
            )
        self.options: dict[str, Any] = {
            name: spec.validate(options[name]) if name in options else spec.default
            for name, spec in specs.items()
        }
        self._choices = {choice.name: choice for choice in self.choices()}

    # ----------------------------------------------------------------- what a space declares
    @classmethod
    @abc.abstractmethod
    def option_specs(cls) -> list[OptionSpec]:
        """The options a space takes, with defaults and allowed values."""

    @abc.abstractmethod
    def choices(self) -> list[Choice]:
        """The ordered discrete choices of the space."""

    @classmethod
    @abc.abstractmethod
    def reference_configs(cls) -> dict[str, Config]:
        """Named configs from the papers (e.g. `s0`, `l`, `sd15`); canonical or canonicalizable."""

    @abc.abstractmethod
    def _canonicalize(self, config: Config) -> Config:
        """Apply the space's dependent-choice rules to a complete, per-choice-valid config.

        Zero the entries that other choices make irrelevant; raise `ConfigError` for combinations
        that are invalid as a whole.
        """

    @abc.abstractmethod
    def blocks(self, config: Mapping[str, Any]) -> list[BlockSpec]:
        """The subnet decomposed, in execution order, into the blocks a LUT measures."""

    @abc.abstractmethod
    def build(self, config: Mapping[str, Any]) -> nn.Module:
        """A standalone subnet with random init (for export and end-to-end measurement)."""

    @abc.abstractmethod
    def build_block(self, spec: BlockSpec) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        """The module of one block and example inputs of its input shape; the only way blocks are built."""

    @abc.abstractmethod
    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """Inputs for `build(config)(*inputs)` at the space's options."""

    @abc.abstractmethod
    def supernet(self) -> Supernet:
        """A freshly initialised weight-sharing supernet of the space."""

    def all_blocks(self) -> list[BlockSpec]:
        """Every distinct block any subnet of the space can contain at these options (for LUT work lists).

        The default enumerates the blocks of the reference configs and of the extreme configs; spaces
        whose block set is small enough override it with an exact enumeration.
        """
        seen: dict[str, BlockSpec] = {}
        configs = [*self.reference_configs().values(), self.largest(), self.smallest()]
        for config in configs:
            for spec in self.blocks(self.canonicalize(config)):
                seen.setdefault(spec.key, spec)
        return list(seen.values())

    # ----------------------------------------------------------------- generic behaviour
    @property
    def choice_map(self) -> dict[str, Choice]:
        return self._choices

    @property
    def cardinality(self) -> int:
        """Number of distinct canonical configs (product of option counts unless a space knows better)."""
        return math.prod(len(choice.options) for choice in self._choices.values())

    def default_config(self) -> Config:
        """The largest subnet: the last option of every choice."""
        return self.largest()

    def largest(self) -> Config:
        return self.canonicalize({c.name: c.options[-1] for c in self._choices.values()})

    def smallest(self) -> Config:
        return self.canonicalize({c.name: c.options[0] for c in self._choices.values()})

    def reference_config(self, name: str) -> Config:
        refs = self.reference_configs()
        if name not in refs:
            raise ConfigError(
                f"unknown reference config {name!r} for space {self.name!r}; known: {sorted(refs)}",
                field="config",
                allowed=sorted(refs),
            )
        return self.canonicalize(refs[name])

    def canonicalize(self, config: Mapping[str, Any] | str) -> Config:
        """Validate and normalise a config (or a reference config's name); see the module docstring.

        Entries a config omits are filled with the choice's largest option; entries that the space
        may zero (irrelevant given other choices) are accepted as 0.
        """
        if isinstance(config, str):
            return self.reference_config(config)
        if not isinstance(config, Mapping):
            raise ConfigError(
                f"a config must be a JSON object of choices, got {type(config).__name__}",
                field="config",
                allowed=list(self._choices),
            )
        unknown = [name for name in config if name not in self._choices]
        if unknown:
            raise ConfigError(
                f"unknown choice {unknown[0]!r} for space {self.name!r}",
                field=unknown[0],
                allowed=list(self._choices),
            )
        full: Config = {}
        for name, choice in self._choices.items():
            value = config.get(name, choice.options[-1])
            if (
                isinstance(value, float)
                and value.is_integer()
                and all(isinstance(o, int) for o in choice.options)
            ):
                value = int(value)
            if value not in choice.options and value != 0:
                raise ConfigError(
                    f"choice {name!r} = {value!r} is not allowed; options: {list(choice.options)}",
                    field=name,
                    allowed=list(choice.options),
                )
            full[name] = value
        return self._canonicalize(full)

    def config_id(self, config: Mapping[str, Any]) -> str:
        return config_id(self.canonicalize(config))

    def sample(self, rng: np.random.Generator) -> Config:
        """A uniformly random value for every choice, canonicalized."""
        raw = {c.name: c.options[int(rng.integers(len(c.options)))] for c in self._choices.values()}
        return self.canonicalize(raw)

    def mutate(self, config: Mapping[str, Any], rng: np.random.Generator, prob: float = 0.1) -> Config:
        """Resample each relevant choice with probability `prob`; always returns a different subnet
        when the space has more than one (at least one choice is changed)."""
        base = self.canonicalize(config)
        for _ in range(100):
            child = dict(base)
            names = list(self._choices)
            forced = names[int(rng.integers(len(names)))]
            for name in names:
                if name == forced or rng.random() < prob:
                    options = self._choices[name].options
                    child[name] = options[int(rng.integers(len(options)))]
            # Entries zeroed in the parent come back as the largest option if they become relevant
            # (0 stays 0 where it is a real option, e.g. a number of attention blocks).
            child = {k: self._unzero(k, v) for k, v in child.items()}
            result = self.canonicalize(child)
            if result != base:
                return result
        return base

    def crossover(self, a: Mapping[str, Any], b: Mapping[str, Any], rng: np.random.Generator) -> Config:
        """Uniform crossover: each choice from either parent with equal probability."""
        ca, cb = self.canonicalize(a), self.canonicalize(b)
        child = {}
        for name in self._choices:
            value = ca[name] if rng.random() < 0.5 else cb[name]
            child[name] = self._unzero(name, value)
        return self.canonicalize(child)

    def _unzero(self, name: str, value: Any) -> Any:
        """`value`, or the choice's largest option where `value` is a zeroed (irrelevant) entry."""
        options = self._choices[name].options
        return options[-1] if value == 0 and 0 not in options else value

    def encode(self, config: Mapping[str, Any]) -> np.ndarray:
        """Each choice's option index scaled to [0, 1] (irrelevant entries are -1), for predictors."""
        canonical = self.canonicalize(config)
        out = np.empty(len(self._choices), dtype=np.float32)
        for i, (name, choice) in enumerate(self._choices.items()):
            value = canonical[name]
            if value == 0 and 0 not in choice.options:
                out[i] = -1.0
            else:
                out[i] = choice.options.index(value) / max(1, len(choice.options) - 1)
        return out

    def count(self, config: Mapping[str, Any]) -> dict[str, int]:
        """Parameters and MACs of a subnet, summed over its blocks (MACs as `mac_count` counts them)."""
        specs = self.blocks(self.canonicalize(config))
        return {
            "params": sum(spec.params for spec in specs),
            "macs": sum(block_mac_count(self.name, spec, self.build_block).macs for spec in specs),
        }

    def mac_count(self, config: Mapping[str, Any]) -> MacCount:
        """MACs of a subnet (attention matmuls included; see `search_spaces._counting`), summed over
        its blocks, with every operation fvcore skipped. Counted by fvcore per block and cached by
        block key, so pricing a new subnet costs only its unseen blocks."""
        total = MacCount(0)
        for spec in self.blocks(self.canonicalize(config)):
            total = total + block_mac_count(self.name, spec, self.build_block)
        return total

    def describe(self) -> dict[str, Any]:
        """JSON description for the API: choices, options, reference configs, cardinality."""
        return {
            "name": self.name,
            "description": self.description,
            "choices": [c.to_dict() for c in self._choices.values()],
            "options": [spec.to_dict() for spec in self.option_specs()],
            "option_values": dict(self.options),
            "reference_configs": {
                name: self.canonicalize(cfg) for name, cfg in self.reference_configs().items()
            },
            "cardinality": str(self.cardinality),
        }
