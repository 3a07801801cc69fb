"""Ownership of searches (issue 14, item 13), over real HTTP on SQLite and PostgreSQL: a search belongs
to its submitting key's team, else to the key's name; a key reaches its own searches, reading others'
needs `searches:read-all` (or `admin`) and cancelling them `admin`. Every route of one search, by
every kind of caller; listings are filtered the same way; migration 0003 gives existing searches
the owner `legacy`."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa
from svc_helpers import SMALL_SPEC, LiveServer, empty_service_database, service_settings
from test_auth_matrix import EXPECTED

from nas import SearchSpec
from services.core import migrations
from services.core.auth import create_key
from services.core.db import make_engine
from services.core.search_queue import SearchQueue
from services.server.app import create_app

#: Who calls: name -> (key name, team, scopes).
CALLERS = {
    "alice": ("alice", None, ["searches:read", "searches:write"]),
    "alice-laptop": ("alice", None, ["searches:read"]),  # another key of the same person
    "bob": ("bob", None, ["searches:read", "searches:write"]),
    "carol": ("carol", "vision", ["searches:read", "searches:write"]),
    "dave": ("dave", "vision", ["searches:read", "searches:write"]),
    "auditor": ("auditor", None, ["searches:read-all"]),
    "ops": ("ops", None, ["searches:read-all", "searches:write"]),
    "farm": ("farm", None, ["lut:write"]),
    "admin": ("root", None, ["admin"]),
}
#: Every route that names one search, from the authorization matrix's table.
SEARCH_READ_ROUTES = sorted(path for (method, path) in EXPECTED if "{search_id}" in path and method == "GET")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def secured(request, tmp_path) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    postgres = request.getfixturevalue("postgres_engine") if request.param == "postgres" else None
    with empty_service_database(tmp_path, postgres) as (url, engine):
        tokens = {
            who: create_key(engine, name, scopes, team=team)[1]
            for who, (name, team, scopes) in CALLERS.items()
        }
        settings = service_settings(tmp_path, database_url=url, auth_disabled=False)
        with LiveServer(create_app(settings, start_scheduler=False)) as server:
            yield server, tokens


def client(server: LiveServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {token}"})


def submit(server: LiveServer, token: str, name: str) -> dict:
    with client(server, token) as http:
        created = http.post("/v1/searches", json={**SMALL_SPEC, "name": name})
        assert created.status_code == 202, created.text
        return http.get(f"/v1/searches/{created.json()['id']}").json()


def outcome(server: LiveServer, token: str, method: str, path: str) -> str:
    """`hidden` (404: no such search, as for an unknown id), `forbidden` (403) or `reached`."""
    with client(server, token) as http, http.stream(method, path) as response:
        if response.status_code == 404:
            body = response.read().decode()
            return "hidden" if "no search with id" in body else "reached"
        assert response.status_code < 500, (path, response.status_code)
        return "forbidden" if response.status_code == 403 else "reached"


def url(path: str, search_id: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: search_id if m.group(1) == "search_id" else "0", path)


def test_owner_is_the_team_else_the_key_name(secured) -> None:
    server, tokens = secured
    assert submit(server, tokens["alice"], "a")["owner"] == "alice"
    assert submit(server, tokens["carol"], "v")["owner"] == "vision"
    assert submit(server, tokens["admin"], "r")["owner"] == "root"


@pytest.mark.parametrize("path", SEARCH_READ_ROUTES)
def test_reading_one_search_by_every_caller(secured, path: str) -> None:
    server, tokens = secured
    mine = submit(server, tokens["alice"], "alice's")
    team = submit(server, tokens["carol"], "vision's")
    expected = {
        # caller: (alice's search, team vision's search)
        "alice": ("reached", "hidden"),
        "alice-laptop": ("reached", "hidden"),
        "bob": ("hidden", "hidden"),
        "carol": ("hidden", "reached"),
        "dave": ("hidden", "reached"),
        "auditor": ("reached", "reached"),
        "ops": ("reached", "reached"),
        "farm": ("forbidden", "forbidden"),  # no read scope at all
        "admin": ("reached", "reached"),
    }
    got = {
        who: tuple(outcome(server, tokens[who], "GET", url(path, s["id"])) for s in (mine, team))
        for who in CALLERS
    }
    assert got == expected, path


def test_listings_show_only_what_a_caller_may_read(secured) -> None:
    server, tokens = secured
    ids = {
        "alice": submit(server, tokens["alice"], "a")["id"],
        "vision": submit(server, tokens["dave"], "v")["id"],
        "bob": submit(server, tokens["bob"], "b")["id"],
    }
    expected = {
        "alice": {ids["alice"]},
        "alice-laptop": {ids["alice"]},
        "carol": {ids["vision"]},
        "bob": {ids["bob"]},
        "auditor": set(ids.values()),
        "admin": set(ids.values()),
    }
    for who, wanted in expected.items():
        with client(server, tokens[who]) as http:
            api = http.get("/v1/searches").json()
            dashboard = http.get("/v1/dashboard/searches").json()
        assert {s["id"] for s in api["items"]} == wanted and api["total"] == len(wanted), who
        assert {s["id"] for s in dashboard["items"]} == wanted and dashboard["total"] == len(wanted), who


@pytest.mark.parametrize(
    ("who", "status"),
    [
        ("alice", 200),  # the owner
        ("bob", 404),  # may not even read it
        ("ops", 403),  # reads everything, writes, but does not own it
        ("auditor", 403),  # no write scope
        ("alice-laptop", 403),  # the owner's read-only key: no write scope
        ("admin", 200),
    ],
)
def test_cancel_needs_the_owner_or_admin(secured, who: str, status: int) -> None:
    server, tokens = secured
    search = submit(server, tokens["alice"], "to cancel")
    with client(server, tokens[who]) as http:
        response = http.post(f"/v1/searches/{search['id']}/cancel")
        assert response.status_code == status, response.text
        if who == "ops":
            assert "belongs to 'alice'" in response.json()["detail"][0]["message"]
    with client(server, tokens["admin"]) as http:
        after = http.get(f"/v1/searches/{search['id']}").json()["status"]
    assert after == ("cancelled" if status == 200 else "queued")


def test_a_team_member_cancels_the_team_search(secured) -> None:
    server, tokens = secured
    search = submit(server, tokens["carol"], "team search")
    with client(server, tokens["dave"]) as http:
        response = http.post(f"/v1/searches/{search['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'old.db'}"
    return request.getfixturevalue("fresh_postgres_url")


def test_migration_0003_gives_existing_searches_the_legacy_owner(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        migrations.upgrade(engine, "0002")
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO searches (id, name, spec, status, status_message, cancel_requested, "
                    "trials_done, trials_failed, budget_trials, front_size, elapsed_s, created_at, "
                    "updated_at, claims) VALUES ('old1', 'old', :spec, 'succeeded', 'done', false, "
                    "3, 0, 3, 1, 1.0, :now, :now, 1)"
                ),
                {"spec": '{"space": "x"}', "now": "2025-01-01 00:00:00"},
            )
        report = migrations.upgrade(engine)
        assert (report.before, report.after) == ("0002", migrations.head_revision())
        row = SearchQueue(engine).get("old1")
        assert (row.owner, row.warnings, row.name) == ("legacy", None, "old")
        spec = SearchSpec(space="any", objectives=["params"])
        assert SearchQueue(engine).submit(spec).owner == "legacy"  # no caller: the host's CLI
    finally:
        engine.dispose()
