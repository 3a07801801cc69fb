"""Search spaces: what can be searched. Depends on nothing internal.

Importing the package registers every built-in space.
"""

# The built-in spaces register themselves (`register_space`) when imported.
from search_spaces import efficientformerv2, precision, temporal, unet  # noqa: F401
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
from search_spaces._counting import (
    NO_MAC_OPS,
    MacCount,
    count_mac_details,
    count_macs,
    count_params,
    sdpa_macs,
)
from search_spaces._space_registry import get_space, list_spaces, register_space, space_class
from search_spaces.errors import FieldError
from search_spaces.registry import Registry

__all__ = [
    "NO_MAC_OPS",
    "BlockSpec",
    "Choice",
    "Config",
    "ConfigError",
    "FieldError",
    "MacCount",
    "OptionError",
    "OptionSpec",
    "Registry",
    "SearchSpace",
    "SpaceError",
    "Supernet",
    "UnknownSpaceError",
    "config_id",
    "count_mac_details",
    "count_macs",
    "count_params",
    "get_space",
    "list_spaces",
    "register_space",
    "sdpa_macs",
    "space_class",
]
