"""`services.core.ray_processes` with real processes: the records of a server that is gone are reaped
(children included, SIGTERM ignored or not), a running server's are left alone, and a reused pid is
never touched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil

from services.core.ray_processes import RecordedProcess, reap_orphans

#: A process that ignores SIGTERM (like Ray's agents) and has a child of its own.
STUBBORN = (
    "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"
)


def spawn() -> psutil.Process:
    process = psutil.Process(subprocess.Popen([sys.executable, "-c", STUBBORN]).pid)
    for _ in range(100):
        if process.children():
            break
        psutil.wait_procs([process], timeout=0.05)
    return process


def write_record(state: Path, server: RecordedProcess, processes: list[RecordedProcess]) -> Path:
    state.mkdir(exist_ok=True)
    path = state / f"ray-{server.pid}.json"
    path.write_text(
        json.dumps({"server": vars(server), "processes": [vars(p) for p in processes], "gcs_address": None})
    )
    return path


def gone_server() -> RecordedProcess:
    """A server process that has exited (SIGKILLed)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    record = RecordedProcess.of(psutil.Process(process.pid))
    process.wait()
    return record


def test_the_processes_of_a_gone_server_are_ended_with_their_children(tmp_path: Path) -> None:
    agent = spawn()
    child = agent.children()[0]
    path = write_record(tmp_path, gone_server(), [RecordedProcess.of(agent)])
    ended = reap_orphans(tmp_path, grace_s=0.5)
    assert [p.pid for p in ended] == [agent.pid]
    assert not agent.is_running() or agent.status() == psutil.STATUS_ZOMBIE
    psutil.wait_procs([child], timeout=10)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert not path.exists()


def test_a_running_server_and_a_reused_pid_are_left_alone(tmp_path: Path) -> None:
    agent = spawn()
    try:
        running = RecordedProcess.of(psutil.Process())  # this test process: a live server
        write_record(tmp_path, running, [RecordedProcess.of(agent)])
        assert reap_orphans(tmp_path, grace_s=0.5) == []
        # A record whose (pid, start time) no longer match: the pid now names another process.
        reused = RecordedProcess(agent.pid, agent.create_time() - 100.0, "ray::DashboardAgent")
        path = write_record(tmp_path / "other", gone_server(), [reused])
        assert reap_orphans(tmp_path / "other", grace_s=0.5) == []
        assert agent.is_running() and not path.exists()
    finally:
        for process in [agent, *agent.children()]:
            process.kill()
        psutil.wait_procs([agent], timeout=10)
