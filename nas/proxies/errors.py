"""The errors of proxies: one that cannot be computed, and a name that is not offered."""

from __future__ import annotations

from search_spaces import SpaceError


class ProxyError(RuntimeError):
    """A proxy cannot be computed for this subnet or space (the message says why and what to do)."""


class UnknownProxyError(SpaceError):
    """No proxy of that name is registered, or it is not available for the chosen space."""
