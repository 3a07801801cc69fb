"""Search spaces: what can be searched. Depends on nothing internal.

Importing the package registers every built-in space.
"""

from search_spaces._base import (
    Choice,
    Config,
    ConfigError,
    OptionError,
    OptionSpec,
    SearchSpace,
    SpaceError,
    Supernet,
    UnknownSpaceError,
    config_id,
)
from search_spaces._blocks import BlockSpec
from search_spaces._counting import count_macs, count_params
from search_spaces._registry import get_space, list_spaces, register_space, space_class

# Built-in spaces register themselves on import.
from search_spaces import efficientformerv2  # noqa: F401  isort: skip
from search_spaces import unet  # noqa: F401  isort: skip
from search_spaces import temporal  # noqa: F401  isort: skip

__all__ = [
    "BlockSpec",
    "Choice",
    "Config",
    "ConfigError",
    "OptionError",
    "OptionSpec",
    "SearchSpace",
    "SpaceError",
    "Supernet",
    "UnknownSpaceError",
    "config_id",
    "count_macs",
    "count_params",
    "get_space",
    "list_spaces",
    "register_space",
    "space_class",
]
