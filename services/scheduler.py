"""`Scheduler`: the background thread that claims queued searches and runs them.

For each claimed search it (a) measures, on this host, the latency-table entries the search needs
that are missing for devices with a local backend, (b) takes LUT snapshots, (c) runs `nas.runner.Runner`
on Ray with progress written to the search's row, and (d) writes the final status. A search left
`running` by a process that died is queued again when a scheduler starts and resumes from its stored
trials; `stop()` interrupts running searches the same way (back to `queued`), so nothing is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from latency_lut import BUILTIN_DEVICES, LatencyTable, SqlLatencyTable, known_devices, measure_missing
from nas import ResolvedSpec, SearchSpec, TrialState, resolve
from nas.runner import Runner, RunProgress, init_ray
from services.db import SearchStatus
from services.search_queue import SearchQueue
from services.settings import Settings
from services.store import SqlTrialStore

log = logging.getLogger(__name__)

#: How often a running search re-reads its `cancel_requested` flag, at most.
CANCEL_POLL_S = 0.5


class _Interrupted(Exception):
    """Raised from a progress callback to abandon LUT measurement (cancel or shutdown)."""


class Scheduler:
    """Runs queued searches, up to `settings.max_concurrent_searches` at once, each in its own thread."""

    def __init__(self, settings: Settings, engine: Engine, *, lut: LatencyTable | None = None):
        self.settings = settings
        self.engine = engine
        self.queue = SearchQueue(engine)
        self.store = SqlTrialStore(engine)
        self.lut: LatencyTable = lut if lut is not None else SqlLatencyTable(engine)
        self._stopping = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._workers: dict[str, threading.Thread] = {}
        self._ray_lock = threading.Lock()
        self._ray_ready = False

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Requeue searches orphaned by a dead process, then start polling for queued searches."""
        if self._loop_thread is not None:
            raise RuntimeError("the scheduler is already started")
        requeued = self.queue.requeue_orphans()
        if requeued:
            log.info("requeued %d search(es) left running by a previous process: %s", len(requeued), requeued)
        self._loop_thread = threading.Thread(target=self._loop, name="nas-scheduler", daemon=True)
        self._loop_thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Interrupt running searches (they go back to `queued` and resume on the next start) and join."""
        self._stopping.set()
        if self._loop_thread is not None:
            self._loop_thread.join(timeout)
        for worker in list(self._workers.values()):
            worker.join(timeout)

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
                    search_id = self.queue.claim_next()
                except SQLAlchemyError:
                    log.exception("could not poll the database for queued searches")
            if search_id is None:
                self._stopping.wait(self.settings.scheduler_poll_s)
                continue
            try:
                # Ray ties the processes of a local Ray to the thread that starts them (they are killed
                # when it ends), so this long-lived thread starts Ray, never a per-search worker.
                self._ensure_ray()
            except Exception as exc:
                log.exception("could not start or reach Ray for search %s", search_id)
                error = f"Ray is not available: {type(exc).__name__}: {exc}"
                try:
                    self.queue.finish(search_id, SearchStatus.FAILED, message=f"failed: {error}", error=error)
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
        except Exception as exc:
            log.exception("search %s failed", search_id)
            error = f"{type(exc).__name__}: {exc}"
            try:
                self.queue.finish(search_id, SearchStatus.FAILED, message=f"failed: {error}", error=error)
            except SQLAlchemyError:
                log.exception("could not record the failure of search %s", search_id)

    def _run(self, search_id: str) -> None:
        row = self.queue.get(search_id)
        spec = SearchSpec.model_validate(row.spec)
        resolved = resolve(spec, known_devices(self.lut.devices()))
        should_stop = self._stop_check(search_id)
        self._measure_luts(search_id, resolved, should_stop)
        luts = {device: self.lut.snapshot(device) for device in resolved.devices}
        self._ensure_ray()
        done_before = self.store.count(search_id)
        message = f"searching: {done_before}/{spec.budget.trials} trials (starting evaluators)"
        self.queue.update(search_id, status_message=message)
        runner = Runner(
            resolved,
            search_id,
            self.store,
            luts,
            should_stop=should_stop,
            on_progress=lambda progress: self._progress(search_id, progress),
            elapsed_before_s=row.elapsed_s,
        )
        result = runner.run()
        counts = {
            "trials_done": self.store.count(search_id),
            "trials_failed": self.store.count(search_id, state=TrialState.FAILED),
            "front_size": len(result.front),
            "hypervolume": result.hypervolume,
            "elapsed_s": result.elapsed_s,
        }
        if result.state == "succeeded":
            message = f"succeeded: {counts['trials_done']} trials, front of {len(result.front)}"
            self.queue.finish(search_id, SearchStatus.SUCCEEDED, message=message, **counts)
        elif result.state == "failed":
            error = result.error or "the runner failed without an error message"
            message = f"failed: {error}"
            self.queue.finish(search_id, SearchStatus.FAILED, message=message, error=error, **counts)
        else:
            self._interrupted(search_id, self._cancel_requested(search_id), **counts)

    def _interrupted(self, search_id: str, cancelled: bool, **counts: object) -> None:
        """A run stopped early: cancelled on request, or back to `queued` when the service is stopping."""
        if cancelled or not self._stopping.is_set():
            self.queue.finish(search_id, SearchStatus.CANCELLED, message="cancelled on request", **counts)
        else:
            message = "interrupted by a service shutdown; resumes from its stored trials on restart"
            self.queue.finish(search_id, SearchStatus.QUEUED, message=message, **counts)

    def _measure_luts(self, search_id: str, resolved: ResolvedSpec, should_stop: Callable[[], bool]) -> None:
        """Fill the missing entries of every device of the search that this host can measure."""
        for device in resolved.devices:
            known = BUILTIN_DEVICES.get(device)
            if known is None or known.backend is None:
                continue

            def progress(done: int, total: int, _key: str, device: str = device) -> None:
                message = f"measuring LUT for {device}: {done}/{total} blocks"
                self.queue.update(search_id, status_message=message)
                if should_stop():
                    raise _Interrupted

            self.queue.update(search_id, status_message=f"measuring LUT for {device}: checking blocks")
            report = measure_missing(
                resolved.space,
                device,
                self.lut,
                warmup=self.settings.lut_warmup,
                repeats=self.settings.lut_repeats,
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

    def _stop_check(self, search_id: str) -> Callable[[], bool]:
        """`should_stop` for the runner: shutdown at once, a cancel request within `CANCEL_POLL_S`."""
        last_read = 0.0
        cancelled = False

        def should_stop() -> bool:
            nonlocal last_read, cancelled
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
        with self._ray_lock:
            if not self._ray_ready:
                init_ray(self.settings.ray_address, num_cpus=self.settings.ray_num_cpus)
                self._ray_ready = True
