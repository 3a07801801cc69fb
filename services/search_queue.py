"""`SearchQueue`: the `searches` table seen as a work queue.

The API enqueues and cancels, the scheduler claims, reports progress and finishes. Every state change
is one conditional UPDATE (`... WHERE id = :id AND status = :expected`), so two processes or threads
racing for the same search cannot both win.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from latency_lut import LatencyTable, known_devices
from nas import ResolvedSpec, SearchSpec, resolve
from services.db import SearchRow, SearchStatus, utcnow

_S = SearchRow.__table__


class SearchNotFoundError(LookupError):
    """No search has this id."""

    def __init__(self, search_id: str):
        super().__init__(f"no search with id {search_id!r}")
        self.search_id = search_id


class SearchStateError(RuntimeError):
    """The search is in a state that does not allow the operation (e.g. cancelling a finished one)."""


def check_spec(spec: SearchSpec, table: LatencyTable) -> ResolvedSpec:
    """Resolve a spec against the registered spaces and strategies and the devices known here
    (built-in or with a table), and build its strategy once so bad `strategy_params` fail now, not
    when the search runs. Raises `SpecError` naming the field."""
    from nas.strategies import make_strategy

    resolved = resolve(spec, known_devices(table.devices()))
    make_strategy(
        spec.strategy,
        resolved.space,
        resolved.objectives,
        resolved.constraints,
        seed=spec.seed,
        **spec.strategy_params,
    )
    return resolved


class SearchQueue:
    """Create, read, claim and update rows of `searches`; see the module docstring."""

    def __init__(self, engine: Engine):
        self.engine = engine

    # ----------------------------------------------------------------- API side
    def submit(self, spec: SearchSpec) -> SearchRow:
        """Store a validated spec as a `queued` search."""
        row = SearchRow(
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
        if row is None:
            raise SearchNotFoundError(search_id)
        return row

    def page(
        self, *, status: Sequence[SearchStatus] = (), offset: int = 0, limit: int = 50
    ) -> tuple[list[SearchRow], int]:
        """A page of searches, newest first, and the total count matching `status`."""
        where = [SearchRow.status.in_([s.value for s in status])] if status else []
        query = (
            sa.select(SearchRow)
            .where(*where)
            .order_by(SearchRow.created_at.desc(), SearchRow.id)
            .offset(offset)
            .limit(limit)
        )
        total_query = sa.select(sa.func.count()).select_from(SearchRow).where(*where)
        with Session(self.engine, expire_on_commit=False) as session:
            rows = list(session.scalars(query))
            total = int(session.scalar(total_query) or 0)
        return rows, total

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(_S)).scalar_one())

    def cancel(self, search_id: str) -> SearchRow:
        """Queued -> cancelled at once; running -> `cancel_requested` (the scheduler stops it between
        trials); finished -> `SearchStateError`."""
        now = utcnow()
        with self.engine.begin() as conn:
            done = conn.execute(
                sa.update(_S)
                .where(_S.c.id == search_id, _S.c.status == SearchStatus.QUEUED.value)
                .values(
                    status=SearchStatus.CANCELLED.value,
                    status_message="cancelled before it started",
                    cancel_requested=True,
                    finished_at=now,
                    updated_at=now,
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
    def claim_next(self) -> str | None:
        """Atomically move the oldest queued search to `running`; its id, or None when none is queued."""
        candidates = sa.select(_S.c.id).where(_S.c.status == SearchStatus.QUEUED.value)
        candidates = candidates.order_by(_S.c.created_at, _S.c.id).limit(8)
        with self.engine.connect() as conn:
            ids = list(conn.execute(candidates).scalars())
        for search_id in ids:
            now = utcnow()
            with self.engine.begin() as conn:
                won = conn.execute(
                    sa.update(_S)
                    .where(_S.c.id == search_id, _S.c.status == SearchStatus.QUEUED.value)
                    .values(
                        status=SearchStatus.RUNNING.value,
                        status_message="starting",
                        started_at=sa.func.coalesce(_S.c.started_at, now),
                        updated_at=now,
                    )
                ).rowcount
            if won:
                return search_id
        return None

    def requeue_orphans(self) -> list[str]:
        """Searches left `running` by a process that died go back to `queued` (they resume from their
        stored trials); those whose cancel was already requested become `cancelled`.

        Assumes one scheduler per database: a second live scheduler's searches would be requeued too.
        """
        now = utcnow()
        running = _S.c.status == SearchStatus.RUNNING.value
        with self.engine.begin() as conn:
            ids = list(conn.execute(sa.select(_S.c.id).where(running)).scalars())
            conn.execute(
                sa.update(_S)
                .where(running, _S.c.cancel_requested)
                .values(
                    status=SearchStatus.CANCELLED.value,
                    status_message="cancelled (the service stopped while the cancel was pending)",
                    finished_at=now,
                    updated_at=now,
                )
            )
            conn.execute(
                sa.update(_S)
                .where(running)
                .values(
                    status=SearchStatus.QUEUED.value,
                    status_message="queued again after a restart; resumes from its stored trials",
                    updated_at=now,
                )
            )
        return ids

    def cancel_requested(self, search_id: str) -> bool:
        with self.engine.connect() as conn:
            flag = conn.execute(sa.select(_S.c.cancel_requested).where(_S.c.id == search_id)).scalar()
        return bool(flag)

    def update(self, search_id: str, **values: Any) -> None:
        """Set columns of a running search (progress, status message)."""
        values.setdefault("updated_at", utcnow())
        with self.engine.begin() as conn:
            conn.execute(sa.update(_S).where(_S.c.id == search_id).values(**values))

    def finish(
        self,
        search_id: str,
        status: SearchStatus,
        *,
        message: str,
        error: str | None = None,
        finished_at: datetime | None = None,
        **values: Any,
    ) -> None:
        """Write a search's final (or, for `queued`, interrupted) status."""
        now = utcnow()
        final = status.finished
        self.update(
            search_id,
            status=status.value,
            status_message=message,
            error=error,
            finished_at=(finished_at or now) if final else None,
            updated_at=now,
            **values,
        )
