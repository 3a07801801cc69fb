"""`LatencyTable`: per device, block key -> latency statistics, with provenance.

Contract (every implementation passes `tests/latency_lut/test_table_conformance.py`, run on the
in-memory table, SQLite and PostgreSQL):
- a *device* is a named target (`host-cpu-torch`, `iphone14pro-coreml-ane`, ...); tables of different
  devices never mix;
- `put` stores or replaces the entry of (device, key); entries are read back unchanged (floats to
  1e-9 relative, provenance as the same JSON object);
- `get_many` returns only the keys present; `keys`/`entries` list a device's table;
- implementations are safe to call from several threads of one process.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class LatencyEntry:
    """Latency statistics of one block key on one device, in milliseconds."""

    device: str
    key: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    count: int
    kind: str = ""
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_row(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "key": self.key,
            "kind": self.kind or self.key.split("|", 1)[0],
            "median_ms": self.median_ms,
            "p10_ms": self.p10_ms,
            "p90_ms": self.p90_ms,
            "count": self.count,
            "provenance": dict(self.provenance),
        }


class LatencyTable(abc.ABC):
    """Storage of `LatencyEntry`s; see the module docstring for the contract."""

    @abc.abstractmethod
    def put_many(self, entries: Iterable[LatencyEntry]) -> int:
        """Insert or replace entries; returns how many were written."""

    @abc.abstractmethod
    def get_many(self, device: str, keys: Iterable[str]) -> dict[str, LatencyEntry]:
        """The entries of `device` among `keys` (missing keys are absent from the result)."""

    @abc.abstractmethod
    def entries(self, device: str) -> list[LatencyEntry]:
        """All entries of a device, ordered by key."""

    @abc.abstractmethod
    def devices(self) -> list[str]:
        """Devices that have at least one entry, sorted."""

    def put(self, entry: LatencyEntry) -> None:
        self.put_many([entry])

    def keys(self, device: str) -> set[str]:
        return {entry.key for entry in self.entries(device)}

    def missing(self, device: str, keys: Iterable[str]) -> list[str]:
        """Keys (in the order given, without repeats) that the device's table lacks."""
        wanted = list(dict.fromkeys(keys))
        present = self.get_many(device, wanted)
        return [key for key in wanted if key not in present]

    def snapshot(self, device: str) -> dict[str, float]:
        """key -> median ms for one device: what evaluator actors load once."""
        return {entry.key: entry.median_ms for entry in self.entries(device)}


class MemoryLatencyTable(LatencyTable):
    """A `LatencyTable` in a dict (library use and tests)."""

    def __init__(self, entries: Iterable[LatencyEntry] = ()):
        self._rows: dict[tuple[str, str], LatencyEntry] = {}
        self._lock = threading.Lock()
        self.put_many(entries)

    def put_many(self, entries: Iterable[LatencyEntry]) -> int:
        n = 0
        with self._lock:
            for entry in entries:
                self._rows[(entry.device, entry.key)] = replace(entry, provenance=dict(entry.provenance))
                n += 1
        return n

    def get_many(self, device: str, keys: Iterable[str]) -> dict[str, LatencyEntry]:
        with self._lock:
            return {k: self._rows[(device, k)] for k in keys if (device, k) in self._rows}

    def entries(self, device: str) -> list[LatencyEntry]:
        with self._lock:
            return sorted((e for (d, _), e in self._rows.items() if d == device), key=lambda e: e.key)

    def devices(self) -> list[str]:
        with self._lock:
            return sorted({d for d, _ in self._rows})


def entries_from_mapping(device: str, medians: Mapping[str, float]) -> list[LatencyEntry]:
    """Entries from a plain key -> median mapping (imports of tables without spread statistics)."""
    return [LatencyEntry(device, k, v, v, v, 1) for k, v in medians.items()]
