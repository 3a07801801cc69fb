"""How fast does the API answer at scale? p50/p99 latency of the Pareto read and of trial pages at
10,000 and 100,000 trials, and the bulk LUT upload rate, on SQLite and PostgreSQL.

For each backend a fresh database (a temporary SQLite file; a throw-away PostgreSQL schema) is served
by the real app under uvicorn in a process of its own on a local port (no scheduler, auth off), and
requests go over HTTP with a keep-alive `httpx` client:

- a finished search with N synthetic trials, written in batches through the trial store's table
  (configs sampled from EfficientFormerV2, two objectives on a noisy trade-off curve, so the front
  has a few hundred members) and the front kept as the runner keeps it (`ParetoFront.add` per
  trial; `SqlTrialStore.set_pareto` after each batch of 5,000);
- `GET /v1/searches/{id}` (one primary-key read: the floor of the whole stack),
  `GET /v1/searches/{id}/pareto`, and `GET /v1/searches/{id}/trials?limit=100` at the first page and
  at the last page, by `offset=N-100` and by keyset (`after=N-101`), `--requests` times each after
  10 warm-up requests;
- `POST /v1/devices/{d}/measurements`: `--lut-batches` batches of 1,000 keys with 30 samples each
  (the farm agent's batch shape), each batch a run of its own over UNet's real keys in turn (uploads
  accept only blocks of their space; after five batches runs re-measure keys); rows/s over the upload.

    python benchmarks/api.py                               # SQLite and PostgreSQL, 10k and 100k
    python benchmarks/api.py --sizes 10000 --backends sqlite --requests 50
    NAS_TEST_POSTGRES_URL=postgresql+psycopg://user@host/db python benchmarks/api.py
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import sqlalchemy as sa

from latency_lut.key_checks import space_blocks
from nas import SearchSpec
from nas.pareto import ParetoFront
from search_spaces import config_id, get_space
from services.core.db import TrialRow, make_engine
from services.core.migrations import init_db
from services.core.search_queue import SearchQueue
from services.core.trial_store import SqlTrialStore
from services.server.app import create_app

POSTGRES_URL = os.environ.get("NAS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
OPTIONS = {"resolution": 32, "num_classes": 10}
WRITE_BATCH = 5000
HERE = Path(__file__).resolve().parent


def server_app() -> object:
    """The app the server process runs (`uvicorn --factory`): settings from the environment, no
    scheduler (the synthetic searches must stay as written)."""
    return create_app(start_scheduler=False)


@contextmanager
def serve(url: str) -> Iterator[str]:
    """The real app under uvicorn in a process of its own (as `nas serve` runs it; a server thread in
    this process would share its GIL with the client and add ~50 ms to every request)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {
        **os.environ,
        "NAS_DATABASE_URL": url,
        "NAS_AUTH_DISABLED": "1",
        "NAS_MAX_BODY_BYTES": str(64 << 20),
        "NAS_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "uvicorn", "api:server_app", "--factory", "--app-dir", str(HERE)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]
    process = subprocess.Popen(command, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{base}/v1/health", timeout=5)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the API server did not start") from None
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(60)


@contextmanager
def database(backend: str, folder: Path) -> Iterator[str | None]:
    """A URL of an empty database of `backend`, or None when PostgreSQL does not answer."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'bench.db'}"
        return
    admin = make_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    schema = f"nas_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        print(f"PostgreSQL at {POSTGRES_URL} is not reachable ({str(exc).splitlines()[0]}): skipped")
        admin.dispose()
        yield None
        return
    url = sa.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def add_search(engine: sa.Engine, n: int, seed: int) -> tuple[str, float, int]:
    """A search of `n` synthetic trials; returns its id, the write rate (trials/s) and the front size."""
    queue, store = SearchQueue(engine), SqlTrialStore(engine)
    spec = SearchSpec.model_validate(
        {"space": "efficientformerv2", "space_options": OPTIONS, "objectives": ["latency:bench", "params"]}
    )
    sid = queue.submit(spec).id
    space = get_space("efficientformerv2", **OPTIONS)
    rng = np.random.default_rng(seed)
    configs = [space.sample(rng) for _ in range(500)]
    ids = [config_id(c) for c in configs]
    # A trade-off curve with noise: the front holds a few hundred members, as real searches' fronts do.
    u = rng.random(n)
    latency = 10 * (u + 0.05 * np.abs(rng.standard_normal(n)))
    params = 1e7 * ((1 - u) ** 2 + 0.05 * np.abs(rng.standard_normal(n)))
    front = ParetoFront(2)
    now = datetime.now(UTC)
    start = time.perf_counter()
    table = TrialRow.__table__
    for lo in range(0, n, WRITE_BATCH):
        rows = []
        for i in range(lo, min(n, lo + WRITE_BATCH)):
            values = {"latency:bench": float(latency[i]), "params": float(params[i])}
            front.add(i, (latency[i], params[i]))
            rows.append(
                {
                    "search_id": sid,
                    "number": i,
                    "config": configs[i % len(configs)],
                    "config_id": f"{ids[i % len(ids)][:8]}{i:08x}",
                    "state": "complete",
                    "values": values,
                    "feasible": True,
                    "metrics": {"n_blocks": 19, "latency_coverage:bench": 1.0},
                    "error": None,
                    "duration_s": 0.05,
                    "finished_at": now,
                    "on_front": False,
                }
            )
        with engine.begin() as conn:
            conn.execute(sa.insert(table), rows)
        store.set_pareto(sid, front.members)
    rate = n / (time.perf_counter() - start)
    # Finished, with its final counts, as the scheduler leaves a search that succeeded.
    queue.update(sid, status="succeeded", trials_done=n, trials_failed=0, front_size=len(front))
    return sid, rate, len(front)


def timed(http: httpx.Client, path: str, params: dict, requests: int) -> tuple[float, float]:
    for _ in range(10):
        http.get(path, params=params).raise_for_status()
    samples = []
    for _ in range(requests):
        start = time.perf_counter()
        response = http.get(path, params=params)
        samples.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


def lut_upload_rate(http: httpx.Client, batches: int) -> float:
    device = f"bench-{uuid.uuid4().hex[:8]}"
    http.post(
        "/v1/devices", json={"name": device, "runtime": "onnxruntime", "hardware": "bench"}
    ).raise_for_status()
    rng = np.random.default_rng(0)
    # Uploads accept only real keys of their space: UNet's (5,118 with the three timings), in turn.
    keys = [p + k for k in sorted(space_blocks("unet", {}).keys) for p in ("", "ctx@", "call@")]
    bodies = []
    for b in range(batches):
        rows = [
            {
                "key": keys[(b * 1000 + i) % len(keys)],
                "samples_ms": [round(float(x), 4) for x in rng.lognormal(0, 0.1, 30)],
            }
            for i in range(1000)
        ]
        bodies.append(
            {
                "run_id": f"run{b}",
                "space": "unet",
                "space_options": {},
                "provenance": {"backend": "onnxruntime-cpu", "runtime": "onnxruntime"},
                "measurements": rows,
            }
        )
    start = time.perf_counter()
    for body in bodies:
        http.post(f"/v1/devices/{device}/measurements", json=body).raise_for_status()
    return batches * 1000 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000", help="trials per search, comma-separated")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per measurement")
    parser.add_argument("--lut-batches", type=int, default=10, help="upload batches of 1,000 rows")
    args = parser.parse_args()
    # Stopped with SIGTERM: unwind, so the server process and the PostgreSQL schema go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.disable(logging.WARNING)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    uploads = []
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as folder, database(backend, Path(folder)) as url:
            if url is None:
                continue
            engine = make_engine(url)
            init_db(engine)
            with serve(url) as base, httpx.Client(base_url=base, timeout=120) as http:
                for n in sizes:
                    sid, write_rate, front = add_search(engine, n, seed=n)
                    # The floor: one primary-key read of the search, through the same stack.
                    floor = timed(http, f"/v1/searches/{sid}", {}, args.requests)
                    pareto = timed(http, f"/v1/searches/{sid}/pareto", {}, args.requests)
                    first = timed(http, f"/v1/searches/{sid}/trials", {"limit": 100}, args.requests)
                    page = f"/v1/searches/{sid}/trials"
                    last = timed(http, page, {"limit": 100, "offset": n - 100}, args.requests)
                    keyset = timed(http, page, {"limit": 100, "after": n - 101}, args.requests)
                    results.append((backend, n, front, floor, pareto, first, last, keyset, write_rate))
                    print(f"{backend} {n}: pareto p50 {pareto[0]:.1f} ms p99 {pareto[1]:.1f} ms", flush=True)
                uploads.append((backend, lut_upload_rate(http, args.lut_batches)))
            engine.dispose()
    print()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average while measuring: {load} ({os.cpu_count()} CPUs)")
    print()
    print(
        "| backend | trials | front | GET search p50 / p99 (ms) | Pareto p50 / p99 (ms) "
        "| first trials page p50 / p99 (ms) | last page, offset | last page, after | trial writes/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for backend, n, front, floor, pareto, first, last, keyset, write_rate in results:
        cells = [f"{p50:.1f} / {p99:.1f}" for p50, p99 in (floor, pareto, first, last, keyset)]
        print(f"| {backend} | {n:,} | {front} | {' | '.join(cells)} | {write_rate:,.0f} |")
    print()
    print("| backend | LUT upload (rows/s, batches of 1,000 rows x 30 samples) |")
    print("|---|---:|")
    for backend, rate in uploads:
        print(f"| {backend} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
