"""Helpers of the service tests: a live uvicorn server, throw-away settings, a small search spec."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from services.settings import Settings


class LiveServer:
    """The real app served by uvicorn on a free port in a background thread."""

    def __init__(self, app) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        host, port = self._sock.getsockname()
        self.url = f"http://{host}:{port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(120)
        self._sock.close()


def service_settings(tmp_path: Path, **overrides) -> Settings:
    """Settings for a throw-away service: its own SQLite file, quick LUT measurements, fast polling.

    Auth is off (these servers bind to 127.0.0.1); tests of auth pass `auth_disabled=False`.
    """
    values = {
        "auth_disabled": True,
        "database_url": f"sqlite:///{tmp_path / 'nas.db'}",
        "lut_warmup": 1,
        "lut_repeats": 2,
        "scheduler_poll_s": 0.1,
        "ray_num_cpus": 2,
    }
    values.update(overrides)
    return Settings(**values)


#: A small real search: EfficientFormerV2 at 32 px with 10 classes, latency on this CPU and params.
SMALL_SPEC = {
    "name": "small-test-search",
    "space": "efficientformerv2",
    "space_options": {"resolution": 32, "num_classes": 10},
    "objectives": ["latency:host-cpu-torch", "params"],
    "strategy": "nsga2",
    "strategy_params": {"population_size": 4},
    "budget": {"trials": 8, "parallelism": 2},
    "seed": 3,
}


def wait_for(http_client: httpx.Client, search_id: str, statuses: set[str], timeout_s: float = 240) -> dict:
    """Poll a search until its status is one of `statuses` (a generous bound only against hangs)."""
    deadline = time.monotonic() + timeout_s
    while True:
        search = http_client.get(f"/v1/searches/{search_id}").json()
        if search["status"] in statuses:
            return search
        if time.monotonic() > deadline:
            raise AssertionError(f"search {search_id} still {search['status']}: {search['status_message']}")
        time.sleep(0.2)
