"""`SearchQueue` on a real SQLite file and on PostgreSQL: submission, atomic claims, cancel rules,
orphan recovery."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.engine import Engine

from nas import SearchSpec
from services.core.db import SearchStatus
from services.core.search_queue import SearchNotFoundError, SearchQueue, SearchStateError


def small_spec(name: str = "q") -> SearchSpec:
    return SearchSpec(name=name, space="efficientformerv2", objectives=["params"], budget={"trials": 5})


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def queue(request) -> SearchQueue:
    name = "sqlite_engine" if request.param == "sqlite" else "postgres_isolated_engine"
    engine: Engine = request.getfixturevalue(name)
    return SearchQueue(engine)


def test_submit_stores_spec_and_budget(queue: SearchQueue) -> None:
    row = queue.submit(small_spec("mine"))
    got = queue.get(row.id)
    assert got.status == "queued" and got.name == "mine" and got.budget_trials == 5
    assert SearchSpec.model_validate(got.spec) == small_spec("mine")
    assert got.created_at.tzinfo is not None
    with pytest.raises(SearchNotFoundError, match="no search with id 'x'"):
        queue.get("x")


def test_claims_oldest_first_and_each_once(queue: SearchQueue) -> None:
    first, second = queue.submit(small_spec("a")).id, queue.submit(small_spec("b")).id
    assert queue.claim_next() == first
    assert queue.claim_next() == second
    assert queue.claim_next() is None
    row = queue.get(first)
    assert row.status == "running" and row.started_at is not None


def test_racing_claims_give_each_search_to_one_thread(queue: SearchQueue) -> None:
    ids = {queue.submit(small_spec(str(i))).id for i in range(6)}
    claimed: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def claimer() -> None:
        barrier.wait()
        while (search_id := queue.claim_next()) is not None:
            with lock:
                claimed.append(search_id)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids)  # every search claimed, none twice


def test_cancel_rules(queue: SearchQueue) -> None:
    queued = queue.submit(small_spec()).id
    row = queue.cancel(queued)
    assert row.status == "cancelled" and row.finished_at is not None

    running = queue.submit(small_spec()).id
    assert queue.claim_next() == running
    row = queue.cancel(running)
    assert row.status == "running" and row.cancel_requested and queue.cancel_requested(running)

    queue.finish(running, SearchStatus.CANCELLED, message="cancelled on request")
    with pytest.raises(SearchStateError, match="already finished with status 'cancelled'"):
        queue.cancel(running)
    with pytest.raises(SearchNotFoundError):
        queue.cancel("missing")


def test_requeue_orphans(queue: SearchQueue) -> None:
    plain, cancelling, waiting = (queue.submit(small_spec(n)).id for n in ("plain", "cancelling", "waiting"))
    assert queue.claim_next() == plain
    assert queue.claim_next() == cancelling
    queue.cancel(cancelling)
    assert sorted(queue.requeue_orphans()) == sorted([plain, cancelling])
    assert queue.get(plain).status == "queued"
    assert queue.get(cancelling).status == "cancelled"
    assert queue.get(waiting).status == "queued"
    assert queue.requeue_orphans() == []


def test_page_filters_and_counts(queue: SearchQueue) -> None:
    ids = [queue.submit(small_spec(str(i))).id for i in range(5)]
    queue.cancel(ids[0])
    rows, total = queue.page(status=[SearchStatus.QUEUED], limit=2)
    assert total == 4 and len(rows) == 2
    assert ids[0] not in {r.id for r in rows}
    rows, total = queue.page(offset=4, limit=10)
    assert total == 5 and len(rows) == 1
    assert queue.count() == 5
