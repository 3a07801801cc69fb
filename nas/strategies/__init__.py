"""Search strategies, registered by name (see `Strategy` for the contract)."""

# The built-in strategies register themselves (`register_strategy`) when imported.
from nas.strategies import (  # noqa: F401
    bitsfusion,
    block_evolving,
    optuna_nsga2,
    optuna_nsga3,
    optuna_tpe,
    random_search,
    regularized_evolution,
    slimming,
    tpe_evolution,
)
from nas.strategies._base import Strategy
from nas.strategies.registry import (
    DEFAULT_STRATEGY,
    UnknownStrategyError,
    default_strategy,
    list_strategies,
    make_strategy,
    register_strategy,
    strategy_class,
)

__all__ = [
    "DEFAULT_STRATEGY",
    "Strategy",
    "UnknownStrategyError",
    "default_strategy",
    "list_strategies",
    "make_strategy",
    "register_strategy",
    "strategy_class",
]
