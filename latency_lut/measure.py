"""Fill a device's table on this host: measure the blocks a space needs that the table lacks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from latency_lut._table import LatencyEntry, LatencyTable
from latency_lut.backends import MeasurementBackend, check_counts, summarize
from latency_lut.devices import device_backend
from search_spaces import BlockSpec, SearchSpace

#: `progress(done, total, key)`, called after each measured block.
ProgressCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class MeasureReport:
    """What `measure_missing` did: distinct block keys needed, how many the table already had, how
    many were measured now (their keys in order), and the wall-clock seconds it took."""

    device: str
    needed: int
    already_present: int
    measured: int
    seconds: float
    measured_keys: list[str] = field(default_factory=list)


def needed_blocks(
    space: SearchSpace, configs: Iterable[Mapping[str, Any] | str] | None = None
) -> list[BlockSpec]:
    """Distinct blocks (first occurrence order) of `configs`, or every block of the space when None.

    A config may be a dict or the name of a reference config; each is canonicalized first.
    """
    if configs is None:
        specs = space.all_blocks()
    else:
        specs = [spec for config in configs for spec in space.blocks(space.canonicalize(config))]
    unique: dict[str, BlockSpec] = {}
    for spec in specs:
        unique.setdefault(spec.key, spec)
    return list(unique.values())


def measure_missing(
    space: SearchSpace,
    device: str,
    table: LatencyTable,
    *,
    configs: Iterable[Mapping[str, Any] | str] | None = None,
    backend: MeasurementBackend | None = None,
    warmup: int = 10,
    repeats: int = 30,
    progress: ProgressCallback | None = None,
    batch_size: int = 16,
) -> MeasureReport:
    """Measure the blocks needed by `configs` (or the whole space) that `device`'s table lacks.

    Each missing block is built with `space.build_block`, timed by `backend` (default: the device's
    local backend, see `device_backend`; a device measured elsewhere raises `NoLocalBackendError`
    when something is missing), summarised and written to `table` with its provenance, the space's
    name and options. Entries are written every `batch_size` blocks, so an interruption loses at most
    one batch and a second call resumes where the first stopped.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    check_counts(warmup, repeats)
    started = time.perf_counter()
    specs = needed_blocks(space, configs)
    missing = set(table.missing(device, [spec.key for spec in specs]))
    todo = [spec for spec in specs if spec.key in missing]
    measured: list[str] = []
    if todo:
        timer = backend if backend is not None else device_backend(device)
        measured = _measure(space, device, table, todo, timer, warmup, repeats, progress, batch_size)
    return MeasureReport(
        device=device,
        needed=len(specs),
        already_present=len(specs) - len(todo),
        measured=len(measured),
        seconds=time.perf_counter() - started,
        measured_keys=measured,
    )


def _measure(
    space: SearchSpace,
    device: str,
    table: LatencyTable,
    todo: list[BlockSpec],
    backend: MeasurementBackend,
    warmup: int,
    repeats: int,
    progress: ProgressCallback | None,
    batch_size: int,
) -> list[str]:
    """Time `todo` in order, writing entries every `batch_size` blocks; returns the keys measured."""
    context = {
        "space": space.name,
        "space_options": dict(space.options),
        "warmup": warmup,
        "repeats": repeats,
    }
    pending: list[LatencyEntry] = []
    measured: list[str] = []
    for spec in todo:
        module, inputs = space.build_block(spec)
        samples = backend.measure(module, inputs, warmup=warmup, repeats=repeats)
        median, p10, p90 = summarize(samples)
        pending.append(
            LatencyEntry(
                device=device,
                key=spec.key,
                median_ms=median,
                p10_ms=p10,
                p90_ms=p90,
                count=len(samples),
                kind=spec.kind,
                provenance={**backend.provenance(), **context},
            )
        )
        measured.append(spec.key)
        if len(pending) >= batch_size:
            table.put_many(pending)
            pending = []
        if progress is not None:
            progress(len(measured), len(todo), spec.key)
    if pending:
        table.put_many(pending)
    return measured
