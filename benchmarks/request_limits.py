"""What do the limits on expensive requests cost and bound? (issue 14, item 10)

The real app under uvicorn in a process of its own (no scheduler, auth off, a temporary SQLite file,
`NAS_MAX_HEAVY_REQUESTS` as given), requests over HTTP:

- `POST /v1/devices/host-cpu-torch/predict` with `MAX_PREDICT_CONFIGS` (256) sampled EfficientFormerV2
  configs at 224 px: the first request (it sets up the device's predictors for the space) and the
  same request again; 1,000 configs (refused, 422);
- `POST /v1/spaces/efficientformerv2/evaluate` of the largest subnet with `macs: true` at 224 px, at
  448 px (the largest resolution `NAS_MAX_REQUEST_INPUT_SCALE` = 4 allows) and at 1024 px (refused);
- `--burst` evaluate requests sent at once (different subnets at 224 px, MACs counted): how many are
  served and how many are answered 429 with `Retry-After`, and the slowest answer of each kind.

Every figure is one request's wall time (the machine's load average is printed beside it).

    python benchmarks/request_limits.py
    python benchmarks/request_limits.py --burst 8 --max-heavy 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from search_spaces import get_space
from services.server.app import create_app
from services.server.schemas import MAX_PREDICT_CONFIGS

HERE = Path(__file__).resolve().parent
EVALUATE = "/v1/spaces/efficientformerv2/evaluate"
PREDICT = "/v1/devices/host-cpu-torch/predict"


def server_app() -> object:
    """The app the server process runs (`uvicorn --factory`): settings from the environment."""
    return create_app(start_scheduler=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def timed(http: httpx.Client, path: str, body: dict) -> tuple[int, float, httpx.Response]:
    start = time.perf_counter()
    response = http.post(path, json=body)
    return response.status_code, time.perf_counter() - start, response


def configs(n: int, resolution: int, seed: int = 0) -> list[dict]:
    space = get_space("efficientformerv2", resolution=resolution)
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=8, help="evaluate requests sent at once")
    parser.add_argument("--max-heavy", type=int, default=2, help="NAS_MAX_HEAVY_REQUESTS of the server")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="nas-limits-"))
    port = free_port()
    env = {
        **os.environ,
        "NAS_DATABASE_URL": f"sqlite:///{folder / 'nas.db'}",
        "NAS_AUTH_DISABLED": "1",
        "NAS_MAX_HEAVY_REQUESTS": str(args.max_heavy),
    }
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "request_limits:server_app",
        "--factory",
        "--app-dir",
        str(HERE),
    ]
    command += ["--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    rows: list[tuple[str, str, str, str]] = []
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/v1/health", timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=600) as http:
            opts = {"resolution": 224}
            batch = {"space": "efficientformerv2", "space_options": opts}
            for label in ("first (sets up predictors)", "again"):
                status, seconds, _ = timed(
                    http, PREDICT, {**batch, "configs": configs(MAX_PREDICT_CONFIGS, 224)}
                )
                rows.append(
                    (
                        f"predict {MAX_PREDICT_CONFIGS} configs, 224 px, {label}",
                        str(status),
                        f"{seconds:.2f}",
                        load(),
                    )
                )
            status, seconds, _ = timed(http, PREDICT, {**batch, "configs": configs(1000, 224)})
            rows.append(("predict 1,000 configs (over the limit)", str(status), f"{seconds:.2f}", load()))
            for resolution in (224, 448, 1024):
                body = {"config": "l", "space_options": {"resolution": resolution}, "macs": True}
                status, seconds, _ = timed(http, EVALUATE, body)
                rows.append(
                    (
                        f"evaluate largest reference (l), macs, {resolution} px",
                        str(status),
                        f"{seconds:.2f}",
                        load(),
                    )
                )

            def one(config: dict) -> tuple[int, float, str | None]:
                status, seconds, response = timed(
                    http, EVALUATE, {"config": config, "space_options": opts, "macs": True}
                )
                return status, seconds, response.headers.get("retry-after")

            burst = configs(args.burst, 224, seed=1)
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.burst) as pool:
                answers = list(pool.map(one, burst))
            wall = time.perf_counter() - start
            for status in sorted({a[0] for a in answers}):
                of = [a for a in answers if a[0] == status]
                retry = f", Retry-After {of[0][2]} s" if of[0][2] else ""
                rows.append(
                    (
                        f"burst of {args.burst} evaluates (max {args.max_heavy} at once): "
                        f"{len(of)} answered{retry}",
                        str(status),
                        f"slowest {max(a[1] for a in of):.2f}",
                        load(),
                    )
                )
            rows.append((f"burst of {args.burst}: wall time", "", f"{wall:.2f}", load()))
    finally:
        server.terminate()
        server.wait(60)
    width = max(len(r[0]) for r in rows)
    print(f"{'request':<{width}}  status  seconds        load average (1, 5, 15 min)")
    for request, status, seconds, load_avg in rows:
        print(f"{request:<{width}}  {status:>6}  {seconds:>13}  {load_avg}")


if __name__ == "__main__":
    main()
