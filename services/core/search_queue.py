"""`SearchQueue`: the `searches` table seen as a work queue.

The API enqueues and cancels, the scheduler claims, reports progress and finishes. Every state change
is one conditional UPDATE (`... WHERE id = :id AND status = :expected`), so two processes or threads
racing for the same search cannot both win.

Leases: a claim records the claiming scheduler replica (`claimed_by`) and `heartbeat_at`, which that
replica renews every `heartbeat_s`. A running search whose heartbeat is older than `lease_s` is stale:
any replica may claim it again, and it resumes from its stored trials. Every write a scheduler makes
for a search it runs is fenced by its lease (`holds`, `update(owner=...)`), so a replica that lost a
search (it stalled past its lease and another took over) can no longer write to it.

Ownership: `SearchQueue(engine, access=...)` (what the API gives each request, see
`services.core.auth.SearchAccess`) submits searches as its caller's, lists only the searches the
caller may read, answers `SearchNotFoundError` for one it may not read (as for an unknown id, so ids
of others' searches do not leak) and `SearchForbiddenError` for a cancel of a search it may read but
not manage. Without `access` (the scheduler, the CLI on the host) every search is reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from latency_lut import LatencyTable, known_devices
from nas import ResolvedSpec, SearchSpec, SpecError, resolve, utcnow
from nas.evaluate import fill_command
from nas.objectives import SpecErrors, UnknownDeviceError
from nas.proxies import DEFAULT_SUPERNET_DIR
from nas.runner import RunAbandoned
from search_spaces import FieldError, SpaceError, get_space
from services.core.auth import SearchAccess
from services.core.db import LEGACY_OWNER, DeviceRow, SearchRow, SearchStatus

_S = SearchRow.__table__


class SearchNotFoundError(LookupError):
    """No search has this id."""

    def __init__(self, search_id: str):
        super().__init__(f"no search with id {search_id!r}")
        self.search_id = search_id


class LeaseLostError(RunAbandoned):
    """This scheduler replica no longer holds the search's lease (another replica reclaimed it, or it
    is no longer running): it must stop the search and write nothing more for it."""

    def __init__(self, search_id: str, replica_id: str):
        super().__init__(f"replica {replica_id!r} no longer holds the lease of search {search_id}")
        self.search_id = search_id
        self.replica_id = replica_id


class SearchForbiddenError(PermissionError):
    """The caller may read the search but not change it (it belongs to another owner)."""


class SearchStateError(RuntimeError):
    """The search is in a state that does not allow the operation (e.g. cancelling a finished one)."""


def check_spec(
    spec: SearchSpec, table: LatencyTable, *, supernet_dir: str | Path = DEFAULT_SUPERNET_DIR
) -> ResolvedSpec:
    """Resolve a spec against the registered spaces and strategies, the devices known here (built-in
    or with a table) and the supernets trained under `supernet_dir`, and build its strategy once so bad
    `strategy_params` fail now, not when the search runs. Raises `SpecError` naming the field."""
    from nas.strategies import make_strategy

    try:
        resolved = resolve(spec, known_devices(table.devices()), supernet_dir=supernet_dir)
    except SpecError as exc:
        raise _point_to_farms(exc, spec, table) from None
    make_strategy(
        spec.strategy,
        resolved.space,
        resolved.objectives,
        resolved.constraints,
        seed=spec.seed,
        **spec.strategy_params,
    )
    return resolved


def spec_warnings(resolved: ResolvedSpec, table: LatencyTable) -> list[str]:
    """What the spec will likely not achieve, said at submit: a budget too small for the strategy's
    latency target (`Strategy.budget_warnings`), with latencies estimated from the device's table
    (block sums; none where the table lacks a block: then only a budget that buys no step at all is
    reported)."""
    from latency_lut.predictors import BlockSum, TableView
    from nas.strategies import make_strategy

    spec = resolved.spec
    strategy = make_strategy(
        spec.strategy,
        resolved.space,
        resolved.objectives,
        resolved.constraints,
        seed=spec.seed,
        **spec.strategy_params,
    )
    target = strategy.latency_target()
    latency = None
    if target is not None:
        objective = next(
            (
                o
                for o in [*resolved.objectives, *(c.objective for c in resolved.constraints)]
                if o.name == target[0]
            ),
            None,
        )
        if objective is not None and objective.device:
            predictor = BlockSum(TableView.from_entries(objective.device, table.entries(objective.device)))

            def latency(config: dict[str, Any]) -> float | None:
                estimate = predictor.predict(resolved.space.blocks(config))
                return estimate.total_ms if estimate.complete else None

    return strategy.budget_warnings(spec.budget.trials, latency)


def _point_to_farms(error: SpecError, spec: SearchSpec, table: LatencyTable) -> SpecError:
    """`error` with each unknown device that is registered (a farm's device whose table is still
    empty) explained: it has no table yet, and the command that fills it for this space."""
    errors: list[FieldError] = list(error.errors) if isinstance(error, SpecErrors) else [error]
    unknown = {e.device for e in errors if isinstance(e, UnknownDeviceError)}
    engine = getattr(table, "engine", None)
    if not unknown or engine is None:
        return error
    with engine.connect() as conn:
        registered = set(conn.scalars(sa.select(DeviceRow.name).where(DeviceRow.name.in_(unknown))))
    if not registered:
        return error
    try:
        space = get_space(spec.space, **spec.space_options)
    except SpaceError:
        space = None
    pointed: list[FieldError] = []
    for e in errors:
        if isinstance(e, UnknownDeviceError) and e.device in registered:
            how = (
                fill_command(e.device, space)
                if space is not None
                else f"run `nas farm run --device {e.device} --space SPACE` on that device to fill it"
            )
            e = SpecError(
                f"device {e.device!r} is registered but has no latency table yet; {how}, then submit again "
                f"(GET /v1/devices/{e.device} shows its entries)",
                field=e.field,
                allowed=e.allowed,
            )
        pointed.append(e)
    return pointed[0] if len(pointed) == 1 else SpecErrors(pointed)


def _transition(status: SearchStatus, message: str, now: datetime, **values: Any) -> dict[str, Any]:
    """The column values of a move to `status`: its message and `updated_at`, `finished_at` for a
    final status, and (unless `values` say otherwise) no claimant and no heartbeat."""
    out: dict[str, Any] = {"claimed_by": None, "heartbeat_at": None, **values}
    out.update(status=status.value, status_message=message, updated_at=now)
    if status.finished:
        out["finished_at"] = now
    return out


@dataclass(frozen=True)
class QueueFigures:
    """The service's searches in numbers (see `SearchQueue.figures`)."""

    searches_by_status: dict[str, int]
    trials_done: int
    trials_failed: int
    trials_per_second: float
    trials_in_flight: int


class SearchQueue:
    """Create, read, claim and update rows of `searches`; see the module docstring."""

    def __init__(self, engine: Engine, *, access: SearchAccess | None = None):
        self.engine = engine
        self.access = access

    def with_access(self, access: SearchAccess | None) -> SearchQueue:
        """This queue as the caller with `access` sees it (see the module docstring)."""
        return SearchQueue(self.engine, access=access)

    # ----------------------------------------------------------------- API side
    def submit(self, spec: SearchSpec, *, warnings: Sequence[str] = ()) -> SearchRow:
        """Store a validated spec as a `queued` search, owned by the caller (`legacy` without one),
        with the `warnings` said at submit (`spec_warnings`; the run adds its own when it ends)."""
        row = SearchRow(
            warnings=list(warnings) or None,
            owner=self.access.submit_as if self.access is not None else LEGACY_OWNER,
            name=spec.name,
            spec=spec.model_dump(mode="json"),
            status=SearchStatus.QUEUED.value,
            status_message="queued",
            budget_trials=spec.budget.trials,
        )
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            session.add(row)
        return row

    def get(self, search_id: str) -> SearchRow:
        with Session(self.engine, expire_on_commit=False) as session:
            row = session.get(SearchRow, search_id)
        if row is None or (self.access is not None and not self.access.may_read(row.owner)):
            raise SearchNotFoundError(search_id)
        return row

    def page(
        self, *, status: Sequence[SearchStatus] = (), text: str = "", offset: int = 0, limit: int = 50
    ) -> tuple[list[SearchRow], int]:
        """A page of searches, newest first, and the total count matching `status` and `text` (a
        case-insensitive part of the name or id, matched literally: `%` and `_` are no wildcards)."""
        where: list[sa.ColumnElement[bool]] = []
        if status:
            where.append(SearchRow.status.in_([s.value for s in status]))
        if self.access is not None and not self.access.read_all:
            where.append(SearchRow.owner.in_(sorted(self.access.owners)))
        if text.strip():
            # `autoescape`: the text is matched literally (`%`, `_` and `/` are no wildcards).
            needle = text.strip().lower()
            where.append(
                sa.or_(
                    sa.func.lower(SearchRow.name).contains(needle, autoescape=True),
                    SearchRow.id.contains(needle, autoescape=True),
                )
            )
        # The total comes from the same statement (a window count), so it is consistent with the
        # rows even while searches change status; only an empty page needs a separate count.
        query = (
            sa.select(SearchRow, sa.func.count().over().label("total"))
            .where(*where)
            .order_by(SearchRow.created_at.desc(), SearchRow.id)
            .offset(offset)
            .limit(limit)
        )
        total_query = sa.select(sa.func.count()).select_from(SearchRow).where(*where)
        with Session(self.engine, expire_on_commit=False) as session:
            result = session.execute(query).all()
            rows = [row[0] for row in result]
            total = int(result[0][1]) if result else int(session.scalar(total_query) or 0)
        return rows, total

    def figures(self) -> QueueFigures:
        """Searches by status, trials recorded and failed, and the throughput and evaluations in
        flight of the running searches: aggregates over `searches`, never a scan of `trials`, so this
        costs the same at any number of trials (what `/metrics` serves)."""
        by_status = dict.fromkeys((s.value for s in SearchStatus), 0)
        totals = sa.select(
            sa.func.coalesce(sa.func.sum(_S.c.trials_done), 0),
            sa.func.coalesce(sa.func.sum(_S.c.trials_failed), 0),
        )
        running = sa.select(_S.c.trials_done, _S.c.elapsed_s, _S.c.budget_trials, _S.c.spec).where(
            _S.c.status == SearchStatus.RUNNING.value
        )
        rate, in_flight = 0.0, 0
        with self.engine.connect() as conn:
            for status, count in conn.execute(sa.select(_S.c.status, sa.func.count()).group_by(_S.c.status)):
                by_status[status] = int(count)
            done, failed = (int(v) for v in conn.execute(totals).one())
            for trials_done, elapsed_s, budget, spec in conn.execute(running):
                if trials_done and elapsed_s > 0:
                    rate += trials_done / elapsed_s
                parallelism = int(((spec or {}).get("budget") or {}).get("parallelism") or 1)
                in_flight += min(parallelism, max(0, budget - trials_done))
        return QueueFigures(by_status, done, failed, rate, in_flight)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(_S)).scalar_one())

    def cancel(self, search_id: str) -> SearchRow:
        """Queued -> cancelled at once; running -> `cancel_requested` (the scheduler stops it between
        trials); finished -> `SearchStateError`. A caller that may read but not manage the search:
        `SearchForbiddenError`."""
        owner = self.get(search_id).owner
        if self.access is not None and not self.access.may_manage(owner):
            raise SearchForbiddenError(
                f"search {search_id} belongs to {owner!r}; only its owner (a key named {owner!r} or of "
                f"team {owner!r}) or an admin key may cancel it"
            )
        now = utcnow()
        with self.engine.begin() as conn:
            done = conn.execute(
                sa.update(_S)
                .where(_S.c.id == search_id, _S.c.status == SearchStatus.QUEUED.value)
                .values(
                    _transition(
                        SearchStatus.CANCELLED, "cancelled before it started", now, cancel_requested=True
                    )
                )
            ).rowcount
            if not done:
                conn.execute(
                    sa.update(_S)
                    .where(_S.c.id == search_id, _S.c.status == SearchStatus.RUNNING.value)
                    .values(cancel_requested=True, status_message="cancel requested", updated_at=now)
                )
        row = self.get(search_id)
        if not done and SearchStatus(row.status).finished:
            raise SearchStateError(
                f"search {search_id} has already finished with status {row.status!r}; only queued or "
                "running searches can be cancelled"
            )
        return row

    # ----------------------------------------------------------------- scheduler side
    def claim_next(self, replica_id: str | None = None, *, lease_s: float | None = None) -> str | None:
        """Atomically claim the oldest claimable search for `replica_id` and mark it `running`, with its
        `claimed_by` and a fresh `heartbeat_at`; its id, or None when there is nothing to claim.

        Claimable: `queued` searches, and with `lease_s`, also `running` ones whose lease is stale (see
        `stale`): a replica that died left them, and they resume from their stored trials. A stale one
        whose cancel was requested is finished as `cancelled` instead of being claimed.

        On PostgreSQL the candidates are locked with `SELECT ... FOR UPDATE SKIP LOCKED`, so replicas
        polling at once take different rows instead of queueing behind one; everywhere, the claim is
        the conditional UPDATE (`WHERE` the row is still claimable), so two claimers cannot both win.
        """
        claimable = _S.c.status == SearchStatus.QUEUED.value
        if lease_s is not None:
            claimable = sa.or_(claimable, self.stale(lease_s))
        candidates = sa.select(_S.c.id, _S.c.status, _S.c.cancel_requested).where(claimable)
        candidates = candidates.order_by(_S.c.created_at, _S.c.id).limit(8)
        if self.engine.dialect.name == "postgresql":
            with self.engine.begin() as conn:
                for row in conn.execute(candidates.with_for_update(skip_locked=True)).all():
                    if self._claim_one(conn, row, claimable, replica_id):
                        return row.id
            return None
        # SQLite: the read outside the write transactions, so a claim never upgrades a stale snapshot.
        with self.engine.connect() as conn:
            rows = conn.execute(candidates).all()
        for row in rows:
            with self.engine.begin() as conn:
                if self._claim_one(conn, row, claimable, replica_id):
                    return row.id
        return None

    def _claim_one(self, conn: sa.Connection, row: sa.Row, claimable: Any, replica_id: str | None) -> bool:
        now = utcnow()
        still = sa.and_(_S.c.id == row.id, claimable)
        if row.status == SearchStatus.RUNNING.value and row.cancel_requested:
            conn.execute(
                sa.update(_S)
                .where(still)
                .values(
                    _transition(
                        SearchStatus.CANCELLED,
                        "cancelled (its scheduler stopped while the cancel was pending)",
                        now,
                    )
                )
            )
            return False
        message = "starting" if row.status == SearchStatus.QUEUED.value else "reclaimed after a lost lease"
        won = conn.execute(
            sa.update(_S)
            .where(still)
            .values(
                _transition(
                    SearchStatus.RUNNING,
                    message,
                    now,
                    claimed_by=replica_id,
                    heartbeat_at=now,
                    claims=_S.c.claims + 1,
                    started_at=sa.func.coalesce(_S.c.started_at, now),
                )
            )
        ).rowcount
        return bool(won)

    @staticmethod
    def stale(lease_s: float, *, now: datetime | None = None) -> sa.ColumnElement[bool]:
        """`running` searches without a live lease: no claimant (claimed without a replica id), no
        heartbeat, or a heartbeat older than `lease_s` seconds."""
        cutoff = (now or utcnow()) - timedelta(seconds=lease_s)
        return sa.and_(
            _S.c.status == SearchStatus.RUNNING.value,
            sa.or_(_S.c.claimed_by.is_(None), _S.c.heartbeat_at.is_(None), _S.c.heartbeat_at < cutoff),
        )

    def heartbeat(self, search_ids: Sequence[str], replica_id: str) -> list[str]:
        """Renew `replica_id`'s leases on `search_ids`; returns the ids whose lease it no longer holds
        (another replica reclaimed the search, or it is no longer running)."""
        lost = []
        for search_id in search_ids:
            with self.engine.begin() as conn:
                held = conn.execute(
                    sa.update(_S)
                    .where(self._owned(search_id, replica_id))
                    .values(heartbeat_at=utcnow(), updated_at=_S.c.updated_at)
                ).rowcount
            if not held:
                lost.append(search_id)
        return lost

    def holds(self, conn: sa.Connection, search_id: str, replica_id: str) -> bool:
        """Inside a write transaction: whether `replica_id` holds the lease of `search_id`, such that
        nobody can take it before the transaction ends. The fence of every write a scheduler makes for
        a search.

        PostgreSQL: `SELECT ... FOR SHARE` locks the row, so a reclaiming UPDATE waits for our commit
        (and then finds the heartbeat renewed or not). SQLite: write transactions begin with
        `BEGIN IMMEDIATE` (see `services.core.db.SqliteWriteGate`), so nothing commits between this read and
        our writes; even without that, a write after another connection's commit fails (stale
        snapshot) rather than landing.
        """
        query = sa.select(_S.c.id).where(self._owned(search_id, replica_id)).with_for_update(read=True)
        return conn.execute(query).first() is not None

    @staticmethod
    def _owned(search_id: str, replica_id: str) -> sa.ColumnElement[bool]:
        return sa.and_(
            _S.c.id == search_id,
            _S.c.status == SearchStatus.RUNNING.value,
            _S.c.claimed_by == replica_id,
        )

    def requeue_orphans(self, lease_s: float = 0.0, *, replica_id: str | None = None) -> list[str]:
        """Searches left `running` without a live lease (see `stale`), and with `replica_id` also those
        claimed under that id (a restarted replica with a stable id: it knows they are orphans), go
        back to `queued` (they resume from their stored trials); those whose cancel was already
        requested become `cancelled`. Returns their ids.

        Safe with several schedulers on one database: a search whose claimant heartbeats within
        `lease_s` is left alone.
        """
        now = utcnow()
        orphan = self.stale(lease_s, now=now)
        if replica_id is not None:
            orphan = sa.or_(
                orphan,
                sa.and_(_S.c.status == SearchStatus.RUNNING.value, _S.c.claimed_by == replica_id),
            )
        with self.engine.begin() as conn:
            ids = list(conn.execute(sa.select(_S.c.id).where(orphan)).scalars())
            if not ids:
                return []
            mine = sa.and_(_S.c.id.in_(ids), orphan)
            conn.execute(
                sa.update(_S)
                .where(mine, _S.c.cancel_requested)
                .values(
                    _transition(
                        SearchStatus.CANCELLED,
                        "cancelled (the service stopped while the cancel was pending)",
                        now,
                    )
                )
            )
            conn.execute(
                sa.update(_S)
                .where(mine)
                .values(
                    _transition(
                        SearchStatus.QUEUED,
                        "queued again after its scheduler stopped; resumes from its stored trials",
                        now,
                    )
                )
            )
        return ids

    def cancel_requested(self, search_id: str) -> bool:
        with self.engine.connect() as conn:
            flag = conn.execute(sa.select(_S.c.cancel_requested).where(_S.c.id == search_id)).scalar()
        return bool(flag)

    def update(self, search_id: str, *, owner: str | None = None, **values: Any) -> bool:
        """Set columns of a search (progress, status message). With `owner`, only while that replica
        holds the search's lease; returns whether the row was written."""
        values.setdefault("updated_at", utcnow())
        where = self._owned(search_id, owner) if owner is not None else _S.c.id == search_id
        with self.engine.begin() as conn:
            return bool(conn.execute(sa.update(_S).where(where).values(**values)).rowcount)

    def finish(
        self,
        search_id: str,
        status: SearchStatus,
        *,
        message: str,
        error: str | None = None,
        finished_at: datetime | None = None,
        owner: str | None = None,
        **values: Any,
    ) -> bool:
        """Write a search's final (or, for `queued`, interrupted) status. With `owner`, only while that
        replica holds the lease; returns whether the row was written. A finished search keeps the id
        of the replica that ran it in `claimed_by`; a requeued one is released."""
        now = utcnow()
        final = status.finished
        if not final:
            values.update(claimed_by=None, heartbeat_at=None)
        return self.update(
            search_id,
            owner=owner,
            status=status.value,
            status_message=message,
            error=error,
            finished_at=(finished_at or now) if final else None,
            updated_at=now,
            **values,
        )
