"""The `TrialStore` contract (nas/trial_store.py), run against every implementation: in memory, SQL on a
SQLite file, SQL on PostgreSQL (skipped with a reason when no server answers)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from nas import DuplicateTrialError, MemoryTrialStore, SearchSpec, Trial, TrialState, TrialStore
from services.core.db import SearchRow, TrialRow
from services.core.search_queue import SearchQueue
from services.core.trial_store import SqlTrialStore, UnknownSearchError


@dataclass
class StoreCase:
    """A store plus a way to make a fresh search id it accepts (SQL stores need a `searches` row)."""

    store: TrialStore
    new_search: Callable[[], str]
    created: list[str] = field(default_factory=list)


def delete_searches(engine: Engine, ids: list[str]) -> None:
    """Remove this run's searches and trials from a database other runs may share."""
    if ids:
        with engine.begin() as conn:
            conn.execute(sa.delete(TrialRow).where(TrialRow.search_id.in_(ids)))
            conn.execute(sa.delete(SearchRow).where(SearchRow.id.in_(ids)))


def _sql_case(engine: Engine) -> StoreCase:
    queue = SearchQueue(engine)
    case = StoreCase(store=SqlTrialStore(engine), new_search=lambda: "")

    def new_search() -> str:
        spec = SearchSpec(name=f"conformance-{uuid.uuid4().hex[:8]}", space="any", objectives=["params"])
        search_id = queue.submit(spec).id
        case.created.append(search_id)
        return search_id

    case.new_search = new_search
    return case


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def case(request) -> Iterator[StoreCase]:
    if request.param == "memory":
        yield StoreCase(store=MemoryTrialStore(), new_search=lambda: uuid.uuid4().hex)
        return
    engine = request.getfixturevalue(f"{request.param}_engine")
    sql_case = _sql_case(engine)
    yield sql_case
    delete_searches(engine, sql_case.created)


def make_trial(number: int, **overrides) -> Trial:
    base = dict(
        number=number,
        config={"stage1.depth": 2, "stage2.width": 48, "act": "gelu", "scale": 0.75, "flag": True},
        config_id=f"cfg{number:04d}",
        values={"latency:host-cpu-torch": 0.1 + 0.2 + number, "params": 1234567.0 + number},
        feasible=True,
        metrics={"coverage": 1.0, "blocks": [1, 2, 3], "nested": {"a": None, "b": "x"}, "tiny": 1e-300},
        duration_s=0.30000000000000004,
        finished_at=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC) + timedelta(seconds=number),
    )
    base.update(overrides)
    return Trial(**base)


class TestTrialStoreConformance:
    def test_trial_reads_back_equal(self, case: StoreCase) -> None:
        sid = case.new_search()
        trial = make_trial(0)
        case.store.add(sid, trial)
        assert case.store.trials(sid) == [trial]
        got = case.store.get(sid, 0)
        assert got == trial
        assert got.values["latency:host-cpu-torch"] == 0.1 + 0.2  # exact, not approximately
        assert got.finished_at.tzinfo is not None and got.finished_at == trial.finished_at

    def test_failed_trial_reads_back_with_error(self, case: StoreCase) -> None:
        sid = case.new_search()
        trial = make_trial(0, state=TrialState.FAILED, values={}, error="RuntimeError: boom", feasible=True)
        case.store.add(sid, trial)
        [got] = case.store.trials(sid)
        assert got.state is TrialState.FAILED
        assert got.error == "RuntimeError: boom" and got.values == {}

    def test_duplicate_number_raises_and_changes_nothing(self, case: StoreCase) -> None:
        sid = case.new_search()
        first = make_trial(0)
        case.store.add(sid, first)
        with pytest.raises(DuplicateTrialError):
            case.store.add(sid, make_trial(0, config_id="other", values={"params": 1.0}))
        assert case.store.trials(sid) == [first]
        assert case.store.count(sid) == 1

    def test_ordered_by_number_and_paginated(self, case: StoreCase) -> None:
        sid = case.new_search()
        for number in [3, 0, 4, 1, 2]:
            case.store.add(sid, make_trial(number))
        assert [t.number for t in case.store.trials(sid)] == [0, 1, 2, 3, 4]
        assert [t.number for t in case.store.trials(sid, offset=1, limit=2)] == [1, 2]
        assert [t.number for t in case.store.trials(sid, offset=3)] == [3, 4]
        assert case.store.trials(sid, offset=10) == []
        assert case.store.trials(sid, limit=0) == []

    def test_state_filter_and_count(self, case: StoreCase) -> None:
        sid = case.new_search()
        for number in range(6):
            failed = number % 3 == 1
            state = TrialState.FAILED if failed else TrialState.COMPLETE
            case.store.add(sid, make_trial(number, state=state, error="x" if failed else None))
        failed = case.store.trials(sid, state=TrialState.FAILED)
        assert [t.number for t in failed] == [1, 4]
        complete = case.store.trials(sid, state=TrialState.COMPLETE, offset=1, limit=2)
        assert [t.number for t in complete] == [2, 3]
        assert case.store.count(sid) == 6
        assert case.store.count(sid, state=TrialState.FAILED) == 2
        assert case.store.count(sid, state=TrialState.COMPLETE) == 4

    def test_get_missing_is_none(self, case: StoreCase) -> None:
        sid = case.new_search()
        case.store.add(sid, make_trial(0))
        assert case.store.get(sid, 1) is None
        assert case.store.get(case.new_search(), 0) is None

    def test_searches_are_separate(self, case: StoreCase) -> None:
        a, b = case.new_search(), case.new_search()
        case.store.add(a, make_trial(0))
        case.store.add(b, make_trial(0, config_id="b0"))
        case.store.add(b, make_trial(1, config_id="b1"))
        case.store.set_pareto(a, [0])
        assert [t.config_id for t in case.store.trials(a)] == ["cfg0000"]
        assert [t.config_id for t in case.store.trials(b)] == ["b0", "b1"]
        assert case.store.count(a) == 1 and case.store.count(b) == 2
        assert case.store.pareto(b) == []
        assert [t.number for t in case.store.pareto(a)] == [0]

    def test_empty_search(self, case: StoreCase) -> None:
        sid = case.new_search()
        assert case.store.trials(sid) == []
        assert case.store.count(sid) == 0
        assert case.store.pareto(sid) == []

    def test_set_pareto_replaces_the_front(self, case: StoreCase) -> None:
        sid = case.new_search()
        trials = [make_trial(n) for n in range(5)]
        for trial in trials:
            case.store.add(sid, trial)
        case.store.set_pareto(sid, [3, 0, 1])
        assert case.store.pareto(sid) == [trials[0], trials[1], trials[3]]
        case.store.set_pareto(sid, (n for n in [4, 1]))
        assert [t.number for t in case.store.pareto(sid)] == [1, 4]
        case.store.set_pareto(sid, [])
        assert case.store.pareto(sid) == []
        # The front is a flag on the trials, not a copy: the trials themselves are unchanged.
        assert case.store.trials(sid) == trials

    def test_returned_trials_are_copies(self, case: StoreCase) -> None:
        sid = case.new_search()
        case.store.add(sid, make_trial(0))
        got = case.store.trials(sid)[0]
        got.config["stage1.depth"] = 99
        got.values.clear()
        assert case.store.get(sid, 0) == make_trial(0)

    def test_concurrent_adds_from_threads(self, case: StoreCase) -> None:
        sid = case.new_search()
        errors: list[BaseException] = []

        def writer(start: int) -> None:
            try:
                for number in range(start, 40, 4):
                    case.store.add(sid, make_trial(number))
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert [t.number for t in case.store.trials(sid)] == list(range(40))

    def test_racing_duplicates_store_exactly_one(self, case: StoreCase) -> None:
        sid = case.new_search()
        outcomes: list[str] = []
        lock = threading.Lock()

        def writer(tag: int) -> None:
            try:
                case.store.add(sid, make_trial(0, config_id=f"writer{tag}"))
                result = "stored"
            except DuplicateTrialError:
                result = "duplicate"
            with lock:
                outcomes.append(result)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["duplicate"] * 3 + ["stored"]
        assert case.store.count(sid) == 1


# ----------------------------------------------------------------------------- SQL stores only
# What `SqlTrialStore` adds to the contract (the database's constraints), on both databases.
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_case(request) -> Iterator[tuple[Engine, StoreCase]]:
    engine = request.getfixturevalue(f"{request.param}_engine")
    case = _sql_case(engine)
    yield engine, case
    delete_searches(engine, case.created)


def test_sql_store_refuses_trials_of_unknown_search(sql_case: tuple[Engine, StoreCase]) -> None:
    store = sql_case[1].store
    with pytest.raises(UnknownSearchError, match="no search 'nope'"):
        store.add("nope", make_trial(0))
    assert store.count("nope") == 0


def test_sql_store_config_ids_in_trial_order(sql_case: tuple[Engine, StoreCase]) -> None:
    _, case = sql_case
    sid = case.new_search()
    for number in (2, 0, 1):
        case.store.add(sid, make_trial(number, config_id=f"id-{number}"))
    assert isinstance(case.store, SqlTrialStore)
    assert case.store.config_ids(sid) == ["id-0", "id-1", "id-2"]


def test_sql_store_values_survive_the_database_exactly(sql_case: tuple[Engine, StoreCase]) -> None:
    """JSON columns on both databases: big integers, unicode, nesting, extreme floats, booleans."""
    _, case = sql_case
    sid = case.new_search()
    trial = make_trial(
        0,
        config={"stage1.depth": 2, "name": "åß∂ 𝔣", "huge": 2**53 + 1, "neg": -0.5, "on": False},
        values={"params": 3.0e9, "latency:x": 5e-324, "macs": 1.7976931348623157e308},
        metrics={"list": [1, [2, [3]]], "none": None, "text": 'line\nbreak "quoted"'},
    )
    case.store.add(sid, trial)
    assert case.store.get(sid, 0) == trial


def test_deleting_a_search_deletes_its_trials(sql_case: tuple[Engine, StoreCase]) -> None:
    engine, case = sql_case
    sid = case.new_search()
    for number in range(3):
        case.store.add(sid, make_trial(number))
    with engine.begin() as conn:
        conn.execute(sa.delete(SearchRow).where(SearchRow.id == sid))
    assert case.store.count(sid) == 0


def test_sql_store_writes_and_reads_from_many_threads(sql_case: tuple[Engine, StoreCase]) -> None:
    """Adds from 4 threads while the front is rewritten (by one thread, as the runner does) and 4
    threads read: nothing fails (no "database is locked" on SQLite), nothing is lost, every read sees
    whole trials."""
    _, case = sql_case
    store = case.store
    sid = case.new_search()
    errors: list[BaseException] = []
    n_writers, per_writer = 4, 15
    total = n_writers * per_writer
    adding = threading.Event()

    def writer(start: int) -> None:
        try:
            for number in range(start, total, n_writers):
                store.add(sid, make_trial(number))
        except BaseException as exc:
            errors.append(exc)

    def front_writer() -> None:
        try:
            while adding.is_set():
                store.set_pareto(sid, [n for n in range(store.count(sid)) if n % 3 == 0])
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            while adding.is_set():
                trials = store.trials(sid, limit=20)
                assert all(t == make_trial(t.number) for t in trials)
                assert store.count(sid) >= len(trials)
                assert all(t.number % 3 == 0 for t in store.pareto(sid))
        except BaseException as exc:
            errors.append(exc)

    adding.set()
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(n_writers)]
    others = [threading.Thread(target=front_writer)] + [threading.Thread(target=reader) for _ in range(4)]
    for thread in writers + others:
        thread.start()
    for thread in writers:
        thread.join()
    adding.clear()
    for thread in others:
        thread.join()
    assert errors == []
    assert [t.number for t in store.trials(sid)] == list(range(total))
