"""API keys: stored hashed, scoped, revocable, expiring; sent by the client, the CLI and the demo.

Real parts throughout: keys in SQLite and PostgreSQL, requests through uvicorn, the `nas` CLI.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import HTTPException
from sqlalchemy.engine import Engine
from starlette.requests import Request
from svc_helpers import (
    LiveServer,
    demo_spec,
    free_port,
    serve_env,
    service_settings,
    throwaway_server,
)
from typer.testing import CliRunner

from services.cli import app as cli_app
from services.cli.keys import parse_expiry
from services.client import ClientError, NasClient
from services.core.auth import (
    ALL_SCOPES,
    Scope,
    UnknownKeyError,
    create_key,
    has_active_admin,
    list_keys,
    revoke_key,
    verify_token,
)
from services.core.db import ApiKeyRow
from services.server.app import create_app
from services.server.deps import authenticate
from services.settings import Settings, get_settings, is_loopback

NAS = Path(sys.executable).with_name("nas")
runner = CliRunner()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path) -> Engine:
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_engine")
    return request.getfixturevalue("postgres_isolated_engine")


# ----------------------------------------------------------------------------- keys in the database
def test_key_is_stored_hashed_and_verified(engine: Engine) -> None:
    key, token = create_key(engine, "alice", ["searches:read", "searches:write", "searches:read"])
    assert token.startswith(f"nas_{key.id}_") and len(token) > 50
    assert key.scopes == ("searches:read", "searches:write")  # deduplicated, canonical order
    with engine.connect() as conn:
        row = conn.execute(sa.select(ApiKeyRow.__table__)).one()._mapping
    # Only the digest is stored: no column holds the token or its secret part.
    secret = token.rsplit("_", 1)[1]
    assert all(secret not in str(value) for value in row.values())
    assert row["token_sha256"] != token and len(row["token_sha256"]) == 64

    found, reason = verify_token(engine, token)
    assert found is not None and found.id == key.id and found.name == "alice" and reason == ""
    # Same id, another secret: refused (and so is a token of the right shape but an unknown id).
    forged = f"nas_{key.id}_{'A' * 43}"
    assert verify_token(engine, forged) == (None, "unknown API key")
    assert verify_token(engine, f"nas_{'0' * 12}_{'A' * 43}")[0] is None
    assert "not an API key of this server" in verify_token(engine, "hunter2")[1]


def test_revoke_and_expiry(engine: Engine) -> None:
    key, token = create_key(engine, "farm", ["lut:write"], expires_at=datetime.now(UTC) + timedelta(days=1))
    assert verify_token(engine, token)[0] is not None
    revoked = revoke_key(engine, key.id)
    assert revoked.revoked_at is not None and not revoked.active()
    found, reason = verify_token(engine, token)
    assert found is None and "revoked" in reason and key.id in reason
    # Revoking again keeps the first time; revoking by the whole token works too.
    assert revoke_key(engine, token).revoked_at == revoked.revoked_at
    with pytest.raises(UnknownKeyError, match="no API key with id 'nope'"):
        revoke_key(engine, "nope")

    other, other_token = create_key(
        engine, "short-lived", ["admin"], expires_at=datetime.now(UTC) + timedelta(hours=1)
    )
    with engine.begin() as conn:
        past = datetime.now(UTC) - timedelta(seconds=1)
        conn.execute(sa.update(ApiKeyRow).where(ApiKeyRow.id == other.id).values(expires_at=past))
    found, reason = verify_token(engine, other_token)
    assert found is None and "expired" in reason
    assert not has_active_admin(engine)
    assert [k.id for k in list_keys(engine)] == [key.id, other.id]


def test_key_input_is_checked(sqlite_engine: Engine) -> None:
    with pytest.raises(ValueError, match=r"unknown scope\(s\) \['searches:delete'\]"):
        create_key(sqlite_engine, "x", ["searches:delete"])
    with pytest.raises(ValueError, match="at least one scope"):
        create_key(sqlite_engine, "x", [" , "])
    with pytest.raises(ValueError, match="name of 1 to 200"):
        create_key(sqlite_engine, "  ", ["admin"])
    with pytest.raises(ValueError, match="in the past"):
        create_key(sqlite_engine, "x", ["admin"], expires_at=datetime.now(UTC) - timedelta(minutes=1))
    assert list_keys(sqlite_engine) == []
    # Comma-separated scopes, as `--scope a,b` gives them.
    key, _ = create_key(sqlite_engine, "x", ["lut:write,searches:read"])
    assert key.scopes == ("searches:read", "lut:write")


def test_parse_expiry() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_expiry(None) is None
    assert parse_expiry("30d", now) == now + timedelta(days=30)
    assert parse_expiry("12h", now) == now + timedelta(hours=12)
    assert parse_expiry("2027-01-31", now) == datetime(2027, 1, 31, tzinfo=UTC)
    for bad in ("0d", "yesterday", "2020-01-01"):
        with pytest.raises(ValueError, match="--expires"):
            parse_expiry(bad, now)


# ----------------------------------------------------------------------------- over HTTP
@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[LiveServer]:
    """A live server with auth on (no scheduler: these tests only ask)."""
    with throwaway_server(tmp_path_factory.mktemp("auth"), auth_disabled=False) as live:
        yield live


def _key(live: LiveServer, *scopes: str, name: str = "test") -> str:
    return create_key(live.app.state.engine, name, scopes)[1]


def test_http_401_403_and_allowed(secured: LiveServer) -> None:
    reader = _key(secured, "searches:read")
    with httpx.Client(base_url=secured.url, timeout=30) as http:
        assert http.get("/v1/health").status_code == 200  # open

        missing = http.get("/v1/searches")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        item = missing.json()["detail"][0]
        assert item["field"] == "authorization" and "searches:read" in item["message"]
        assert item["allowed"] == ["searches:read", "admin"]

        wrong = http.get("/v1/searches", headers={"Authorization": "Bearer nas_000000000000_" + "x" * 43})
        assert wrong.status_code == 401 and "unknown API key" in wrong.json()["detail"][0]["message"]
        basic = http.get("/v1/searches", headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert basic.status_code == 401

        ok = http.get("/v1/searches", headers={"Authorization": f"Bearer {reader}"})
        assert ok.status_code == 200 and ok.json()["total"] == 0
        assert http.get("/v1/searches", headers={"X-API-Key": reader}).status_code == 200

        refused = http.post("/v1/searches", json={}, headers={"Authorization": f"Bearer {reader}"})
        assert refused.status_code == 403
        message = refused.json()["detail"][0]["message"]
        assert "searches:write" in message and "['searches:read']" in message
        # The 403 comes before the body is looked at: no 422 leaks what the endpoint expects.
        assert refused.json()["detail"][0]["allowed"] == ["searches:write", "admin"]


def test_admin_implies_every_scope_and_revocation_is_immediate(secured: LiveServer) -> None:
    engine = secured.app.state.engine
    key, token = create_key(engine, "ops", ["admin"])
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=secured.url, timeout=30, headers=headers) as http:
        assert http.get("/v1/devices").status_code == 200
        register = {"name": "auth-test-device", "runtime": "torch", "hardware": "cpu"}
        assert http.post("/v1/devices", json=register).status_code == 201  # lut:write
        assert http.post("/v1/searches", json={}).status_code == 422  # searches:write: reaches validation
        revoke_key(engine, key.id)
        after = http.get("/v1/devices")
        assert after.status_code == 401 and "revoked" in after.json()["detail"][0]["message"]


def test_client_and_cli_send_the_key(secured: LiveServer, monkeypatch) -> None:
    token = _key(secured, "searches:read", name="cli")
    monkeypatch.delenv("NAS_API_KEY", raising=False)
    get_settings.cache_clear()  # the environment changed: read it again
    with NasClient(secured.url) as client, pytest.raises(ClientError) as refused:
        client.list()
    assert refused.value.status == 401
    with NasClient(secured.url, api_key=token) as client:
        assert client.list().total == 0
    monkeypatch.setenv("NAS_API_KEY", token)
    get_settings.cache_clear()
    with NasClient(secured.url) as client:
        assert client.list().total == 0
    monkeypatch.delenv("NAS_API_KEY")

    no_key = runner.invoke(cli_app, ["search", "list", "--server", secured.url], env={"NAS_API_KEY": ""})
    assert no_key.exit_code == 2 and "(401)" in no_key.output
    listed = runner.invoke(cli_app, ["--api-key", token, "search", "list", "--server", secured.url])
    assert listed.exit_code == 0, listed.output
    # The farm commands send it too (NAS_API_KEY here).
    devices = runner.invoke(cli_app, ["devices", "list", "--server", secured.url], env={"NAS_API_KEY": token})
    assert devices.exit_code == 0 and "host-cpu-torch" in devices.output
    registered = runner.invoke(
        cli_app,
        ["devices", "add", "farm-x", "--runtime", "torch", "--hardware", "cpu", "--server", secured.url],
        env={"NAS_API_KEY": token},
    )
    assert registered.exit_code == 2 and "(403)" in registered.output and "lut:write" in registered.output


# ----------------------------------------------------------------------------- disabling auth
def test_auth_can_be_disabled_only_on_loopback(tmp_path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    assert Settings(auth_disabled=True, host="127.0.0.1").auth_disabled
    with pytest.raises(ValueError, match="only allowed when the server binds to a loopback address"):
        Settings(auth_disabled=True, host="0.0.0.0")
    with pytest.raises(ValueError, match="loopback"):
        service_settings(tmp_path, host="::")

    refused = runner.invoke(
        cli_app,
        ["serve", "--no-auth", "--host", "0.0.0.0"],
        env={"NAS_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"},
    )
    assert refused.exit_code == 2 and "loopback" in refused.output

    # An app served with auth disabled still refuses a client that is not on this machine (e.g. when
    # uvicorn is started by hand on 0.0.0.0).
    app = create_app(service_settings(tmp_path, auth_disabled=True), start_scheduler=False)

    def request_from(host: str) -> Request:
        return Request(
            {"type": "http", "method": "GET", "path": "/", "headers": [], "client": (host, 5000), "app": app}
        )

    assert authenticate(request_from("127.0.0.1"), "admin").scopes == ("admin",)
    with pytest.raises(HTTPException) as denied:
        authenticate(request_from("192.168.1.20"), "searches:read")
    assert denied.value.status_code == 401


# ----------------------------------------------------------------------------- `nas keys`
def test_nas_keys_create_list_revoke(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NAS_DATABASE_URL", f"sqlite:///{tmp_path / 'keys.db'}")
    get_settings.cache_clear()
    created = runner.invoke(
        cli_app,
        [
            "keys",
            "create",
            "--name",
            "farm-1",
            "--scope",
            "lut:write",
            "--scope",
            "searches:read",
            "--expires",
            "30d",
        ],
    )
    assert created.exit_code == 0, created.output
    token = re.search(r"export NAS_API_KEY=(nas_\S+)", created.output).group(1)
    key_id = token.split("_")[1]
    assert f"Created API key {key_id} (farm-1)" in created.output

    listed = runner.invoke(cli_app, ["keys", "list", "--json"])
    assert (
        listed.exit_code == 0 and token not in listed.output and token.rsplit("_", 1)[1] not in listed.output
    )
    assert '"farm-1"' in listed.output and '"active": true' in listed.output

    bad = runner.invoke(cli_app, ["keys", "create", "--name", "x", "--scope", "root"])
    assert bad.exit_code == 2 and "unknown scope" in bad.output and "searches:read" in bad.output

    revoked = runner.invoke(cli_app, ["keys", "revoke", key_id])
    assert revoked.exit_code == 0 and f"revoked API key {key_id}" in revoked.output
    table = runner.invoke(cli_app, ["keys", "list"])
    assert "revoked" in table.output and "1 keys, 0 active" in table.output
    unknown = runner.invoke(cli_app, ["keys", "revoke", "ffffffffffff"])
    assert unknown.exit_code == 2 and "no API key with id" in unknown.output


def test_nas_keys_create_with_a_team(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NAS_DATABASE_URL", f"sqlite:///{tmp_path / 'keys.db'}")
    get_settings.cache_clear()
    args = ["keys", "create", "--name", "carol", "--team", "vision", "--scope", "searches:read-all"]
    created = runner.invoke(cli_app, args)
    assert created.exit_code == 0, created.output
    assert "with scopes searches:read-all, for team vision" in created.output
    listed = runner.invoke(cli_app, ["keys", "list", "--json"])
    assert '"team": "vision"' in listed.output
    blank = runner.invoke(cli_app, ["keys", "create", "--name", "x", "--team", " ", "--scope", "admin"])
    assert blank.exit_code == 2 and "a team needs a name" in blank.output


def test_every_scope_is_known() -> None:
    assert ALL_SCOPES == ["searches:read", "searches:read-all", "searches:write", "lut:write", "admin"]
    assert Scope("lut:write") is Scope.LUT_WRITE


# ----------------------------------------------------------------------------- the demo
def test_demo_prints_an_admin_key_once(tmp_path, ray_session) -> None:
    """`nas serve --demo` (what `make run` runs) with auth on: an admin key is created and printed on
    the first start only, and it works as printed."""
    demo = demo_spec(tmp_path / "demo.yaml", "params", trials=2)
    port = free_port()
    env = serve_env(tmp_path / "demo.db")
    env.pop("NAS_API_KEY", None)
    env.pop("NAS_AUTH_DISABLED", None)
    url = f"http://127.0.0.1:{port}"

    def run_until_up() -> tuple[subprocess.Popen, list[str]]:
        process = subprocess.Popen(
            [str(NAS), "serve", "--port", str(port), "--demo", str(demo)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        deadline = time.monotonic() + 120
        assert process.stdout is not None
        while not any("Application startup complete" in line for line in lines):
            line = process.stdout.readline()
            assert line or process.poll() is None, "".join(lines)
            lines.append(line)
            assert time.monotonic() < deadline, "".join(lines)
        return process, lines

    def stop(process: subprocess.Popen) -> str:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
        return rest

    process, lines = run_until_up()
    try:
        output = "".join(lines)
        token = re.search(r"export NAS_API_KEY=(nas_\S+)", output).group(1)
        assert "Created API key" in output and "(demo-admin) with scopes admin" in output
        assert '-H "Authorization: Bearer $NAS_API_KEY"' in output
        assert httpx.get(f"{url}/v1/searches").status_code == 401
        listed = httpx.get(f"{url}/v1/searches", headers={"Authorization": f"Bearer {token}"})
        assert listed.status_code == 200 and listed.json()["total"] == 1
    finally:
        stop(process)

    process, lines = run_until_up()
    try:
        output = "".join(lines)
        assert "export NAS_API_KEY=" not in output and "already has an admin API key" in output
        assert httpx.get(f"{url}/v1/searches", headers={"X-API-Key": token}).status_code == 200
    finally:
        stop(process)
