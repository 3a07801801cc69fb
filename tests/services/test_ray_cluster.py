"""A real two-node Ray cluster on this machine (`ray start --head` and `ray start --address`, one CPU
each), `nas serve` pointed at it with NAS_RAY_ADDRESS, and a search whose trials are evaluated on
both nodes (each trial records the Ray node that evaluated it); then a search during which the worker
node is killed (SIGKILL to its whole process group) still records every trial of its budget, the
evaluation lost with the node run again on the head.

Both nodes run `ray start --block` in their own process group, so the test ends exactly the processes
it started (never `ray stop`, which would end every Ray on the machine). Ports: NAS_TEST_RAY_PORT (18350)
and the 39 above it; the head's files live in a temp folder of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from svc_helpers import wait_until

# Two Ray nodes, a server and a search on 2 shared cores: minutes, more under load.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

RAY = str(Path(sys.executable).with_name("ray"))
NAS = str(Path(sys.executable).with_name("nas"))
BASE_PORT = int(os.environ.get("NAS_TEST_RAY_PORT", "18350"))
SPEC = {
    "name": "two-nodes",
    "space": "efficientformerv2",
    "space_options": {"resolution": 32, "num_classes": 10},
    "objectives": ["params", "macs"],
    "strategy": "random",
    "budget": {"trials": 8, "parallelism": 2},
    "seed": 0,
}


def node_ports(offset: int) -> list[str]:
    """The ports of one node, `offset` above the base (each node needs its own)."""
    p = BASE_PORT + offset
    return [
        f"--node-manager-port={p + 1}",
        f"--object-manager-port={p + 2}",
        f"--metrics-export-port={p + 3}",
        f"--dashboard-agent-listen-port={p + 4}",
        f"--dashboard-agent-grpc-port={p + 5}",
        f"--runtime-env-agent-port={p + 6}",
        f"--min-worker-port={p + 7}",
        f"--max-worker-port={p + 19}",
    ]


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def end(process: subprocess.Popen) -> None:
    """End a process group this test started: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    logs: Path
    worker: subprocess.Popen


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A running two-node cluster: GCS address, environment, log folder and the worker node's process."""
    # Unix socket paths are short: the head's temp folder lives right under /tmp.
    temp = Path(tempfile.mkdtemp(prefix="nasray-", dir="/tmp"))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        # A dead node is declared dead after ~3 s of failed health checks (default ~15-30 s).
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
    }
    address = f"127.0.0.1:{BASE_PORT}"
    common = ["--block", "--disable-usage-stats", "--num-cpus=1"]
    head = start(
        [
            RAY, "start", "--head", f"--port={BASE_PORT}", "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp}", "--include-dashboard=false",
            *common, *node_ports(0),
        ],
        env,
        tmp_path / "head.log",
    )  # fmt: skip
    processes = [head]
    try:
        head_log = tmp_path / "head.log"
        wait_until(
            lambda: "Ray runtime started" in head_log.read_text() or head.poll() is not None, "the head", 300
        )
        assert head.poll() is None, head_log.read_text()[-3000:]
        worker = start(
            [
                RAY, "start", f"--address={address}", "--node-ip-address=127.0.0.1",
                '--resources={"second_node": 1}', *common, *node_ports(20),
            ],
            env,
            tmp_path / "worker.log",
        )  # fmt: skip
        processes.append(worker)
        yield Cluster(address, env, tmp_path, worker)
    finally:
        for process in reversed(processes):
            end(process)
        shutil.rmtree(temp, ignore_errors=True)


@contextmanager
def served(cluster: Cluster) -> Iterator[str]:
    """`nas serve` on the cluster (NAS_RAY_ADDRESS): its URL once it answers."""
    port = BASE_PORT + 38
    serve_env = {
        **cluster.env,
        "NAS_DATABASE_URL": f"sqlite:///{cluster.logs / 'nas.db'}",
        "NAS_RAY_ADDRESS": cluster.address,
        "NAS_WARM_EVALUATORS": "0",
        "NAS_SCHEDULER_POLL_S": "0.2",
        "PYTHONUNBUFFERED": "1",
    }
    server = start([NAS, "serve", "--no-auth", "--port", str(port)], serve_env, cluster.logs / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{url}/v1/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return server.poll() is None and False

        wait_until(up, "nas serve to answer", 300, on_timeout=lambda: logs_of(cluster))
        yield url
    finally:
        end(server)


def logs_of(cluster: Cluster) -> str:
    return "\n".join((cluster.logs / n).read_text()[-3000:] for n in ("head.log", "worker.log", "serve.log"))


def run_search(url: str, spec: dict) -> str:
    created = httpx.post(f"{url}/v1/searches", json=spec, timeout=60)
    assert created.status_code == 202, created.text
    return created.json()["id"]


def trials_of(url: str, search_id: str) -> list[dict]:
    return httpx.get(f"{url}/v1/searches/{search_id}/trials", params={"limit": 100}, timeout=60).json()[
        "items"
    ]


def wait_finished(url: str, search_id: str, cluster: Cluster) -> dict:
    def finished() -> bool:
        status = httpx.get(f"{url}/v1/searches/{search_id}", timeout=60).json()["status"]
        return status in ("succeeded", "failed", "cancelled")

    wait_until(finished, "the search on the cluster", 600, on_timeout=lambda: logs_of(cluster))
    return httpx.get(f"{url}/v1/searches/{search_id}", timeout=60).json()


def test_trials_are_evaluated_on_both_nodes(cluster: Cluster) -> None:
    with served(cluster) as url:
        search_id = run_search(url, SPEC)
        search = wait_finished(url, search_id, cluster)
        assert search["status"] == "succeeded", search
        trials = trials_of(url, search_id)
        nodes = {t["metrics"]["node_id"] for t in trials}
        # One CPU per node and two evaluators: one actor on each node.
        assert len(trials) == 8 and len(nodes) == 2, logs_of(cluster)
        health = httpx.get(f"{url}/v1/health", timeout=60).json()
        assert health["ray"]["mode"] == "cluster"


def test_killing_the_worker_node_mid_search_loses_no_trial(cluster: Cluster) -> None:
    budget = 16
    # Evaluations of a few seconds (zico: two backward passes), so that the kill finds one in flight
    # on the worker node: with counting-only objectives the actor is idle between trials most of
    # the time and the kill may catch no evaluation at all.
    spec = {
        **SPEC,
        "name": "node-dies",
        "objectives": ["params", "proxy:zico"],
        "budget": {"trials": budget, "parallelism": 2},
    }
    with served(cluster) as url:
        search_id = run_search(url, spec)
        recorded: list[dict] = []

        def nodes_seen() -> bool:
            recorded[:] = trials_of(url, search_id)
            return len({t["metrics"].get("node_id") for t in recorded}) == 2

        wait_until(nodes_seen, "trials from both nodes", 600, on_timeout=lambda: logs_of(cluster))
        assert len(recorded) < budget, "the search ended before the node could be killed"
        # The whole worker node at once (raylet, its workers, the evaluator actor on it): SIGKILL.
        os.killpg(cluster.worker.pid, signal.SIGKILL)
        cluster.worker.wait(60)

        search = wait_finished(url, search_id, cluster)
        assert search["status"] == "succeeded", search
        trials = trials_of(url, search_id)
        # Every trial of the budget is recorded, numbered without gaps, none failed.
        assert [t["number"] for t in trials] == list(range(budget))
        assert all(t["state"] == "complete" for t in trials), [t["error"] for t in trials]
        assert len({t["config_id"] for t in trials}) == budget
        # The evaluation that was on the dead node was run again on the surviving one.
        retried = [t for t in trials if t["metrics"].get("attempts", 1) > 1]
        assert retried, logs_of(cluster)
        survivor = trials[-1]["metrics"]["node_id"]
        assert all(t["metrics"]["node_id"] == survivor for t in retried)
