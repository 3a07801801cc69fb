"""`Direction`: whether an objective (or a proxy) is better smaller or larger.

A module of its own so that both the objective grammar (`nas.objectives`) and the proxies
(`nas.proxies`) use it without importing each other.
"""

from typing import Literal

Direction = Literal["minimize", "maximize"]
