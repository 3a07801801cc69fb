"""Space options written as text, as the CLI (`-o resolution=224`) and query strings (`?resolution=64`)
give them: a value is JSON when it parses (`64`, `0.5`, `true`), else the text itself (`fp16`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


def parse_option_value(text: str) -> Any:
    """`"64"` -> 64, `"0.5"` -> 0.5, `"true"` -> True, `"fp16"` -> "fp16"."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_option_pairs(pairs: Iterable[str] | None, *, flag: str = "--option") -> dict[str, Any]:
    """`["resolution=224", "dtype=fp16"]` as a dict; a pair without `=` or a name is a ValueError."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{flag} takes NAME=VALUE (e.g. resolution=224), got {pair!r}")
        options[name.strip()] = parse_option_value(value.strip())
    return options
