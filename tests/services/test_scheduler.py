"""The scheduler with real Ray, a real SQLite file and real LUT measurements: resume after a dead
process, interruption by `stop()`, cancel during LUT measurement, failure reporting."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
from svc_helpers import SMALL_SPEC, service_settings, wait_until

from latency_lut import SqlLatencyTable, measure_missing
from nas import SearchSpec
from nas.runner import Runner
from services.core.db import SearchRow, make_engine
from services.core.migrations import init_db
from services.core.scheduler import Scheduler
from services.core.search_queue import SearchQueue, check_spec
from services.core.trial_store import SqlTrialStore
from services.settings import Settings


@dataclass
class Service:
    settings: Settings
    queue: SearchQueue
    store: SqlTrialStore
    lut: SqlLatencyTable

    def scheduler(self) -> Scheduler:
        return Scheduler(self.settings, self.queue.engine, lut=self.lut)


@pytest.fixture
def service(request, tmp_path) -> Service:
    """A service database: SQLite by default, PostgreSQL (own schema) where a test asks for it."""
    settings = service_settings(tmp_path)
    if getattr(request, "param", "sqlite") == "postgres":
        engine = request.getfixturevalue("postgres_isolated_engine")
    else:
        engine = make_engine(settings.database_url)
        init_db(engine)
        request.addfinalizer(engine.dispose)
    return Service(settings, SearchQueue(engine), SqlTrialStore(engine), SqlLatencyTable(engine))


def status_of(service: Service, search_id: str) -> SearchRow:
    return service.queue.get(search_id)


@pytest.mark.parametrize(
    "service", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_resumes_search_left_running_by_dead_process(service: Service, ray_session) -> None:
    spec = SearchSpec.model_validate(SMALL_SPEC)
    sid = service.queue.submit(spec).id
    assert service.queue.claim_next() == sid
    resolved = check_spec(spec, service.lut)
    measure_missing(resolved.space, "host-cpu-torch", service.lut, warmup=1, repeats=2)
    # The "dead process": a runner that recorded a few trials and then vanished with the row `running`.
    partial = Runner(
        resolved,
        sid,
        service.store,
        {"host-cpu-torch": service.lut.snapshot("host-cpu-torch")},
        should_stop=lambda: service.store.count(sid) >= 3,
        use_ray=False,
    ).run()
    assert partial.state == "cancelled"
    before = service.store.trials(sid)
    assert 3 <= len(before) < 8
    assert status_of(service, sid).status == "running"

    scheduler = service.scheduler()
    scheduler.start()
    try:
        wait_until(lambda: status_of(service, sid).status in ("succeeded", "failed"), "the resumed search")
    finally:
        scheduler.stop()

    row = status_of(service, sid)
    assert row.status == "succeeded", row.error
    trials = service.store.trials(sid)
    assert [t.number for t in trials] == list(range(8))
    assert len({t.config_id for t in trials}) == 8  # no config evaluated twice
    assert trials[: len(before)] == before  # the stored trials were kept as they were
    assert row.trials_done == 8 and row.front_size == len(service.store.pareto(sid)) >= 1


def test_stop_requeues_and_next_scheduler_finishes(service: Service, ray_session) -> None:
    spec = SearchSpec.model_validate({**SMALL_SPEC, "budget": {"trials": 400, "parallelism": 2}})
    sid = service.queue.submit(spec).id
    scheduler = service.scheduler()
    scheduler.start()
    try:
        wait_until(lambda: service.store.count(sid) >= 2, "two trials")
    finally:
        scheduler.stop()
    row = status_of(service, sid)
    assert row.status == "queued" and "interrupted" in row.status_message
    assert scheduler.running == []
    done = service.store.count(sid)
    assert 2 <= done < 400 and row.trials_done == done

    # Lower the budget so the resumed run ends soon; it must continue, not start over.
    smaller = {**row.spec, "budget": {**row.spec["budget"], "trials": done + 3}}
    service.queue.update(sid, spec=smaller, budget_trials=done + 3)
    second = service.scheduler()
    second.start()
    try:
        wait_until(lambda: status_of(service, sid).status in ("succeeded", "failed"), "the resumed search")
    finally:
        second.stop()
    row = status_of(service, sid)
    assert row.status == "succeeded", row.error
    trials = service.store.trials(sid)
    assert [t.number for t in trials] == list(range(done + 3))
    assert len({t.config_id for t in trials}) == done + 3


@pytest.mark.parametrize(
    "service", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_cancel_while_measuring_the_lut(service: Service, ray_session) -> None:
    spec = SearchSpec.model_validate({**SMALL_SPEC, "space_options": {"resolution": 64, "num_classes": 10}})
    sid = service.queue.submit(spec).id
    scheduler = service.scheduler()
    scheduler.start()
    try:
        wait_until(
            lambda: (status_of(service, sid).phase or {}).get("name") == "measuring latency table",
            "LUT measurement progress",
        )
        row = status_of(service, sid)
        assert row.status_message.startswith("measuring latency table for host-cpu-torch: ")
        service.queue.cancel(sid)
        wait_until(lambda: status_of(service, sid).status == "cancelled", "the cancel")
    finally:
        scheduler.stop()
    assert service.store.count(sid) == 0
    table = status_of(service, sid).phase["table"]
    assert table["device"] == "host-cpu-torch" and table["done"] < table["total"]


def test_search_that_cannot_run_fails_with_its_error(service: Service) -> None:
    # Stored without validation (as an older service version might have): the scheduler must report it.
    sid = service.queue.submit(SearchSpec(space="no-such-space", objectives=["params"])).id
    scheduler = service.scheduler()
    scheduler.start()
    try:
        wait_until(lambda: status_of(service, sid).status == "failed", "the failure")
    finally:
        scheduler.stop()
    row = status_of(service, sid)
    assert "unknown search space 'no-such-space'" in row.error
    assert row.status_message.startswith("failed: ") and row.finished_at is not None


def test_only_max_concurrent_searches_run_at_once(service: Service, ray_session) -> None:
    first = service.queue.submit(SearchSpec.model_validate({**SMALL_SPEC, "name": "first"})).id
    second = service.queue.submit(SearchSpec.model_validate({**SMALL_SPEC, "name": "second"})).id
    scheduler = service.scheduler()
    scheduler.start()
    try:
        wait_until(lambda: status_of(service, first).status == "running", "the first search to start")
        while True:
            # Second read first: if the first search is still running afterwards, it was running
            # while the second was read, so the second must have been waiting.
            second_status = status_of(service, second).status
            if status_of(service, first).status != "running":
                break
            assert second_status == "queued"
            time.sleep(0.05)
        wait_until(lambda: status_of(service, second).status == "succeeded", "the second search")
    finally:
        scheduler.stop()
    assert status_of(service, first).status == "succeeded"


def test_ray_is_started_by_the_long_lived_scheduler_thread(service: Service, monkeypatch) -> None:
    # A local Ray's processes die with the thread that started them: if a per-search worker thread
    # started Ray, the cluster would vanish seconds after the first search and the next one would hang.
    import services.core.scheduler as scheduler_module

    threads: list[str] = []

    def fake_init_ray(*_args: object, **_kwargs: object) -> None:
        threads.append(threading.current_thread().name)
        raise RuntimeError("no Ray in this test")

    monkeypatch.setattr(scheduler_module, "init_ray", fake_init_ray)
    sid = service.queue.submit(SearchSpec.model_validate(SMALL_SPEC)).id
    scheduler = service.scheduler()
    scheduler.start()
    try:
        wait_until(lambda: status_of(service, sid).status == "failed", "the search to fail without Ray")
    finally:
        scheduler.stop()
    assert threads == ["nas-scheduler"]
    assert "Ray is not available" in status_of(service, sid).error
