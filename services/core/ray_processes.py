"""The processes of the local Ray a server started, recorded on disk so that none outlives the server.

A local Ray is a handful of processes besides the server: `gcs_server`, `raylet`, the dashboard and
log monitors, `ray::DashboardAgent` and `ray::RuntimeEnvAgent` (children of the raylet, which ignore
SIGTERM) and the `ray::` workers. `ray.shutdown()` alone leaves the agents running when the server is
stopped by a signal, and a SIGKILLed server leaves all of them (parent 1).

`LocalRayRecord` keeps `<state_dir>/ray-<server pid>.json` with the server's own (pid, start time) and
every Ray process it started (pid, start time, name), refreshed as workers come and go. `stop()` (the
scheduler's stop, on SIGINT or SIGTERM) shuts Ray down, then terminates what is left and kills what
ignores that. `reap_orphans(state_dir)` (the scheduler's start) reads the records of servers that are
no longer running (SIGKILL, a crash, a power cut) and kills their processes, and those processes'
descendants, still alive: a process counts as the same one only with the same pid *and* start time,
so a reused pid is never touched. Several servers may share one state directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

#: Seconds a Ray process gets to exit after SIGTERM before it is killed.
TERMINATE_GRACE_S = 3.0


@dataclass(frozen=True)
class RecordedProcess:
    """One process as recorded: the pair (pid, create_time) names it even after its pid is reused."""

    pid: int
    create_time: float
    name: str

    @classmethod
    def of(cls, process: psutil.Process) -> RecordedProcess:
        return cls(process.pid, process.create_time(), process.name())

    def alive(self) -> psutil.Process | None:
        """The live process this record names, or None (gone, a zombie, or the pid reused)."""
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.create_time) > 0.01:
                return None
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            return process
        except psutil.Error:
            return None


def _is_ray(process: psutil.Process) -> bool:
    try:
        name = process.name()
        command = " ".join(process.cmdline())
    except psutil.Error:
        return False
    return name.startswith("ray::") or name in ("gcs_server", "raylet") or "/ray/" in command


def end_processes(processes: Iterable[psutil.Process], grace_s: float = TERMINATE_GRACE_S) -> list[int]:
    """SIGTERM `processes`, wait up to `grace_s`, SIGKILL those left; returns the pids killed so."""
    targets = [p for p in processes if p.pid != os.getpid()]
    for process in targets:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _gone, alive = psutil.wait_procs(targets, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return [p.pid for p in alive]


def _with_descendants(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    out: dict[int, psutil.Process] = {}
    for process in processes:
        out[process.pid] = process
        with contextlib.suppress(psutil.Error):
            for child in process.children(recursive=True):
                out.setdefault(child.pid, child)
    return list(out.values())


class LocalRayRecord:
    """The record of the local Ray this process started; see the module docstring."""

    def __init__(self, state_dir: Path, gcs_address: str | None = None):
        self.state_dir = Path(state_dir)
        self.gcs_address = gcs_address
        self.server = RecordedProcess.of(psutil.Process())
        self.path = self.state_dir / f"ray-{self.server.pid}.json"
        self.processes: dict[int, RecordedProcess] = {}

    def update(self) -> list[RecordedProcess]:
        """Record the Ray processes below this one now (keeping earlier ones still alive); cheap
        enough for every heartbeat. Returns the record."""
        current = {}
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process().children(recursive=True):
                if _is_ray(child):
                    with contextlib.suppress(psutil.Error):
                        current[child.pid] = RecordedProcess.of(child)
        kept = {pid: p for pid, p in self.processes.items() if pid not in current and p.alive()}
        merged = {**kept, **current}
        if merged != self.processes or not self.path.exists():
            self.processes = merged
            self._write()
        return list(self.processes.values())

    def _write(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = {
            "server": asdict(self.server),
            "gcs_address": self.gcs_address,
            "processes": [asdict(p) for p in self.processes.values()],
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)

    def stop(self, grace_s: float = TERMINATE_GRACE_S) -> list[int]:
        """Shut the local Ray down and end every Ray process it leaves; removes the record. Returns
        the pids that had to be killed (they ignored SIGTERM)."""
        import ray

        self.update()
        ours = [p for r in self.processes.values() if (p := r.alive()) is not None]
        ours = _with_descendants(ours)
        with contextlib.suppress(Exception):
            ray.shutdown()
        killed = end_processes([p for p in ours if p.is_running()], grace_s)
        if killed:
            log.info("killed %d Ray process(es) that ignored SIGTERM: %s", len(killed), killed)
        self.path.unlink(missing_ok=True)
        return killed


def reap_orphans(state_dir: Path, grace_s: float = TERMINATE_GRACE_S) -> list[RecordedProcess]:
    """End the Ray processes recorded by servers that are no longer running (see the module
    docstring); returns those found alive and ended."""
    ended: list[RecordedProcess] = []
    for path in sorted(Path(state_dir).glob("ray-*.json")):
        try:
            data = json.loads(path.read_text())
            server = RecordedProcess(**data["server"])
            recorded = [RecordedProcess(**p) for p in data["processes"]]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable Ray process record %s", path)
            continue
        if server.alive() is not None:
            continue  # a running server: its processes are its own business
        alive = {r.pid: (r, p) for r in recorded if (p := r.alive()) is not None}
        if alive:
            targets = _with_descendants(p for _r, p in alive.values())
            log.warning(
                "ending %d Ray process(es) (and %d below them) left by server pid %d, which is gone: %s",
                len(alive),
                len(targets) - len(alive),
                server.pid,
                sorted(r.name for r, _p in alive.values()),
            )
            end_processes(targets, grace_s)
            ended.extend(r for r, _p in alive.values())
        path.unlink(missing_ok=True)
    return ended
