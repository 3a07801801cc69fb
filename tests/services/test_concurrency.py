"""Concurrency through the real stack, on SQLite and on PostgreSQL: a live server (uvicorn, the app,
its scheduler running searches on Ray) while 16 HTTP clients read and write at once. Nothing may
fail: no 5xx, no refused request other than those the test provokes on purpose, no "database is
locked"; every search ends in a final state with its trials stored once, numbered without a gap.

The SQLite file's write discipline (`services.core.db.SqliteWriteGate`) gets its own direct test at the
end: 16 threads whose transactions read before they write."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from svc_helpers import LiveServer, throwaway_server

from services.core.db import SearchRow, SqliteWriteGate, make_engine
from services.core.migrations import init_db

N_SEARCHES = 8
N_CLIENTS = 16
FINAL = {"succeeded", "failed", "cancelled"}

#: Tiny searches: no latency objective (no LUT to measure), a few trials of a 32 px EfficientFormerV2.
TINY_SPEC = {
    "space": "efficientformerv2",
    "space_options": {"resolution": 32, "num_classes": 10},
    "objectives": ["params", "macs"],
    "strategy": "random",
    "budget": {"trials": 3, "parallelism": 1},
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def live(request, tmp_path: Path, ray_session) -> Iterator[LiveServer]:
    """A live server with its scheduler on a database of its own: 2 searches at once with one Ray
    actor each (the session's Ray has 2 CPUs)."""

    url = None if request.param == "sqlite" else request.getfixturevalue("fresh_postgres_url")
    overrides: dict[str, Any] = {"max_concurrent_searches": 2, "scheduler_poll_s": 0.05}
    if url is not None:
        overrides["database_url"] = url
    with throwaway_server(tmp_path, scheduler=True, **overrides) as server:
        yield server


class Client(threading.Thread):
    """One API client: submits its search (the first `N_SEARCHES` clients), then reads and writes at
    random until told to stop; every answer is checked for its status and its shape."""

    def __init__(self, index: int, url: str, searches: dict[int, str], stop: threading.Event):
        super().__init__(name=f"client-{index}", daemon=True)
        self.index = index
        self.url = url
        self.searches = searches
        self.stop = stop
        self.rng = random.Random(index)
        self.problems: list[str] = []
        self.requests = 0

    def check(self, response: httpx.Response, expected: set[int]) -> Any:
        self.requests += 1
        if response.status_code not in expected:
            self.problems.append(
                f"{response.request.method} {response.request.url.path}?{response.request.url.query.decode()}"
                f" -> {response.status_code}: {response.text[:300]}"
            )
            return None
        if response.status_code >= 400:
            body = response.json()  # every refusal is a JSON error body
            assert isinstance(body, dict) and body, body
        return (
            response.json()
            if response.headers.get("content-type", "").startswith("application/json")
            else None
        )

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=120) as http:
                self.work(http)
        except Exception as exc:  # a transport error or a malformed answer is a problem too
            self.problems.append(f"{type(exc).__name__}: {exc}")

    def work(self, http: httpx.Client) -> None:
        if self.index < N_SEARCHES:
            spec = {**TINY_SPEC, "name": f"concurrent-{self.index}", "seed": self.index}
            created = self.check(http.post("/v1/searches", json=spec), {202})
            if created is None:
                return
            self.searches[self.index] = created["id"]
            if self.index == 0:  # most likely still queued: cancelled at once
                self.check(http.post(f"/v1/searches/{created['id']}/cancel"), {200, 409})
        cancelled_running = False
        while not self.stop.is_set():
            known = list(self.searches.values())
            if not known:
                time.sleep(0.01)
                continue
            # A short pause between requests: the clients share one Python process (and its GIL)
            # with the server and the scheduler, which must still get their turn.
            time.sleep(self.rng.uniform(0.01, 0.05))
            search_id = self.rng.choice(known)
            action = self.rng.randrange(8)
            if action == 0:
                status = self.rng.choice(["", "?status=running", "?status=succeeded", "?status=queued"])
                page = self.check(http.get(f"/v1/searches{status}"), {200})
                # The page's rows and its total are two reads: with a status filter a search may change
                # status between them, but searches are never deleted, so the unfiltered total cannot
                # be below the rows just read.
                assert page is None or status or page["total"] >= len(page["items"]), page
            elif action == 1:
                self.check(http.get(f"/v1/searches/{search_id}"), {200})
            elif action == 2:
                offset, limit = self.rng.randrange(4), self.rng.choice([1, 2, 100])
                page = self.check(
                    http.get(f"/v1/searches/{search_id}/trials?offset={offset}&limit={limit}"), {200}
                )
                if page is not None:
                    numbers = [t["number"] for t in page["items"]]
                    assert numbers == sorted(numbers) and len(numbers) <= limit, numbers
            elif action == 3:
                self.check(http.get(f"/v1/searches/{search_id}/pareto"), {200})
            elif action == 4:
                # A write that changes nothing: cancelling a finished search is refused (409), a
                # running one of client 1 is cancelled once.
                if self.index == 1 and not cancelled_running:
                    mine = self.searches.get(1)
                    row = self.check(http.get(f"/v1/searches/{mine}"), {200}) if mine else None
                    if row is not None and row["status"] == "running":
                        self.check(http.post(f"/v1/searches/{mine}/cancel"), {200, 409})
                        cancelled_running = True
                elif self.index >= N_SEARCHES:
                    row = self.check(http.get(f"/v1/searches/{search_id}"), {200})
                    if row is not None and row["status"] in FINAL:
                        self.check(http.post(f"/v1/searches/{search_id}/cancel"), {409})
            elif action == 5:
                # Refused input is a 4xx JSON error, never a 5xx.
                bad = self.rng.choice(
                    [
                        (
                            "post",
                            "/v1/searches",
                            {"space": "no-such-space", "objectives": ["params"]},
                            {404, 422},
                        ),
                        ("post", "/v1/searches", {**TINY_SPEC, "budget": {"trials": 0}}, {422}),
                        ("get", f"/v1/searches/{search_id}/trials?limit=0", None, {422}),
                        ("get", "/v1/searches/not-a-search", None, {404}),
                        ("post", "/v1/searches/not-a-search/cancel", None, {404}),
                    ]
                )
                method, path, body, expected = bad
                self.check(http.request(method, path, json=body), expected)
            elif action == 6:
                self.check(http.get(f"/v1/searches/{search_id}/trials/0"), {200, 404})
            else:
                self.check(http.get("/v1/health"), {200})


def test_searches_and_16_clients_at_once(live: LiveServer) -> None:
    searches: dict[int, str] = {}
    stop = threading.Event()
    clients = [Client(i, live.url, searches, stop) for i in range(N_CLIENTS)]
    for client in clients:
        client.start()
    with httpx.Client(base_url=live.url, timeout=120) as http:
        try:
            deadline = time.monotonic() + 300  # only against a hang; nothing is timed
            while True:
                problems = [p for c in clients for p in c.problems]
                assert not problems, problems[:10]
                if len(searches) == N_SEARCHES:
                    rows = [http.get(f"/v1/searches/{sid}").json() for sid in searches.values()]
                    if all(row["status"] in FINAL for row in rows):
                        break
                assert time.monotonic() < deadline, [(r["name"], r["status"]) for r in rows]
                time.sleep(0.2)
        finally:
            stop.set()
            for client in clients:
                client.join(120)
        problems = [p for c in clients for p in c.problems]
        assert not problems, problems[:10]
        assert all(c.requests > 0 for c in clients)

        for index, search_id in sorted(searches.items()):
            row = http.get(f"/v1/searches/{search_id}").json()
            page = http.get(f"/v1/searches/{search_id}/trials?limit=1000").json()
            numbers = [t["number"] for t in page["items"]]
            config_ids = [t["config_id"] for t in page["items"]]
            # Every trial stored once, numbered without a gap, and the counts agree everywhere.
            assert numbers == list(range(len(numbers))), (index, numbers)
            assert len(set(config_ids)) == len(config_ids)
            assert page["total"] == len(numbers) == row["trials_done"] + row["trials_failed"], (index, row)
            front = http.get(f"/v1/searches/{search_id}/pareto").json()
            assert {t["number"] for t in front["items"]} <= set(numbers)
            if index in (0, 1):
                assert row["status"] in {"cancelled", "succeeded"}, row
            else:
                assert row["status"] == "succeeded", row
            if row["status"] == "succeeded":
                assert len(numbers) == TINY_SPEC["budget"]["trials"] and front["items"], (index, row)
        listed = http.get("/v1/searches?limit=100").json()
        assert listed["total"] == N_SEARCHES


# ----------------------------------------------------------------------------- SQLite write discipline
def test_sqlite_writers_that_read_first_never_meet_a_locked_database(tmp_path: Path) -> None:
    """16 threads, each transaction reading a counter and writing it back plus one: the classic way
    to get "database is locked" from SQLite (a read snapshot that must become a write), and a lost
    update when the read and the write are not one transaction. Neither may happen."""
    engine = make_engine(f"sqlite:///{tmp_path / 'gate.db'}")
    counter = sa.table("counter", sa.column("id"), sa.column("n"))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
        conn.execute(counter.insert().values(id=1, n=0))
    errors: list[BaseException] = []
    rounds = 40

    def increment() -> None:
        try:
            for _ in range(rounds):
                with engine.begin() as conn:
                    n = conn.execute(sa.select(counter.c.n).where(counter.c.id == 1)).scalar_one()
                    conn.execute(counter.update().where(counter.c.id == 1).values(n=n + 1))
                with engine.connect() as conn:  # reads in between, outside any write transaction
                    conn.execute(sa.select(counter.c.n)).scalar_one()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=increment) for _ in range(N_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        assert errors == []
        with engine.connect() as conn:
            assert conn.execute(sa.select(counter.c.n)).scalar_one() == N_CLIENTS * rounds
        assert not engine.sqlite_write_gate.held
    finally:
        engine.dispose()


def test_sqlite_gate_is_one_per_file_and_fails_fast_on_a_nested_write(tmp_path: Path) -> None:
    first = make_engine(f"sqlite:///{tmp_path / 'one.db'}")
    second = make_engine(f"sqlite:///{tmp_path}/../{tmp_path.name}/one.db")
    other = make_engine(f"sqlite:///{tmp_path / 'two.db'}")
    try:
        assert (
            first.sqlite_write_gate
            is second.sqlite_write_gate
            is SqliteWriteGate.for_file(tmp_path / "one.db")
        )
        assert other.sqlite_write_gate is not first.sqlite_write_gate
        with first.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        # A thread holding a write transaction that opens a second one would wait for itself.
        nested = pytest.raises(sa.exc.OperationalError, match="this thread already has a write transaction")
        with nested, first.begin() as outer:
            outer.execute(sa.text("INSERT INTO t VALUES (1)"))
            with second.begin() as inner:
                inner.execute(sa.text("INSERT INTO t VALUES (2)"))
        assert not first.sqlite_write_gate.held
        with first.connect() as conn:  # the outer transaction was rolled back
            assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar_one() == 0
        # Reads inside a write transaction of the same thread are fine, on any connection.
        with first.begin() as outer:
            outer.execute(sa.text("INSERT INTO t VALUES (3)"))
            with second.connect() as reader:
                assert reader.execute(sa.text("SELECT count(*) FROM t")).scalar_one() == 0  # not committed
        with second.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar_one() == 1
    finally:
        for engine in (first, second, other):
            engine.dispose()


def test_sqlite_reads_are_not_serialised_behind_a_writer(tmp_path: Path) -> None:
    """While one thread holds the write lock (in a transaction it has not committed), other threads
    still read, through Core connections and ORM sessions; their first write then waits its turn."""
    engine = make_engine(f"sqlite:///{tmp_path / 'reads.db'}")
    init_db(engine)
    gate = engine.sqlite_write_gate
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
            holding.set()
            release.wait(60)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(60) and gate.held
        results: list[Any] = []

        def reader() -> None:
            with engine.connect() as conn:
                results.append(conn.execute(sa.select(sa.func.count()).select_from(SearchRow)).scalar_one())
            with Session(engine) as session:
                results.append(session.scalars(sa.select(SearchRow)).all())

        reading = threading.Thread(target=reader)
        reading.start()
        reading.join(60)  # only a guard against a hang: a read blocked by the writer never returns
        assert results == [0, []] and gate.held  # read while the write transaction is still open
    finally:
        release.set()
        thread.join(60)
    assert not gate.held
    with Session(engine) as session, session.begin():  # an ORM write takes and releases the gate
        session.execute(sa.text("INSERT INTO t VALUES (1)"))
        assert gate.held
    assert not gate.held
    engine.dispose()
