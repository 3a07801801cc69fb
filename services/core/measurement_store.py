"""`MeasurementStore`: devices, work lists and uploads of raw samples, on the service's database.

An upload (one batch of one agent run) is validated as a whole, then written in one transaction:
its raw samples go to `lut_samples` and the entries of the keys it touches are re-aggregated from
every run's samples (`latency_lut.aggregate`) into `lut_entries`. A rejected batch writes nothing.
Rows are unique per (device, run id, key): a batch retried with the same samples is a no-op that
reports its rows as duplicates, while different samples under a (run id, key) already stored are a
conflict (a run measures a key once).
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from latency_lut import BUILTIN_DEVICES, LatencyEntry, SqlLatencyTable, needed_blocks
from latency_lut.aggregate import RunSamples, aggregate_runs
from latency_lut.key_checks import KeyProblem, key_problem, space_blocks
from latency_lut.measure import DEFAULT_TIMINGS
from latency_lut.sql_table import lut_entries, upsert_entries
from latency_lut.timings import Timing, check_timings, predecessors, split_timing_key, timing_key
from nas import utcnow
from search_spaces import BlockSpec, SearchSpace, SpaceError
from services.core.db import DeviceRow, SampleRow

_DEVICES = DeviceRow.__table__
_SAMPLES = SampleRow.__table__
_ENTRIES = lut_entries
# Keys per `IN (...)`, far below SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 500


class UnknownDeviceError(LookupError):
    """No device of that name is built in, registered or has a table."""

    def __init__(self, device: str, known: Sequence[str]):
        super().__init__(
            f"unknown device {device!r}: register it with POST /v1/devices (or `nas devices add`); "
            f"known devices: {list(known)}"
        )
        self.device = device
        self.known = list(known)


class DeviceConflictError(RuntimeError):
    """A device is registered again with a different runtime or hardware."""


class MeasurementConflictError(RuntimeError):
    """A batch carries samples for (run id, key) pairs already stored with other samples."""

    def __init__(self, run_id: str, fields: list[str], keys: list[str]):
        shown = ", ".join(repr(k) for k in keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        super().__init__(
            f"run {run_id!r} already uploaded different samples for {len(keys)} key(s): {shown}; a run "
            "measures each key once (start a new run id to measure again); nothing of this batch was written"
        )
        self.fields = fields
        self.keys = keys


class BadMeasurementError(SpaceError):
    """A row of a batch names a key that cannot belong to the batch's space (422, nothing written)."""


@dataclass(frozen=True)
class DeviceInfo:
    """A device as the API shows it: built in (measurable on the service host), registered by a farm,
    or known only by its table (imported)."""

    name: str
    runtime: str
    hardware: str
    backend: str | None
    description: str
    builtin: bool
    registered: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    entries: int = 0


@dataclass(frozen=True)
class MeasurementRow:
    """One key's samples in a batch, with the block's features when the agent computed them, for
    an in-context timing the key of the block it was timed after and, for a block with low-bit
    weights, how they ran (`latency_lut.low_bit.WeightKernel.provenance`)."""

    key: str
    samples_ms: Sequence[float]
    features: Mapping[str, int] | None = None
    after: str | None = None
    weight_kernel: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    entries_updated: int
    outlier_runs: int


@dataclass(frozen=True)
class WorkItem:
    """One entry a device lacks: a block, how to time it and, in context, the block to run before it."""

    spec: BlockSpec
    timing: Timing
    after: BlockSpec | None = None

    @property
    def key(self) -> str:
        """The table key the entry is stored under."""
        return timing_key(self.spec.key, self.timing)


@dataclass(frozen=True)
class WorkPage:
    """Entries the device lacks for a space (at its options, for some configs or all its blocks)."""

    needed: int
    missing: list[WorkItem]


def options_json(space: SearchSpace) -> str:
    """A space's options as canonical JSON (the key under which calibrations and caches live)."""
    return json.dumps(space.options, sort_keys=True)


class MeasurementStore:
    """Devices, raw samples and work lists of one database; see the module docstring."""

    def __init__(self, engine: Engine, lut: SqlLatencyTable):
        self.engine = engine
        self.lut = lut

    # ----------------------------------------------------------------- devices
    def register_device(
        self, name: str, *, runtime: str, hardware: str, description: str = "", metadata: Mapping[str, Any]
    ) -> tuple[DeviceInfo, bool]:
        """Register a device; returns it and whether it was created. Registering it again with the
        same runtime and hardware updates its description and metadata; a different runtime or
        hardware (or a built-in's name) raises `DeviceConflictError`."""
        builtin = BUILTIN_DEVICES.get(name)
        if builtin is not None and (builtin.runtime, builtin.hardware) != (runtime, hardware):
            raise DeviceConflictError(
                f"device {name!r} is built in (runtime {builtin.runtime!r}, hardware {builtin.hardware!r}); "
                "choose another name"
            )
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(_DEVICES).where(_DEVICES.c.name == name)).mappings().first()
            if row is not None and (row["runtime"], row["hardware"]) != (runtime, hardware):
                raise DeviceConflictError(
                    f"device {name!r} is registered with runtime {row['runtime']!r} and hardware "
                    f"{row['hardware']!r}; a device's runtime and hardware never change (register "
                    "another name for other hardware)"
                )
            values = {"description": description, "metadata": dict(metadata), "updated_at": utcnow()}
            if row is None:
                conn.execute(
                    _DEVICES.insert().values(
                        name=name, runtime=runtime, hardware=hardware, created_at=utcnow(), **values
                    )
                )
            else:
                conn.execute(_DEVICES.update().where(_DEVICES.c.name == name).values(**values))
        return self.device(name), row is None

    def devices(self) -> list[DeviceInfo]:
        """Built-in, registered and table-only devices, by name."""
        with self.engine.connect() as conn:
            rows = {r["name"]: r for r in conn.execute(sa.select(_DEVICES)).mappings()}
            counts = dict(
                conn.execute(sa.select(_ENTRIES.c.device, sa.func.count()).group_by(_ENTRIES.c.device)).all()
            )
        names = sorted(set(BUILTIN_DEVICES) | set(rows) | set(counts))
        return [self._info(name, rows.get(name), counts.get(name, 0)) for name in names]

    def device(self, name: str) -> DeviceInfo:
        """One device, or `UnknownDeviceError` naming the known ones."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_DEVICES).where(_DEVICES.c.name == name)).mappings().first()
            count = conn.execute(
                sa.select(sa.func.count()).select_from(_ENTRIES).where(_ENTRIES.c.device == name)
            ).scalar_one()
        if row is None and not count and name not in BUILTIN_DEVICES:
            raise UnknownDeviceError(name, [d.name for d in self.devices()])
        return self._info(name, row, count)

    @staticmethod
    def _info(name: str, row: Mapping[str, Any] | None, entries: int) -> DeviceInfo:
        builtin = BUILTIN_DEVICES.get(name)
        if row is not None:
            return DeviceInfo(
                name=name,
                runtime=row["runtime"],
                hardware=row["hardware"],
                backend=builtin.backend if builtin else None,
                description=row["description"] or (builtin.description if builtin else ""),
                builtin=builtin is not None,
                registered=True,
                metadata=dict(row["metadata"] or {}),
                entries=entries,
            )
        if builtin is not None:
            return DeviceInfo(
                name=name,
                runtime=builtin.runtime,
                hardware=builtin.hardware,
                backend=builtin.backend,
                description=builtin.description,
                builtin=True,
                registered=False,
                entries=entries,
            )
        return DeviceInfo(
            name=name,
            runtime="unknown",
            hardware="unknown",
            backend=None,
            description="known by its latency table (imported)",
            builtin=False,
            registered=False,
            entries=entries,
        )

    # ----------------------------------------------------------------- work lists
    def work(
        self,
        device: str,
        space: SearchSpace,
        configs: Iterable[Mapping[str, Any] | str] | None = None,
        timings: Iterable[str] = DEFAULT_TIMINGS,
    ) -> WorkPage:
        """The entries of `configs` (or of every block of the space) that the device's table lacks,
        for each of `timings`, block by block in the space's order; an in-context item names the
        block to time it after (`latency_lut.timings.predecessors`)."""
        self.device(device)
        wanted = check_timings(timings)
        canonical = None if configs is None else [space.canonicalize(c) for c in configs]
        specs = needed_blocks(space, canonical)
        items = [WorkItem(spec, t) for spec in specs for t in wanted]
        missing = set(self.lut.missing(device, [item.key for item in items]))
        todo = [item for item in items if item.key in missing]
        if any(item.timing == "in_context" for item in todo):
            before = predecessors(space, specs, canonical)
            todo = [
                WorkItem(item.spec, item.timing, before[item.spec.key])
                if item.timing == "in_context"
                else item
                for item in todo
            ]
        return WorkPage(needed=len(items), missing=todo)

    # ----------------------------------------------------------------- uploads
    def check_batch(self, space: SearchSpace, rows: Sequence[MeasurementRow]) -> None:
        """Raise `BadMeasurementError` (field `measurements[i].key` or `.after`) for a key that is
        malformed, repeated in the batch, or not a block of the space at its options (with a timing
        prefix, `latency_lut.timings`), and for an `after` that is not a block of the space."""
        blocks = space_blocks(space.name, space.options)
        first_seen: dict[str, int] = {}
        for i, row in enumerate(rows):
            where = f"measurements[{i}].key"
            if row.key in first_seen:
                raise BadMeasurementError(
                    f"{where}: key {row.key!r} appears twice in this batch (first at "
                    f"measurements[{first_seen[row.key]}]); a batch carries one row per key",
                    field=where,
                )
            first_seen[row.key] = i
            problem = key_problem(row.key, blocks)
            if problem is None and row.after is not None:
                where = f"measurements[{i}].after"
                problem = key_problem(row.after, blocks)
                if problem is None and split_timing_key(row.after)[0] != "isolated":
                    problem = KeyProblem(f"after {row.after!r} names a timing, not a block", "a block key")
            if problem is not None:
                raise BadMeasurementError(f"{where}: {problem.message}", field=where, allowed=problem.allowed)

    def ingest(
        self,
        device: str,
        *,
        run_id: str,
        space: SearchSpace,
        provenance: Mapping[str, Any],
        rows: Sequence[MeasurementRow],
    ) -> IngestResult:
        """Validate and store one batch of one run, and re-aggregate the entries of its keys."""
        self.device(device)
        self.check_batch(space, rows)
        context = {"space": space.name, "space_options": dict(space.options)}
        with self.transaction(device) as conn:
            existing = self._existing(conn, device, run_id, [row.key for row in rows])
            conflicts = [
                (i, row.key)
                for i, row in enumerate(rows)
                if row.key in existing and existing[row.key] != [float(v) for v in row.samples_ms]
            ]
            if conflicts:
                raise MeasurementConflictError(
                    run_id, [f"measurements[{i}].key" for i, _ in conflicts], [key for _, key in conflicts]
                )
            new = [row for row in rows if row.key not in existing]
            now = utcnow()
            records = [
                {
                    "device": device,
                    "run_id": run_id,
                    "key": row.key,
                    "kind": _kind(row.key),
                    "space": space.name,
                    "samples_ms": [float(v) for v in row.samples_ms],
                    "median_ms": RunSamples(run_id, row.samples_ms).median_ms,
                    "features": dict(row.features) if row.features is not None else None,
                    "provenance": {
                        **dict(provenance),
                        **context,
                        **_timing_of(row),
                        **dict(row.weight_kernel or {}),
                    },
                    "outlier": False,
                    "created_at": now,
                }
                for row in new
            ]
            for start in range(0, len(records), _CHUNK):
                conn.execute(_SAMPLES.insert(), records[start : start + _CHUNK])
            updated, outliers = self._reaggregate(conn, device, [row.key for row in new])
        return IngestResult(
            accepted=len(new), duplicates=len(rows) - len(new), entries_updated=updated, outlier_runs=outliers
        )

    def samples(self, device: str, key: str) -> list[dict[str, Any]]:
        """Every run's raw samples of one key, in upload order (what an entry was aggregated from)."""
        query = (
            sa.select(_SAMPLES)
            .where(_SAMPLES.c.device == device, _SAMPLES.c.key == key)
            .order_by(_SAMPLES.c.id)
        )
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    @contextlib.contextmanager
    def transaction(self, device: str) -> Iterator[Connection]:
        """A write transaction that no other upload to `device` runs beside: SQLite through the
        table's process lock, PostgreSQL through a transaction-scoped advisory lock per device, so two
        runs uploading the same key never aggregate without seeing each other's samples."""
        with self.lut.writing() as conn:
            if conn.dialect.name == "postgresql":
                lock_id = zlib.crc32(f"lut_samples:{device}".encode())
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_id)))
            yield conn

    @staticmethod
    def _existing(conn: Connection, device: str, run_id: str, keys: list[str]) -> dict[str, list[float]]:
        found: dict[str, list[float]] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            query = sa.select(_SAMPLES.c.key, _SAMPLES.c.samples_ms).where(
                _SAMPLES.c.device == device, _SAMPLES.c.run_id == run_id, _SAMPLES.c.key.in_(chunk)
            )
            found.update({key: [float(v) for v in samples] for key, samples in conn.execute(query)})
        return found

    def _reaggregate(self, conn: Connection, device: str, keys: list[str]) -> tuple[int, int]:
        """Recompute the entries of `keys` from all their runs; returns (entries written, outlier runs)."""
        by_key: dict[str, list[Mapping[str, Any]]] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            query = (
                sa.select(_SAMPLES)
                .where(_SAMPLES.c.device == device, _SAMPLES.c.key.in_(chunk))
                .order_by(_SAMPLES.c.id)
            )
            for row in conn.execute(query).mappings():
                by_key.setdefault(row["key"], []).append(row)
        entries: list[LatencyEntry] = []
        outliers = 0
        for key, rows in by_key.items():
            runs = [RunSamples(r["run_id"], r["samples_ms"], r["provenance"]) for r in rows]
            aggregate = aggregate_runs(runs)
            features = next((r["features"] for r in reversed(rows) if r["features"]), None)
            provenance = dict(aggregate.provenance)
            if features is not None:
                provenance["features"] = features
            entries.append(
                LatencyEntry(
                    device=device,
                    key=key,
                    median_ms=aggregate.median_ms,
                    p10_ms=aggregate.p10_ms,
                    p90_ms=aggregate.p90_ms,
                    count=aggregate.count,
                    kind=_kind(key),
                    provenance=provenance,
                )
            )
            flagged = set(aggregate.outlier_runs)
            if flagged or any(r["outlier"] for r in rows):
                outliers += len(flagged)
                for r in rows:
                    if r["outlier"] != (r["run_id"] in flagged):
                        conn.execute(
                            _SAMPLES.update().where(_SAMPLES.c.id == r["id"]).values(outlier=not r["outlier"])
                        )
        return upsert_entries(conn, entries), outliers


def _kind(key: str) -> str:
    """The block kind of a table key (of any timing)."""
    return split_timing_key(key)[1].split("|", 1)[0]


def _timing_of(row: MeasurementRow) -> dict[str, Any]:
    timing = split_timing_key(row.key)[0]
    return {"timing": timing, "after": row.after} if timing == "in_context" else {"timing": timing}
