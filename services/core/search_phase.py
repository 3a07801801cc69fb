"""What a running search is doing: measuring its latency table on this host before the first trial, or
searching. The scheduler writes the phase to the search's row (`SearchRow.phase`), so every API process
reads the same progress; the submit answer counts the entries a search will measure first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from latency_lut import BUILTIN_DEVICES, LatencyTable, missing_entries
from nas import ResolvedSpec
from services.wording import duration_text

PHASE_MEASURING = "measuring latency table"
PHASE_SEARCHING = "searching"


@dataclass(frozen=True)
class TableToMeasure:
    """Entries of `device`'s latency table that a search must measure on the scheduler's host before
    its first trial: `entries` (block x timing: isolated, in context, call overhead) of `blocks`
    distinct blocks."""

    device: str
    blocks: int
    entries: int


def tables_to_measure(resolved: ResolvedSpec, table: LatencyTable) -> list[TableToMeasure]:
    """For each device of the search that the scheduler measures itself (a built-in device with a local
    backend), the entries of the space its table lacks; devices with nothing missing are left out."""
    found = []
    for device in resolved.devices:
        known = BUILTIN_DEVICES.get(device)
        if known is None or known.backend is None:
            continue
        todo = missing_entries(resolved.space, device, table)
        if todo:
            found.append(TableToMeasure(device, len({spec.key for spec, _ in todo}), len(todo)))
    return found


def table_eta_s(table: dict[str, Any]) -> float | None:
    """Seconds left to measure the rest of the table at the rate so far; None before the first entry."""
    done, total, seconds = int(table["done"]), int(table["total"]), float(table["seconds"])
    if done >= total:
        return 0.0
    if done <= 0 or seconds <= 0:
        return None
    return (total - done) * seconds / done


def measuring_message(table: dict[str, Any]) -> str:
    """`measuring latency table for host-cpu-torch: 340 / 1,212 entries, ETA 3m 12s`."""
    return (
        f"{PHASE_MEASURING} for {table['device']}: {table['done']:,} / {table['total']:,} entries, "
        f"ETA {duration_text(table_eta_s(table))}"
    )
