"""`Scheduler`: the background thread that claims queued searches and runs them.

For each claimed search it (a) measures, on this host, the latency-table entries the search needs
that are missing for devices with a local backend, (b) takes LUT snapshots, (c) runs `nas.runner.Runner`
on Ray with progress written to the search's row, and (d) writes the final status; `stop()` interrupts
running searches (back to `queued`), so nothing is lost.

Failure and replicas: each scheduler has a replica id (`NAS_REPLICA_ID`, else host:pid:random). It
claims a search under that id and heartbeats every search it runs each `heartbeat_s`. A running
search whose heartbeat is older than `lease_s` (its scheduler died or hung) is claimed by whichever
scheduler polls next and resumes from its stored trials; a restarted scheduler with the same stable
replica id takes its own searches back at once. Every write for a search is fenced by the lease, and a
scheduler whose heartbeat finds the lease gone (another replica reclaimed the search) stops that run
without writing anything more. Several schedulers may therefore share one database.

A local Ray this scheduler starts is recorded under `settings.state_dir` and ended with it by
`stop()`; `start()` first ends the Ray processes that a killed server left behind (see
`services.core.ray_processes`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from latency_lut import (
    BUILTIN_DEVICES,
    LatencyPredictor,
    SqlLatencyTable,
    device_backend,
    known_devices,
    measure_missing,
    missing_entries,
)
from nas import ResolvedSpec, SearchSpec, TrialState, resolve
from nas.evaluator_pool import EvaluatorPool
from nas.runner import EvaluatorFactory, RunAbandoned, Runner, RunProgress, init_ray
from services.core.db import SearchStatus
from services.core.measurement_store import MeasurementStore
from services.core.prediction_service import PredictionService
from services.core.ray_processes import LocalRayRecord, reap_orphans
from services.core.search_phase import PHASE_MEASURING, PHASE_SEARCHING, measuring_message
from services.core.search_queue import LeaseLostError, SearchQueue
from services.core.trial_store import SqlTrialStore
from services.settings import Settings

log = logging.getLogger(__name__)

#: How often a running search re-reads its `cancel_requested` flag, at most.
CANCEL_POLL_S = 0.5
#: How often the latency-table phase writes its progress, at most (and at its start and end).
PHASE_WRITE_S = 0.5


class _Interrupted(Exception):
    """Raised from a progress callback to abandon LUT measurement (cancel or shutdown)."""


class Scheduler:
    """Runs queued searches, up to `settings.max_concurrent_searches` at once, each in its own thread.

    `evaluator_factory` is passed to the runner (tests use evaluators that crash their worker).
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        lut: SqlLatencyTable | None = None,
        evaluator_factory: EvaluatorFactory | None = None,
    ):
        self.settings = settings
        self.engine = engine
        self.replica_id = settings.replica_id or default_replica_id()
        self.queue = SearchQueue(engine)
        # Fenced: once another replica has reclaimed a search, this one can no longer write its trials.
        self.store = SqlTrialStore(engine, owner=self.replica_id)
        self.lut = lut if lut is not None else SqlLatencyTable(engine)
        self.predictions = PredictionService(MeasurementStore(engine, self.lut))
        self.evaluator_factory = evaluator_factory
        # Started evaluator actors lent to each search and kept between searches (NAS_WARM_EVALUATORS).
        self.evaluators = EvaluatorPool(settings.warm_evaluators, idle_s=settings.warm_evaluators_idle_s)
        self._stopping = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._workers: dict[str, threading.Thread] = {}
        # Searches whose lease a heartbeat found taken: their runs stop at their next check.
        self._lost: set[str] = set()
        self._ray_lock = threading.Lock()
        self._ray_ready = False
        # Set when this scheduler started a local Ray (not when it joined one already running).
        self._ray_record: LocalRayRecord | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Requeue searches whose lease is stale or that this replica id held in a previous life, then
        start heartbeating and polling for queued (or stale) searches."""
        if self._loop_thread is not None:
            raise RuntimeError("the scheduler is already started")
        try:
            reap_orphans(self.settings.state_dir)
        except OSError:
            log.exception("could not read the Ray process records in %s", self.settings.state_dir)
        requeued = self.queue.requeue_orphans(self.settings.lease_s, replica_id=self.replica_id)
        if requeued:
            log.info(
                "requeued %d search(es) left running by a stopped scheduler: %s", len(requeued), requeued
            )
        log.info(
            "scheduler %s: heartbeat every %ss, lease %ss",
            self.replica_id,
            self.settings.heartbeat_s,
            self.settings.lease_s,
        )
        self._heartbeat_thread = threading.Thread(target=self._heartbeats, name="nas-heartbeat", daemon=True)
        self._heartbeat_thread.start()
        self._loop_thread = threading.Thread(target=self._loop, name="nas-scheduler", daemon=True)
        self._loop_thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Interrupt running searches (they go back to `queued` and resume on the next start) and join."""
        self._stopping.set()
        if self._loop_thread is not None:
            self._loop_thread.join(timeout)
        for worker in list(self._workers.values()):
            worker.join(timeout)
        self.evaluators.close()
        # Heartbeats go on while the workers finish their evaluations in flight.
        self._heartbeat_stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout)
        with self._ray_lock:
            if self._ray_record is not None:
                self._ray_record.stop()
                self._ray_record = None
                self._ray_ready = False

    def _heartbeats(self) -> None:
        while not self._heartbeat_stop.wait(self.settings.heartbeat_s):
            self._record_ray()
            running = self.running
            if not running:
                continue
            try:
                lost = self.queue.heartbeat(running, self.replica_id)
            except SQLAlchemyError:
                # The lease runs out if this goes on; the fenced writes keep a reclaimed search safe.
                log.exception("could not heartbeat searches %s", running)
                continue
            for search_id in lost:
                if search_id in self.running and search_id not in self._lost:
                    log.warning(
                        "search %s: lease lost (reclaimed by another scheduler?); stopping it", search_id
                    )
                    self._lost.add(search_id)

    @property
    def running(self) -> list[str]:
        """Ids of the searches this scheduler is running now."""
        return [sid for sid, worker in list(self._workers.items()) if worker.is_alive()]

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._workers = {sid: w for sid, w in self._workers.items() if w.is_alive()}
            search_id = None
            if len(self._workers) < self.settings.max_concurrent_searches:
                try:
                    search_id = self.queue.claim_next(self.replica_id, lease_s=self.settings.lease_s)
                except SQLAlchemyError:
                    log.exception("could not poll the database for queued searches")
            if search_id is None:
                if self.evaluators.trim():
                    log.info("ended warm evaluator actors idle for %ss", self.settings.warm_evaluators_idle_s)
                self._stopping.wait(self.settings.scheduler_poll_s)
                continue
            running = self._workers.get(search_id)
            if running is not None and running.is_alive():
                # Our own heartbeat came too late and this loop reclaimed a search it is running: the
                # claim renewed the lease, and the run goes on in its thread; never start a second one.
                log.warning("search %s: reclaimed its own running search (heartbeat late?)", search_id)
                continue
            self._lost.discard(search_id)  # a mark left from an earlier run of the same search
            try:
                # Ray ties the processes of a local Ray to the thread that starts them (they are killed
                # when it ends), so this long-lived thread starts Ray, never a per-search worker.
                self._ensure_ray()
            except Exception as exc:
                log.exception("could not start or reach Ray for search %s", search_id)
                error = f"Ray is not available: {type(exc).__name__}: {exc}"
                try:
                    self.queue.finish(
                        search_id,
                        SearchStatus.FAILED,
                        message=f"failed: {error}",
                        error=error,
                        owner=self.replica_id,
                    )
                except SQLAlchemyError:
                    log.exception("could not record the failure of search %s", search_id)
                continue
            worker = threading.Thread(
                target=self.run_claimed, args=(search_id,), name=f"nas-search-{search_id[:8]}", daemon=True
            )
            self._workers[search_id] = worker
            worker.start()

    # ----------------------------------------------------------------- one search
    def run_claimed(self, search_id: str) -> None:
        """Run a search this scheduler has claimed (status `running`) to its end; never raises."""
        try:
            self._run(search_id)
        except _Interrupted:
            self._interrupted(search_id, self._cancel_requested(search_id))
        except RunAbandoned as exc:
            log.warning("search %s: stopped without writing more: %s", search_id, exc)
        except Exception as exc:
            log.exception("search %s failed", search_id)
            error = f"{type(exc).__name__}: {exc}"
            try:
                self._finish(search_id, SearchStatus.FAILED, message=f"failed: {error}", error=error)
            except SQLAlchemyError:
                log.exception("could not record the failure of search %s", search_id)
        finally:
            self._lost.discard(search_id)

    def _update(self, search_id: str, **values: object) -> None:
        if not self.queue.update(search_id, owner=self.replica_id, **values):
            raise LeaseLostError(search_id, self.replica_id)

    def _finish(self, search_id: str, status: SearchStatus, **values: object) -> None:
        if not self.queue.finish(search_id, status, owner=self.replica_id, **values):
            log.warning(
                "search %s: lease lost before its %s status could be written", search_id, status.value
            )

    def _run(self, search_id: str) -> None:
        row = self.queue.get(search_id)
        spec = SearchSpec.model_validate(row.spec)
        resolved = resolve(spec, known_devices(self.lut.devices()), supernet_dir=self.settings.supernet_dir)
        should_stop = self._stop_check(search_id)
        measured_s = self._measure_luts(
            search_id, resolved, should_stop, elapsed_before_s=row.elapsed_s, phase_before=row.phase
        )
        luts, table_warnings = self._predictors(search_id, resolved)
        warnings = _unique([*(row.warnings or []), *table_warnings])
        if warnings != (row.warnings or []):
            self._update(search_id, warnings=warnings)
        self._ensure_ray()
        done_before = self.store.count(search_id)
        message = f"searching: {done_before}/{spec.budget.trials} trials (starting evaluators)"
        self._update(search_id, status_message=message)
        runner = Runner(
            resolved,
            search_id,
            self.store,
            luts,
            should_stop=should_stop,
            on_progress=lambda progress: self._progress(search_id, progress),
            elapsed_before_s=row.elapsed_s + measured_s,
            evaluation_retries=self.settings.evaluation_retries,
            evaluator_factory=self.evaluator_factory,
            supernet_dir=self.settings.supernet_dir,
            warm=self.evaluators,
        )
        result = runner.run()
        if result.state == "abandoned":
            raise LeaseLostError(search_id, self.replica_id)
        counts = {
            "trials_done": self.store.count(search_id),
            "trials_failed": self.store.count(search_id, state=TrialState.FAILED),
            "front_size": len(result.front),
            "hypervolume": result.hypervolume,
            "elapsed_s": result.elapsed_s,
            "steps": result.steps or None,
        }
        if result.state == "succeeded":
            message = f"succeeded: {counts['trials_done']} trials, front of {len(result.front)}"
            warnings = _unique([*warnings, *result.warnings])
            if warnings:  # the run's own warnings lead the message
                message += f"; {len(warnings)} warning(s): {(result.warnings or warnings)[0]}"
            self._finish(search_id, SearchStatus.SUCCEEDED, message=message, warnings=warnings, **counts)
        elif result.state == "failed":
            error = result.error or "the runner failed without an error message"
            message = f"failed: {error}"
            self._finish(search_id, SearchStatus.FAILED, message=message, error=error, **counts)
        else:
            self._interrupted(search_id, self._cancel_requested(search_id), **counts)

    def _interrupted(self, search_id: str, cancelled: bool, **counts: object) -> None:
        """A run stopped early: cancelled on request, or back to `queued` when the service is stopping."""
        if cancelled or not self._stopping.is_set():
            self._finish(search_id, SearchStatus.CANCELLED, message="cancelled on request", **counts)
        else:
            message = "interrupted by a service shutdown; resumes from its stored trials on restart"
            self._finish(search_id, SearchStatus.QUEUED, message=message, **counts)

    def _predictors(
        self, search_id: str, resolved: ResolvedSpec
    ) -> tuple[dict[str, LatencyPredictor], list[str]]:
        """Each device's selected predictor for the search's space (see `PredictionService`), and the
        search's warnings about them: a table that lacks blocks of the space prices them with its
        fallback (those trials are marked estimated), which the search says in its `warnings`."""
        predictors: dict[str, LatencyPredictor] = {}
        warnings: list[str] = []
        blocks = {spec.key: spec for spec in resolved.space.all_blocks()}
        all_keys = set(blocks)
        for device in resolved.devices:
            chosen = self.predictions.predictor(device, resolved.space)
            predictors[device] = chosen.predictor
            lacking_keys = all_keys - set(chosen.table.isolated) - set(chosen.table.in_context)
            lacking = len(lacking_keys)
            priced = sum(chosen.fallback.fit_for(blocks[key].kind) is not None for key in lacking_keys)
            log.info(
                "search %s: latency:%s priced by %s (expected error %s); table lacks %d of %d blocks%s",
                search_id,
                device,
                chosen.predictor.label,
                "unknown"
                if chosen.predictor.expected_error is None
                else f"{chosen.predictor.expected_error:.1%}",
                lacking,
                len(all_keys),
                " (estimated by the fallback where it can)" if lacking else "",
            )
            if priced:  # blocks nothing can price fail their trials, which say so themselves
                warnings.append(
                    f"latency:{device}: the device's latency table lacks {lacking} of the {len(all_keys)} "
                    f"blocks of this space; trials containing the {priced} its fallback can estimate are "
                    "priced by the fallback (marked estimated, with latency_estimated_ms) until the "
                    "table is filled"
                )
        return predictors, warnings

    def _measure_luts(
        self,
        search_id: str,
        resolved: ResolvedSpec,
        should_stop: Callable[[], bool],
        *,
        elapsed_before_s: float,
        phase_before: dict[str, Any] | None,
    ) -> float:
        """Fill the missing entries of every device of the search that this host can measure, as the
        search's `measuring latency table` phase (progress in `phase.table`, `elapsed_s` running on);
        returns the seconds it took. A resumed search whose table is complete keeps the table
        progress of its earlier run."""
        started = time.monotonic()
        table: dict[str, Any] | None = (phase_before or {}).get("table")
        for device in resolved.devices:
            known = BUILTIN_DEVICES.get(device)
            if known is None or known.backend is None:
                continue
            total = len(missing_entries(resolved.space, device, self.lut))
            if not total:
                continue
            device_started = time.monotonic()
            last_write = 0.0

            def write(
                done: int, device: str = device, total: int = total, started_at: float = device_started
            ) -> None:
                nonlocal table
                now = time.monotonic()
                table = {"device": device, "done": done, "total": total, "seconds": now - started_at}
                self._update(
                    search_id,
                    phase={"name": PHASE_MEASURING, "table": table},
                    status_message=measuring_message(table),
                    elapsed_s=elapsed_before_s + (now - started),
                )

            def progress(done: int, total: int, _key: str, write: Callable[[int], None] = write) -> None:
                nonlocal last_write
                now = time.monotonic()
                # A write per entry would be one UPDATE every few milliseconds on small blocks.
                if done == total or now - last_write >= PHASE_WRITE_S:
                    write(done)
                    last_write = now
                if should_stop():
                    raise _Interrupted

            write(0)
            report = measure_missing(
                resolved.space,
                device,
                self.lut,
                warmup=self.settings.lut_warmup,
                repeats=self.settings.lut_repeats,
                backend=device_backend(device, min_seconds=self.settings.lut_min_seconds)
                if self.settings.lut_min_seconds
                else None,
                progress=progress,
            )
            log.info(
                "search %s: LUT of %s: %d blocks needed, %d present, %d measured in %.1fs",
                search_id,
                device,
                report.needed,
                report.already_present,
                report.measured,
                report.seconds,
            )
        seconds = time.monotonic() - started
        self._update(
            search_id, phase={"name": PHASE_SEARCHING, "table": table}, elapsed_s=elapsed_before_s + seconds
        )
        return seconds

    def _stop_check(self, search_id: str) -> Callable[[], bool]:
        """`should_stop` for the runner: shutdown at once, a cancel request within `CANCEL_POLL_S`."""
        last_read = 0.0
        cancelled = False

        def should_stop() -> bool:
            nonlocal last_read, cancelled
            if search_id in self._lost:
                raise LeaseLostError(search_id, self.replica_id)
            if self._stopping.is_set():
                return True
            now = time.monotonic()
            if now - last_read >= CANCEL_POLL_S:
                last_read = now
                cancelled = self._cancel_requested(search_id)
            return cancelled

        return should_stop

    def _cancel_requested(self, search_id: str) -> bool:
        try:
            return self.queue.cancel_requested(search_id)
        except SQLAlchemyError:
            log.exception("could not read the cancel flag of search %s", search_id)
            return False

    def _progress(self, search_id: str, progress: RunProgress) -> None:
        # A failed progress write must not end the search: the trials are in the store already.
        try:
            self.queue.update(
                search_id,
                owner=self.replica_id,
                trials_done=progress.n_trials,
                trials_failed=progress.n_failed,
                front_size=progress.front_size,
                hypervolume=progress.hypervolume,
                elapsed_s=progress.elapsed_s,
                status_message=(
                    f"searching: {progress.n_trials}/{progress.budget_trials} trials, "
                    f"front of {progress.front_size}"
                ),
            )
        except SQLAlchemyError:
            log.exception("could not record the progress of search %s", search_id)

    def _ensure_ray(self) -> None:
        import ray

        with self._ray_lock:
            if not self._ray_ready:
                starts_local = not self.settings.ray_address and not ray.is_initialized()
                # Ray's C++ failure-signal handler would take SIGTERM from the server's own (it prints a
                # stack and aborts the process before the shutdown can stop searches and end Ray).
                # The server's driver alone goes without it; Ray's own processes keep theirs.
                from ray._private import ray_constants

                ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
                init_ray(self.settings.ray_address, num_cpus=self.settings.ray_num_cpus)
                self._ray_ready = True
                if starts_local:
                    gcs = ray.get_runtime_context().gcs_address
                    self._ray_record = LocalRayRecord(self.settings.state_dir, gcs_address=gcs)
                    self._ray_record.update()

    def _record_ray(self) -> None:
        """Refresh the record of the local Ray's processes (workers come and go)."""
        with self._ray_lock:
            record = self._ray_record
            if record is None:
                return
            try:
                record.update()
            except OSError:
                log.exception("could not record the Ray processes in %s", record.path)


def _unique(items: list[str]) -> list[str]:
    """`items` without repeats, in their first order (a resumed search re-derives its warnings)."""
    return list(dict.fromkeys(items))


def default_replica_id() -> str:
    """A replica id unique to this scheduler object: host, process id and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
