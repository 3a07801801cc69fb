"""A search whose local device's latency table lacks entries measures them before its first trial, as a
visible phase: the submit answer counts them, the API shows the phase with its counts and an ETA (the
scheduler writes them to the database, so any API process reads them), `elapsed_s` includes it, and
`nas search watch` / `status` print it. Real HTTP, a real scheduler on Ray, a fresh SQLite table."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
from svc_helpers import SMALL_SPEC, throwaway_server, wait_for
from typer.testing import CliRunner

from search_spaces import get_space
from services.cli import app
from services.client import NasClient

MEASURING = "measuring latency table"


def test_the_latency_table_is_measured_as_a_visible_phase(tmp_path: Path, ray_session) -> None:
    spec = {**SMALL_SPEC, "name": "table-phase", "budget": {"trials": 2, "parallelism": 1}}
    blocks = len(get_space(spec["space"], **spec["space_options"]).all_blocks())
    entries = 3 * blocks  # each block isolated, in context and its call overhead
    with (
        throwaway_server(tmp_path, scheduler=True) as live,
        httpx.Client(base_url=live.url, timeout=60) as http,
    ):
        created = http.post("/v1/searches", json=spec)
        assert created.status_code == 202, created.text
        body = created.json()
        assert body["measure_first"] == [{"device": "host-cpu-torch", "blocks": blocks, "entries": entries}]
        assert f"{entries:,} entries of host-cpu-torch ({blocks:,} blocks)" in body["message"]
        sid = body["id"]

        # The CLI follows the search too (output not a terminal: plain lines).
        watched: dict[str, object] = {}
        watcher = threading.Thread(
            target=lambda: watched.update(
                result=CliRunner().invoke(
                    app, ["search", "watch", sid, "--server", live.url, "--poll-s", "0.05"]
                )
            )
        )
        watcher.start()
        with NasClient(live.url) as client:
            events = [data for _event, data in client.events(sid, poll_s=0.05)]
        watcher.join(300)

        measuring = [e for e in events if e["progress"]["phase"] == MEASURING]
        assert measuring, [e["status_message"] for e in events]
        done = []
        for event in measuring:
            progress, table = event["progress"], event["progress"]["latency_table"]
            assert table["device"] == "host-cpu-torch" and table["total"] == entries
            assert 0 <= table["done"] <= entries
            assert progress["in_flight"] == 0 and progress["eta_s"] is None and event["trials_done"] == 0
            assert event["status_message"].startswith(f"{MEASURING} for host-cpu-torch: ")
            assert f" / {entries:,} entries, ETA " in event["status_message"]
            assert (table["eta_s"] is None) == (table["done"] == 0)
            done.append(table["done"])
        assert done == sorted(done)
        later = [e for e in events[events.index(measuring[-1]) + 1 :] if e["status"] == "running"]
        assert all(e["progress"]["phase"] == "searching" for e in later)

        final = wait_for(http, sid, {"succeeded", "failed"})
        assert final["status"] == "succeeded", final["status_message"]
        table = final["progress"]["latency_table"]
        assert table["done"] == table["total"] == entries and table["eta_s"] == 0
        assert final["progress"]["phase"] is None
        # The measuring time is part of the search's time.
        assert final["elapsed_s"] >= table["elapsed_s"] > 0

        result = watched["result"]
        assert result.exit_code == 0, result.output
        assert (
            "measuring latency table: " in result.stdout
            and f" / {entries:,} entries of host-cpu-torch" in result.stdout
        )
        shown = CliRunner().invoke(app, ["search", "status", sid, "--server", live.url])
        assert f"{entries:,} entries of host-cpu-torch measured in " in shown.stdout

        # The table is complete now: a second search on the space measures nothing first.
        again = http.post("/v1/searches", json={**spec, "name": "table-phase-again"}).json()
        assert again["measure_first"] == [] and again["message"] == "queued"
        second = wait_for(http, again["id"], {"succeeded", "failed"})
        assert second["status"] == "succeeded" and second["progress"]["latency_table"] is None
