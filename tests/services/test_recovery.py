"""Recovery from failure, with real processes, real Ray and a real database (SQLite and PostgreSQL):

- a `nas serve` process running a search is killed with SIGKILL and started again: the search
  finishes with every trial present exactly once, numbers 0..n-1 unbroken, the trials stored before
  the kill kept as they were (not evaluated again) and no config evaluated twice;
- an evaluation worker that dies mid-trial: its trial is retried on a fresh worker (bounded), then
  recorded failed with the reason, and the search completes;
- no process outlives its server: after SIGINT or SIGTERM none of its Ray processes is left, and a
  server started after a SIGKILL ends every process the killed one left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import ray.cloudpickle
from sqlalchemy.engine import Engine
from svc_helpers import empty_service_database, free_port, service_settings, wait_until

from latency_lut import SqlLatencyTable
from nas import SearchSpec, TrialState
from nas.evaluate import EvalOutcome, SubnetEvaluator
from search_spaces import Config, config_id
from services.core.scheduler import Scheduler
from services.core.search_queue import SearchQueue
from services.core.trial_store import SqlTrialStore

#: Objectives that need no latency table: nothing is measured before the search starts.
FAST_SPEC: dict[str, Any] = {
    "name": "recovery",
    "space": "efficientformerv2",
    "space_options": {"resolution": 32, "num_classes": 10},
    "objectives": ["params", "macs"],
    "strategy": "nsga2",
    "strategy_params": {"population_size": 6},
    "budget": {"trials": 24, "parallelism": 2},
    "seed": 7,
}

NAS = Path(sys.executable).with_name("nas")


@dataclass
class Database:
    url: str  # for the server processes
    engine: Engine  # for the test's own reads


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request, tmp_path: Path) -> Iterator[Database]:
    """An empty service database: a SQLite file, or a PostgreSQL schema of its own (dropped after)."""
    postgres = request.getfixturevalue("postgres_engine") if request.param == "postgres" else None
    with empty_service_database(tmp_path, postgres) as (url, engine):
        yield Database(url, engine)


class ServerProcess:
    """`nas serve` in a process group of its own (so its Ray processes can be cleaned up after)."""

    def __init__(self, database: Database, log: Path, **env: str):
        self.port = free_port()
        # Its own state directory: the records of Ray processes (`services.core.ray_processes`).
        env.setdefault("NAS_STATE_DIR", str(log.parent / "state"))
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environment = {
            **os.environ,
            "NAS_DATABASE_URL": database.url,
            "NAS_HOST": "127.0.0.1",
            "NAS_PORT": str(self.port),
            "NAS_AUTH_DISABLED": "true",
            "NAS_RAY_NUM_CPUS": "2",
            "NAS_SCHEDULER_POLL_S": "0.2",
            **env,
        }
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [str(NAS), "serve"],
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not answer:\n{self.tail()}")
            time.sleep(0.2)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def sigkill(self) -> None:
        """SIGKILL the server process itself; its Ray processes are left to notice on their own."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def survivors(self) -> list[str]:
        """The processes still alive in this server's process group (its Ray's included), as
        `name (pid)`; the server was started in a session of its own, so nothing else is in it."""
        out = []
        for process in psutil.process_iter(["pid", "name", "status"]):
            with contextlib.suppress(OSError):
                if os.getpgid(process.pid) == self.process.pid and process.info["status"] != "zombie":
                    out.append(f"{process.info['name']} ({process.pid})")
        return out

    def cleanup(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the group this test started: server and its Ray
        self.process.wait(30)


def test_sigkill_and_restart_resumes_exactly(database: Database, tmp_path: Path) -> None:
    queue, store = SearchQueue(database.engine), SqlTrialStore(database.engine)
    budget = FAST_SPEC["budget"]["trials"]
    lease = {"NAS_LEASE_S": "3", "NAS_HEARTBEAT_S": "0.5"}
    log = tmp_path / "server.log"

    first = ServerProcess(database, log, **lease)
    try:
        first.wait_ready()
        created = httpx.post(f"{first.url}/v1/searches", json=FAST_SPEC, timeout=30)
        assert created.status_code == 202, created.text
        sid = created.json()["id"]
        wait_until(lambda: store.count(sid) >= 4, "the first trials", on_timeout=first.tail)
        first.sigkill()
        left = first.survivors()
        # What the next start must clean: Ray's agents (parent 1 once the raylet exits; they ignore
        # SIGTERM), and whatever else of the killed server's Ray has not noticed yet.
        assert any(p.startswith("ray::") for p in left), left

        row = queue.get(sid)
        before = store.trials(sid)
        assert row.status == "running" and row.claimed_by is not None and row.claims == 1
        assert 4 <= len(before) < budget, "the search must be killed part-way"
        killed_replica = row.claimed_by

        second = ServerProcess(database, log, **lease)
        try:
            second.wait_ready()
            # The restarted server ended every process of the killed one before it served.
            assert first.survivors() == [], second.tail()
            wait_until(
                lambda: queue.get(sid).status not in ("queued", "running"),
                "the resumed search",
                on_timeout=second.tail,
            )
        finally:
            second.cleanup()
    finally:
        first.cleanup()

    row = queue.get(sid)
    assert row.status == "succeeded", (row.error, second.tail())
    trials = store.trials(sid)
    assert [t.number for t in trials] == list(range(budget))  # every trial once, numbering unbroken
    assert len({t.config_id for t in trials}) == budget  # no config evaluated twice
    assert trials[: len(before)] == before  # the trials stored before the kill were kept as they were
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert row.trials_done == budget and row.claims == 2
    assert row.claimed_by not in (None, killed_replica)  # a new replica took it over
    assert row.front_size == len(store.pareto(sid)) >= 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_server_leaves_no_process_behind(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C (`make run`) or SIGTERM of `nas serve` while a search runs on its local Ray: when the
    server has exited, nothing of its process group is left (Ray's agents ignore SIGTERM)."""
    with empty_service_database(tmp_path) as (url, engine):
        server = ServerProcess(Database(url, engine), tmp_path / "server.log")
        try:
            server.wait_ready()
            spec = {**FAST_SPEC, "budget": {"trials": 400, "parallelism": 2}}
            created = httpx.post(f"{server.url}/v1/searches", json=spec, timeout=30)
            assert created.status_code == 202, created.text
            store = SqlTrialStore(engine)
            wait_until(lambda: store.count(created.json()["id"]) >= 2, "two trials", on_timeout=server.tail)
            running = server.survivors()
            assert any("raylet" in p for p in running) and any("ray::" in p for p in running), running
            server.process.send_signal(sig)
            # uvicorn ends by raising the signal again once its shutdown is complete.
            assert server.process.wait(120) in (0, -sig), server.tail()
            assert "Application shutdown complete" in server.tail()
            assert server.survivors() == [], server.tail()
            assert not list((tmp_path / "state").glob("ray-*.json"))  # its record went with it
        finally:
            server.cleanup()


# --------------------------------------------------------------------------- worker failure


class CrashingEvaluator(SubnetEvaluator):
    """Kills its worker process (`os._exit`) when it evaluates the first config evaluated anywhere
    (every attempt) and the next other config (its first attempt only); see `claim`."""

    def __init__(self, *args: Any, folder: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.folder = folder

    def claim(self, role: str, cid: str) -> str:
        """The config id holding `role`: `cid` if this call took it (a hard link is atomic)."""
        path = os.path.join(self.folder, role)
        tmp = os.path.join(self.folder, f".{role}.{uuid.uuid4().hex}")
        Path(tmp).write_text(cid)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        return Path(path).read_text()

    def evaluate(self, config: Config) -> EvalOutcome:
        cid = config_id(config)
        dies = self.claim("victim", cid) == cid
        if not dies and not os.path.exists(os.path.join(self.folder, "once")):
            dies = self.claim("once", cid) == cid
        if dies:
            os._exit(3)
        return super().evaluate(config)


class CrashingFactory:
    def __init__(self, folder: Path):
        self.folder = str(folder)

    def __call__(self, *args: Any) -> SubnetEvaluator:
        return CrashingEvaluator(*args, folder=self.folder)


def test_dead_worker_retried_then_failed_and_search_completes(
    database: Database, tmp_path: Path, ray_session
) -> None:
    settings = service_settings(tmp_path, database_url=database.url, evaluation_retries=1)
    queue, store = SearchQueue(database.engine), SqlTrialStore(database.engine)
    spec = SearchSpec.model_validate({**FAST_SPEC, "budget": {"trials": 6, "parallelism": 2}})
    sid = queue.submit(spec).id
    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)  # workers cannot import the test modules
    crash_dir = tmp_path / "crashes"
    crash_dir.mkdir()
    scheduler = Scheduler(
        settings,
        database.engine,
        lut=SqlLatencyTable(database.engine),
        evaluator_factory=CrashingFactory(crash_dir),
    )
    scheduler.start()
    try:
        wait_until(lambda: queue.get(sid).status not in ("queued", "running"), "the search")
    finally:
        scheduler.stop()
        ray.cloudpickle.unregister_pickle_by_value(module)

    row = queue.get(sid)
    assert row.status == "succeeded", row.error
    trials = store.trials(sid)
    assert [t.number for t in trials] == list(range(6))
    by_id = {t.config_id: t for t in trials}
    victim = by_id[(crash_dir / "victim").read_text()]
    assert victim.state == TrialState.FAILED and victim.metrics["attempts"] == 2
    assert "the evaluation worker died on all 2 attempt(s) at this config" in victim.error
    retried = by_id[(crash_dir / "once").read_text()]
    assert retried.state == TrialState.COMPLETE and retried.metrics["attempts"] == 2
    assert row.trials_done == 6 and row.trials_failed == 1
    assert row.claims == 1 and row.claimed_by == scheduler.replica_id
