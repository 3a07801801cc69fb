"""`TrialReads`: the read model the API and the dashboard serve trials and fronts from.

These are the queries a plain `TrialStore` does not need (the runner never makes them): keyset pages
of trials, a front's members as JSON text straight from the database, front membership and values of
many searches at once, and the trial totals of a finished search read from its row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from nas import Trial, TrialState
from services.core.db import SearchRow, SearchStatus, TrialRow
from services.core.trial_store import trial_from_row

_T = TrialRow.__table__

#: The scalar fields of a trial as the API shows it; `config`, `values` and `metrics` are JSON.
TRIAL_SCALARS = ("number", "config_id", "state", "feasible", "error", "duration_s", "finished_at")
_JSON_COLUMNS = ("config", "values", "metrics")
# A front's members go out as the database holds them: their JSON columns are read as text and
# spliced into the answer, not decoded and encoded again (that was most of the read's time at a few
# hundred members).
_MEMBER_COLUMNS = [
    *(_T.c[name] for name in TRIAL_SCALARS),
    *(sa.cast(_T.c[name], sa.Text).label(name) for name in _JSON_COLUMNS),
]


@dataclass(frozen=True)
class FrontPage:
    """One page of a front: each member as a JSON object (text), and the front's size."""

    members_json: list[str]
    total: int


class TrialReads:
    """Read-only queries over the `trials` table; each call is one short transaction."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def page_after(
        self, search_id: str, *, after: int, limit: int, state: TrialState | None = None
    ) -> list[Trial]:
        """Trials numbered above `after`, in number order (keyset paging: cheap at any depth)."""
        query = sa.select(_T).where(_T.c.search_id == search_id, _T.c.number > after)
        if state is not None:
            query = query.where(_T.c.state == TrialState(state).value)
        with self.engine.connect() as conn:
            return [trial_from_row(r) for r in conn.execute(query.order_by(_T.c.number).limit(limit))]

    def count(self, search: SearchRow, *, state: TrialState | None = None) -> int:
        """Trials of the search (in `state`). A search that succeeded or was cancelled had its counts
        written from the store when it stopped, and they no longer change: those are read from its
        row instead of counting 100,000 trials on every page (PostgreSQL counts by visiting rows)."""
        if SearchStatus(search.status) in (SearchStatus.SUCCEEDED, SearchStatus.CANCELLED):
            if state is None:
                return search.trials_done
            failed = search.trials_failed
            return failed if TrialState(state) == TrialState.FAILED else search.trials_done - failed
        query = sa.select(sa.func.count()).select_from(_T).where(_T.c.search_id == search.id)
        if state is not None:
            query = query.where(_T.c.state == TrialState(state).value)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def front_page(self, search_id: str, *, offset: int, limit: int) -> FrontPage:
        """The members of the search's front by number: the runner keeps front membership up to date
        as trials arrive (a flag on the trial rows, indexed with the search id), so this read costs
        the same at 100 trials and at 100,000."""
        of_front = (_T.c.search_id == search_id) & _T.c.on_front
        query = sa.select(*_MEMBER_COLUMNS).where(of_front).order_by(_T.c.number).offset(offset).limit(limit)
        with self.engine.connect() as conn:
            members = [_member_json(r) for r in conn.execute(query)]
            if offset == 0 and len(members) < limit:
                total = len(members)
            else:
                count = sa.select(sa.func.count()).select_from(_T).where(of_front)
                total = int(conn.execute(count).scalar_one())
        return FrontPage(members, total)

    def front_numbers(self, search_id: str) -> set[int]:
        """The numbers of the trials on the search's front."""
        query = sa.select(_T.c.number).where(_T.c.search_id == search_id, _T.c.on_front)
        with self.engine.connect() as conn:
            return set(conn.execute(query).scalars())

    def front_values(self, search_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """The objective values of every front member of each search (one query for all)."""
        ids = list(search_ids)
        if not ids:
            return {}
        query = sa.select(_T.c.search_id, _T.c["values"]).where(_T.c.search_id.in_(ids), _T.c.on_front)
        out: dict[str, list[dict[str, Any]]] = {}
        with self.engine.connect() as conn:
            for search_id, values in conn.execute(query):
                out.setdefault(search_id, []).append(values or {})
        return out

    def by_number(self, search_id: str, numbers: Iterable[int]) -> dict[int, Trial]:
        """The trials of the search with these numbers (those that exist)."""
        wanted = list(numbers)
        if not wanted:
            return {}
        query = sa.select(_T).where(_T.c.search_id == search_id, _T.c.number.in_(wanted))
        with self.engine.connect() as conn:
            trials = [trial_from_row(row) for row in conn.execute(query)]
        return {trial.number: trial for trial in trials}


def _member_json(row: sa.Row) -> str:
    m: Mapping[str, Any] = row._mapping
    finished = m["finished_at"]
    scalars = {
        "number": m["number"],
        "config_id": m["config_id"],
        "state": m["state"],
        "feasible": bool(m["feasible"]),
        "error": m["error"],
        "duration_s": float(m["duration_s"]),
        "finished_at": finished.isoformat().replace("+00:00", "Z") if finished is not None else None,
    }
    head = json.dumps(scalars, separators=(",", ":"))
    return f'{head[:-1]},"config":{m["config"]},"values":{m["values"]},"metrics":{m["metrics"]}}}'
