"""Wording shared by the programs of services/ (the CLI and the core), with no import beyond the
standard library, so the CLI's HTTP-only commands stay light."""

from __future__ import annotations


def duration_text(seconds: float | None) -> str:
    """`4m 31s`, `12s`, `1h 05m`; `unknown` for None."""
    if seconds is None:
        return "unknown"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
