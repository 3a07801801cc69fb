"""A real two-node Ray cluster on this machine (`ray start --head` and `ray start --address`, one CPU
each), `nas serve` pointed at it with NAS_RAY_ADDRESS, and a search whose trials are evaluated on
both nodes (each trial records the Ray node that evaluated it).

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


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    """(GCS address, environment, log folder) of a running two-node cluster."""
    # Unix socket paths are short: the head's temp folder lives right under /tmp.
    temp = Path(tempfile.mkdtemp(prefix="nasray-", dir="/tmp"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
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
        yield address, env, tmp_path
    finally:
        for process in reversed(processes):
            end(process)
        shutil.rmtree(temp, ignore_errors=True)


def test_trials_are_evaluated_on_both_nodes(cluster: tuple[str, dict[str, str], Path]) -> None:
    address, env, logs = cluster
    port = BASE_PORT + 38
    serve_env = {
        **env,
        "NAS_DATABASE_URL": f"sqlite:///{logs / 'nas.db'}",
        "NAS_RAY_ADDRESS": address,
        "NAS_WARM_EVALUATORS": "0",
        "NAS_SCHEDULER_POLL_S": "0.2",
        "PYTHONUNBUFFERED": "1",
    }
    server = start([NAS, "serve", "--no-auth", "--port", str(port)], serve_env, logs / "serve.log")
    url = f"http://127.0.0.1:{port}"
    log = lambda: "\n".join((logs / n).read_text()[-3000:] for n in ("head.log", "worker.log", "serve.log"))  # noqa: E731
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{url}/v1/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return server.poll() is None and False

        wait_until(up, "nas serve to answer", 300, on_timeout=log)
        created = httpx.post(f"{url}/v1/searches", json=SPEC, timeout=60)
        assert created.status_code == 202, created.text
        search_id = created.json()["id"]

        def finished() -> bool:
            status = httpx.get(f"{url}/v1/searches/{search_id}", timeout=60).json()["status"]
            return status in ("succeeded", "failed", "cancelled")

        wait_until(finished, "the search on the cluster", 600, on_timeout=log)
        search = httpx.get(f"{url}/v1/searches/{search_id}", timeout=60).json()
        assert search["status"] == "succeeded", search
        trials = httpx.get(f"{url}/v1/searches/{search_id}/trials", params={"limit": 100}, timeout=60).json()
        nodes = {t["metrics"]["node_id"] for t in trials["items"]}
        # One CPU per node and two evaluators: one actor on each node.
        assert len(trials["items"]) == 8 and len(nodes) == 2, log()
        health = httpx.get(f"{url}/v1/health", timeout=60).json()
        assert health["ray"]["mode"] == "cluster"
    finally:
        end(server)
