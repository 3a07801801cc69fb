"""Several scheduler replicas on one database (SQLite and PostgreSQL): leases, heartbeats, reclaim of
stale searches, fenced writes, and two scheduler processes sharing a queue without running any search
twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from svc_helpers import empty_service_database, service_settings, wait_until

from latency_lut import SqlLatencyTable
from nas import DuplicateTrialError, SearchSpec, Trial, utcnow
from services.core.db import SearchRow
from services.core.scheduler import Scheduler
from services.core.search_queue import LeaseLostError, SearchQueue
from services.core.trial_store import SqlTrialStore

_S = SearchRow.__table__

FAST_SPEC = {
    "space": "efficientformerv2",
    "space_options": {"resolution": 32, "num_classes": 10},
    "objectives": ["params", "macs"],
    "strategy": "random",
    "seed": 1,
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    """(URL, engine) of an empty service database: a SQLite file or a PostgreSQL schema of its own."""
    postgres = request.getfixturevalue("postgres_engine") if request.param == "postgres" else None
    with empty_service_database(tmp_path, postgres) as database:
        yield database


@pytest.fixture
def engine(db_url: tuple[str, Engine]) -> Engine:
    return db_url[1]


def spec(trials: int = 4, **fields) -> SearchSpec:
    return SearchSpec.model_validate({**FAST_SPEC, "budget": {"trials": trials, "parallelism": 1}, **fields})


def trial(number: int, cid: str) -> Trial:
    return Trial(number=number, config={"x": number}, config_id=cid, values={"params": 1.0 + number})


def age_heartbeat(engine: Engine, search_id: str, seconds: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(_S)
            .where(_S.c.id == search_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


# --------------------------------------------------------------------------- leases, no Ray


def test_live_lease_is_kept_and_stale_one_reclaimed(engine: Engine) -> None:
    queue = SearchQueue(engine)
    sid = queue.submit(spec()).id
    assert queue.claim_next("a", lease_s=30) == sid
    row = queue.get(sid)
    assert (row.status, row.claimed_by, row.claims) == ("running", "a", 1) and row.heartbeat_at is not None
    assert queue.claim_next("b", lease_s=30) is None  # a's lease is live
    assert queue.heartbeat([sid], "a") == []
    assert queue.requeue_orphans(30) == []  # another replica's live search is not an orphan

    age_heartbeat(engine, sid, 31)
    assert queue.claim_next("b", lease_s=30) == sid
    row = queue.get(sid)
    assert (row.status, row.claimed_by, row.claims) == ("running", "b", 2)
    assert row.status_message == "reclaimed after a lost lease"
    assert queue.heartbeat([sid], "a") == [sid]  # a learns it lost the search
    assert queue.heartbeat([sid], "b") == []


def test_writes_of_a_replica_that_lost_its_lease_are_refused(engine: Engine) -> None:
    queue = SearchQueue(engine)
    a, b = SqlTrialStore(engine, owner="a"), SqlTrialStore(engine, owner="b")
    sid = queue.submit(spec()).id
    assert queue.claim_next("a", lease_s=30) == sid
    a.add(sid, trial(0, "c0"))
    a.set_pareto(sid, [0])
    with pytest.raises(LeaseLostError, match="replica 'b' no longer holds the lease"):
        b.add(sid, trial(1, "c1"))  # b never held it

    age_heartbeat(engine, sid, 60)
    assert queue.claim_next("b", lease_s=30) == sid
    with pytest.raises(LeaseLostError):
        a.add(sid, trial(1, "c1"))
    with pytest.raises(LeaseLostError):
        a.set_pareto(sid, [])
    assert not queue.update(sid, owner="a", status_message="stale progress")
    assert not queue.finish(sid, queue_status("succeeded"), message="stale finish", owner="a")
    row = queue.get(sid)
    assert (row.status, row.claimed_by) == ("running", "b") and row.status_message != "stale progress"
    assert [t.number for t in b.pareto(sid)] == [0]

    b.add(sid, trial(1, "c1"))
    assert [t.config_id for t in b.trials(sid)] == ["c0", "c1"]
    assert queue.finish(sid, queue_status("succeeded"), message="done", owner="b")
    row = queue.get(sid)
    assert row.status == "succeeded" and row.claimed_by == "b"  # the replica that ran it last
    with pytest.raises(LeaseLostError):
        b.add(sid, trial(2, "c2"))  # a finished search takes no more trials


def queue_status(name: str):
    from services.core.db import SearchStatus

    return SearchStatus(name)


def test_a_trial_number_is_stored_once_even_by_its_owner(engine: Engine) -> None:
    queue, store = SearchQueue(engine), SqlTrialStore(engine, owner="a")
    sid = queue.submit(spec()).id
    assert queue.claim_next("a", lease_s=30) == sid
    store.add(sid, trial(0, "first"))
    with pytest.raises(DuplicateTrialError, match=r"trial 0 of search \w+ is already stored"):
        store.add(sid, trial(0, "second"))
    assert [t.config_id for t in store.trials(sid)] == ["first"]


def test_stale_search_with_pending_cancel_is_cancelled_not_claimed(engine: Engine) -> None:
    queue = SearchQueue(engine)
    sid = queue.submit(spec()).id
    assert queue.claim_next("a", lease_s=30) == sid
    queue.cancel(sid)
    age_heartbeat(engine, sid, 60)
    assert queue.claim_next("b", lease_s=30) is None
    row = queue.get(sid)
    assert row.status == "cancelled" and row.finished_at is not None and row.claims == 1


def test_restarted_replica_takes_its_own_searches_back_at_once(engine: Engine) -> None:
    queue = SearchQueue(engine)
    mine, theirs = queue.submit(spec()).id, queue.submit(spec()).id
    assert queue.claim_next("pod-0", lease_s=30) == mine
    assert queue.claim_next("pod-1", lease_s=30) == theirs
    assert queue.requeue_orphans(30, replica_id="pod-0") == [mine]
    assert queue.get(mine).status == "queued" and queue.get(mine).claimed_by is None
    assert (queue.get(theirs).status, queue.get(theirs).claimed_by) == ("running", "pod-1")


def test_racing_replicas_claim_each_search_once(engine: Engine) -> None:
    queue = SearchQueue(engine)
    ids = {queue.submit(spec()).id for _ in range(8)}
    for _ in range(3):  # three of them left stale by a dead replica
        assert queue.claim_next("dead", lease_s=30) is not None
    with engine.begin() as conn:
        conn.execute(
            sa.update(_S)
            .where(_S.c.claimed_by == "dead")
            .values(heartbeat_at=utcnow() - timedelta(seconds=99))
        )
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def replica(name: str) -> None:
        barrier.wait()
        while (sid := queue.claim_next(name, lease_s=30)) is not None:
            with lock:
                claimed.append((sid, name))

    threads = [threading.Thread(target=replica, args=(f"r{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(sid for sid, _ in claimed) == sorted(ids)  # every search claimed, none twice
    for sid, name in claimed:
        assert queue.get(sid).claimed_by == name


# --------------------------------------------------------------------------- a scheduler loses its lease


def test_scheduler_that_loses_its_lease_stops_writing(db_url, tmp_path: Path, ray_session) -> None:
    _url, engine = db_url
    settings = service_settings(tmp_path, heartbeat_s=0.2, lease_s=30)
    queue, store = SearchQueue(engine), SqlTrialStore(engine)
    sid = queue.submit(spec(budget={"trials": 400, "parallelism": 2})).id
    scheduler = Scheduler(settings, engine, lut=SqlLatencyTable(engine))
    scheduler.start()
    try:
        wait_until(lambda: store.count(sid) >= 2, "the first trials")
        # Another replica takes the search over (as after a stall past the lease).
        with engine.begin() as conn:
            conn.execute(
                sa.update(_S)
                .where(_S.c.id == sid)
                .values(claimed_by="usurper", heartbeat_at=utcnow(), status_message="usurper's")
            )
        taken_at = store.count(sid)  # every write of the old owner committed before the takeover
        wait_until(lambda: scheduler.running == [], "the old owner to stop the search")
    finally:
        scheduler.stop()
    assert store.count(sid) == taken_at  # nothing written after the lease was lost
    row = queue.get(sid)
    assert (row.status, row.claimed_by, row.status_message) == ("running", "usurper", "usurper's")
    numbers = [t.number for t in store.trials(sid)]
    assert numbers == list(range(taken_at))


# --------------------------------------------------------------------------- two scheduler processes

REPLICA_SCRIPT = """
import sys, time
from pathlib import Path
from services.core.db import make_engine
from services.core.scheduler import Scheduler
from services.core.search_queue import SearchQueue
from services.settings import Settings

settings = Settings()
engine = make_engine(settings.database_url)
scheduler = Scheduler(settings, engine)
scheduler.start()
Path(sys.argv[1]).write_text(scheduler.replica_id)
while not Path(sys.argv[2]).exists():
    time.sleep(0.1)
scheduler.stop()
"""


def test_two_scheduler_processes_run_each_search_once(db_url, tmp_path: Path) -> None:
    url, engine = db_url
    queue, store = SearchQueue(engine), SqlTrialStore(engine)
    done = tmp_path / "done"
    processes = []
    try:
        for name in ("replica-a", "replica-b"):
            env = {
                **os.environ,
                "NAS_DATABASE_URL": url,
                "NAS_REPLICA_ID": name,
                "NAS_RAY_NUM_CPUS": "1",
                "NAS_SCHEDULER_POLL_S": "0.1",
                "NAS_HEARTBEAT_S": "0.5",
                "NAS_LEASE_S": "10",
            }
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
            argv = [sys.executable, "-c", REPLICA_SCRIPT, str(tmp_path / f"{name}.ready"), str(done)]
            processes.append(
                (
                    subprocess.Popen(
                        argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    ),
                    log,
                )
            )
        for name in ("replica-a", "replica-b"):
            wait_until(lambda name=name: (tmp_path / f"{name}.ready").exists(), f"{name} to start", 120)
        ids = [queue.submit(spec(name=f"s{i}", seed=i)).id for i in range(4)]
        wait_until(lambda: all(queue.get(sid).status == "succeeded" for sid in ids), "the four searches")
        done.touch()
        for process, _log in processes:
            process.wait(120)
    finally:
        done.touch()
        for process, log in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
            log.close()
    logs = "".join((tmp_path / f"replica-{x}.log").read_text(errors="replace") for x in "ab")
    assert "Traceback" not in logs, logs[-3000:]
    runners = {}
    for sid in ids:
        row = queue.get(sid)
        assert row.claims == 1, f"search {sid} was claimed {row.claims} times"  # run by exactly one
        runners[sid] = row.claimed_by
        assert [t.number for t in store.trials(sid)] == [0, 1, 2, 3]
    assert set(runners.values()) == {"replica-a", "replica-b"}  # both replicas took part


def test_lease_must_outlast_the_heartbeat() -> None:
    from pydantic import ValidationError

    from services.settings import Settings

    with pytest.raises(ValidationError, match=r"lease_s \(5.0\) must be longer than heartbeat_s \(5.0\)"):
        Settings(lease_s=5, heartbeat_s=5)
    assert Settings(lease_s=2, heartbeat_s=0.5).lease_s == 2
