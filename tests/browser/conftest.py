"""Fixtures of the browser tests: headless Debian Chromium driven by Playwright, a live server with its
scheduler on a throw-away SQLite database, and the searches the tests look at.

Chromium comes from Debian (`apt-get install -y chromium`; `make test` installs it when run as root);
Playwright only drives it (`playwright install`, which downloads its own browser, is never used). When
either is missing the tests are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

# The live-server helpers of the service tests (tests/services is not a package).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))
from svc_helpers import LiveServer, throwaway_server, wait_for

CHROMIUM = os.environ.get("NAS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: A real search with three objectives and a constraint, so the page has a front, feasible and
#: infeasible trials, and a third objective to plot.
PLOT_SPEC = {
    "name": "browser-plot-search",
    "space": "efficientformerv2",
    "space_options": {"resolution": 32, "num_classes": 10},
    "objectives": ["latency:host-cpu-torch", "params", "macs"],
    "constraints": ["params <= 3500000"],
    "strategy": "nsga2",
    "strategy_params": {"population_size": 8},
    "budget": {"trials": 24, "parallelism": 2},
    "seed": 1,
}


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[object]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (pip install -e '.[dev]' brings it)"
    )
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(
            f"no Chromium at {CHROMIUM} (env NAS_TEST_CHROMIUM): install Debian's with `apt-get install -y "
            "chromium` (`make test` does so when run as root with apt-get available)"
        )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium_browser) -> Iterator[object]:
    """A fresh page; JavaScript errors on it fail the test."""
    context = chromium_browser.new_context(viewport={"width": 1500, "height": 1300})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(60_000)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[LiveServer]:
    """The real app with its scheduler, on its own SQLite database and a local Ray (the session's
    Ray when another test module started one: it is left running for that module's teardown)."""
    import ray

    from nas.runner import init_ray

    started_here = not ray.is_initialized()
    init_ray(None, num_cpus=2)
    with throwaway_server(tmp_path_factory.mktemp("browser"), scheduler=True) as server:
        yield server
    if started_here:
        ray.shutdown()


@pytest.fixture(scope="module")
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def plot_search(http: httpx.Client) -> dict:
    created = http.post("/v1/searches", json=PLOT_SPEC)
    assert created.status_code == 202, created.text
    search = wait_for(http, created.json()["id"], {"succeeded", "failed", "cancelled"})
    assert search["status"] == "succeeded", search
    return search


@pytest.fixture(scope="module")
def big_search(live: LiveServer) -> str:
    """A finished search of 100,000 synthetic trials, stored straight into the server's database."""
    from services.core.demo_search import insert_synthetic_search

    return insert_synthetic_search(live.app.state.engine, trials=100_000, seed=7, name="synthetic-100k")
