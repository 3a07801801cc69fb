"""`SqlTrialStore`: the `nas.trial_store.TrialStore` contract on the service database (SQLite or
PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from nas import DuplicateTrialError, Trial, TrialState, TrialStore
from services.core.db import SearchRow, TrialRow
from services.core.search_queue import LeaseLostError, SearchQueue

_T = TrialRow.__table__
_S = SearchRow.__table__


class UnknownSearchError(KeyError):
    """Trials can only be added to a search that has a row in `searches`."""


class SqlTrialStore(TrialStore):
    """Trials in the `trials` table; the front is the `on_front` flag of its members.

    Each call is one short transaction, so the store is safe to share between threads (the engine's
    pool gives each call its own connection).

    With `owner` (a scheduler's replica id) every write is fenced by that replica's lease on the
    search, in the write's own transaction: once another replica has reclaimed the search, `add` and
    `set_pareto` raise `LeaseLostError` and write nothing. The primary key (search id, number) makes a
    duplicate trial number impossible whoever writes it.
    """

    def __init__(self, engine: Engine, *, owner: str | None = None):
        self.engine = engine
        self.owner = owner
        self._queue = SearchQueue(engine)

    def _fence(self, conn: sa.Connection, search_id: str) -> None:
        if self.owner is not None and not self._queue.holds(conn, search_id, self.owner):
            raise LeaseLostError(search_id, self.owner)

    def add(self, search_id: str, trial: Trial) -> None:
        row = {
            "search_id": search_id,
            "number": trial.number,
            "config": dict(trial.config),
            "config_id": trial.config_id,
            "state": TrialState(trial.state).value,
            "values": dict(trial.values),
            "feasible": trial.feasible,
            "metrics": dict(trial.metrics),
            "error": trial.error,
            "duration_s": trial.duration_s,
            "finished_at": trial.finished_at,
            "on_front": False,
        }
        try:
            with self.engine.begin() as conn:
                self._fence(conn, search_id)
                conn.execute(sa.insert(_T), row)
        except IntegrityError:
            if self.get(search_id, trial.number) is not None:
                raise DuplicateTrialError(
                    f"trial {trial.number} of search {search_id} is already stored"
                ) from None
            raise UnknownSearchError(f"no search {search_id!r} to add trial {trial.number} to") from None

    def trials(
        self,
        search_id: str,
        *,
        offset: int = 0,
        limit: int | None = None,
        state: TrialState | None = None,
    ) -> list[Trial]:
        query = sa.select(_T).where(_T.c.search_id == search_id).order_by(_T.c.number)
        if state is not None:
            query = query.where(_T.c.state == TrialState(state).value)
        if offset:
            query = query.offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [trial_from_row(row) for row in conn.execute(query)]

    def get(self, search_id: str, number: int) -> Trial | None:
        query = sa.select(_T).where(_T.c.search_id == search_id, _T.c.number == number)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else trial_from_row(row)

    def count(self, search_id: str, *, state: TrialState | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(_T).where(_T.c.search_id == search_id)
        if state is not None:
            query = query.where(_T.c.state == TrialState(state).value)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def set_pareto(self, search_id: str, numbers: Iterable[int]) -> None:
        members = sorted(set(numbers))
        of_search = _T.c.search_id == search_id
        with self.engine.begin() as conn:
            self._fence(conn, search_id)
            if conn.dialect.name == "postgresql":
                # Serialise rewrites of one search's front on its row: two unfenced writers updating
                # the same trial rows in different orders would otherwise deadlock.
                conn.execute(sa.select(_S.c.id).where(_S.c.id == search_id).with_for_update())
            conn.execute(sa.update(_T).where(of_search, _T.c.on_front).values(on_front=False))
            if members:
                conn.execute(sa.update(_T).where(of_search, _T.c.number.in_(members)).values(on_front=True))

    def pareto(self, search_id: str) -> list[Trial]:
        query = sa.select(_T).where(_T.c.search_id == search_id, _T.c.on_front).order_by(_T.c.number)
        with self.engine.connect() as conn:
            return [trial_from_row(row) for row in conn.execute(query)]

    def config_ids(self, search_id: str) -> list[str]:
        """Config ids of a search's trials in trial order (for resume checks and the API)."""
        query = sa.select(_T.c.config_id).where(_T.c.search_id == search_id).order_by(_T.c.number)
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())


def trial_from_row(row: sa.Row) -> Trial:
    """A `trials` row as a `Trial`."""
    # Through the mapping: `values` and `count` would otherwise hit the tuple methods of `Row`.
    m = row._mapping
    return Trial(
        number=m["number"],
        config=m["config"],
        config_id=m["config_id"],
        state=TrialState(m["state"]),
        values=m["values"],
        feasible=m["feasible"],
        metrics=m["metrics"],
        error=m["error"],
        duration_s=m["duration_s"],
        finished_at=m["finished_at"],
    )
