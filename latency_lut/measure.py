"""Fill a device's table on this host: measure the blocks a space needs that the table lacks, with
each timing asked for (`latency_lut.timings`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from latency_lut._table import LatencyEntry, LatencyTable
from latency_lut.backends import MeasurementBackend, check_counts, summarize
from latency_lut.devices import device_backend
from latency_lut.timings import TIMINGS, Timing, check_timings, predecessors, timing_key
from search_spaces import BlockSpec, SearchSpace

#: What a table needs for the service's default predictors: the in-context entries they sum and the
#: isolated ones the fallback and the comparisons use (call overheads are cheap to add).
DEFAULT_TIMINGS: tuple[Timing, ...] = TIMINGS

#: `progress(done, total, key)`, called after each measured block.
ProgressCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class MeasureReport:
    """What `measure_missing` did: table entries needed (distinct blocks x timings), how many the table
    already had, how many were measured now (their keys in order), and the wall-clock seconds it took."""

    device: str
    needed: int
    already_present: int
    measured: int
    seconds: float
    measured_keys: list[str] = field(default_factory=list)
    clock: str | None = None


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
    timings: Iterable[str] = DEFAULT_TIMINGS,
    progress: ProgressCallback | None = None,
    batch_size: int = 16,
) -> MeasureReport:
    """Measure the entries needed by `configs` (or the whole space) that `device`'s table lacks.

    For every block and every timing in `timings` (see `latency_lut.timings`) the block is built with
    `space.build_block`, timed by `backend` (default: the device's local backend, see
    `device_backend`; a device measured elsewhere raises `NoLocalBackendError` when something is
    missing), summarised and written to `table` with its provenance (timing, clock, predecessor),
    the space's name and options; a block with low-bit weights (`wbits` < 16) runs on the backend's
    real low-bit kernel where it has one, and its entry says how (`latency_lut.low_bit`). Entries are
    written every `batch_size` entries, so an interruption loses at most one batch and a second call
    resumes where the first stopped.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    check_counts(warmup, repeats)
    started = time.perf_counter()
    canonical = None if configs is None else [space.canonicalize(c) for c in configs]
    specs = needed_blocks(space, canonical)
    needed, todo = _needed_and_missing(specs, device, table, timings)
    measured: list[str] = []
    timer = backend
    if todo:
        timer = backend if backend is not None else device_backend(device)
        before = predecessors(space, specs, canonical) if any(t == "in_context" for _, t in todo) else {}
        job = _Job(space, device, table, timer, warmup, repeats, progress, batch_size, before)
        measured = job.run(todo)
    return MeasureReport(
        device=device,
        needed=len(needed),
        already_present=len(needed) - len(todo),
        measured=len(measured),
        seconds=time.perf_counter() - started,
        measured_keys=measured,
        clock=None if timer is None else timer.clock,
    )


def missing_entries(
    space: SearchSpace, device: str, table: LatencyTable, *, timings: Iterable[str] = DEFAULT_TIMINGS
) -> list[tuple[BlockSpec, Timing]]:
    """The (block, timing) entries of the whole space that `device`'s table lacks, in the order
    `measure_missing` would measure them: what a search on this space must measure first."""
    return _needed_and_missing(needed_blocks(space), device, table, timings)[1]


def _needed_and_missing(
    specs: list[BlockSpec], device: str, table: LatencyTable, timings: Iterable[str]
) -> tuple[list[tuple[BlockSpec, Timing]], list[tuple[BlockSpec, Timing]]]:
    wanted = check_timings(timings)
    needed = [(spec, t) for spec in specs for t in wanted]
    missing = set(table.missing(device, [timing_key(spec.key, t) for spec, t in needed]))
    return needed, [(spec, t) for spec, t in needed if timing_key(spec.key, t) in missing]


def weight_bits(spec: BlockSpec) -> int | None:
    """The weight width of a block of a bit-width space (`wbits` below 16), else None."""
    bits = spec.arg_dict.get("wbits")
    return int(bits) if bits is not None and int(bits) < 16 else None


@dataclass
class _Job:
    space: SearchSpace
    device: str
    table: LatencyTable
    backend: MeasurementBackend
    warmup: int
    repeats: int
    progress: ProgressCallback | None
    batch_size: int
    before: dict[str, BlockSpec | None]

    def run(self, todo: list[tuple[BlockSpec, Timing]]) -> list[str]:
        """Time `todo` in order, writing entries every `batch_size`; returns the keys measured."""
        context = {
            "space": self.space.name,
            "space_options": dict(self.space.options),
            "warmup": self.warmup,
            "repeats": self.repeats,
        }
        pending: list[LatencyEntry] = []
        measured: list[str] = []
        for spec, timing in todo:
            samples, extra = self._time(spec, timing)
            median, p10, p90 = summarize(samples)
            key = timing_key(spec.key, timing)
            provenance = {**self.backend.provenance(), **context, "timing": timing, **extra}
            pending.append(
                LatencyEntry(self.device, key, median, p10, p90, len(samples), spec.kind, provenance)
            )
            measured.append(key)
            if len(pending) >= self.batch_size:
                self.table.put_many(pending)
                pending = []
            if self.progress is not None:
                self.progress(len(measured), len(todo), key)
        if pending:
            self.table.put_many(pending)
        return measured

    def _time(self, spec: BlockSpec, timing: Timing) -> tuple[list[float], dict[str, Any]]:
        module, inputs = self.space.build_block(spec)
        counts = {"warmup": self.warmup, "repeats": self.repeats}
        if timing == "call_overhead":
            return self.backend.measure_call_overhead(inputs, **counts), {}
        bits = weight_bits(spec)
        if bits is not None:
            prior = self.before.get(spec.key) if timing == "in_context" else None
            before = self.space.build_block(prior) if prior is not None else None
            samples, kernel = self.backend.measure_weight_bits(
                module, inputs, bits=bits, before=before, **counts
            )
            extra = {"after": prior.key if prior is not None else None} if timing == "in_context" else {}
            return samples, {**extra, **kernel.provenance()}
        if timing == "isolated":
            return self.backend.measure(module, inputs, **counts), {}
        prior = self.before.get(spec.key)
        if prior is None:  # a network's first block: nothing runs before it
            return self.backend.measure(module, inputs, **counts), {"after": None}
        before = self.space.build_block(prior)
        samples = self.backend.measure_in_context(module, inputs, before=before, **counts)
        return samples, {"after": prior.key}
