"""Settings from the environment, the engine factory's SQLite set-up, and the schema `init_db` creates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from services.core.db import SearchRow, SearchStatus, UTCDateTime, make_engine, sqlite_path
from services.core.migrations import init_db
from services.settings import Settings


def test_defaults(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("NAS_DATABASE_URL", "NAS_PORT", "NAS_RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.database_url == "sqlite:///./var/nas.db"
    assert not (tmp_path / "var").exists()  # reading settings (e.g. in the CLI client) touches no disk
    make_engine(settings.database_url).dispose()
    assert (tmp_path / "var").is_dir()  # created so SQLite can open the file
    assert settings.ray_address is None and settings.ray_num_cpus is None
    assert (settings.host, settings.port, settings.max_concurrent_searches) == ("127.0.0.1", 8000, 1)
    assert (settings.lut_warmup, settings.lut_repeats, settings.scheduler_poll_s) == (10, 30, 1.0)
    assert settings.server_url == "http://127.0.0.1:8000"


def test_environment_with_prefix(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NAS_DATABASE_URL", f"sqlite:///{tmp_path}/deep/er/x.db")
    monkeypatch.setenv("NAS_RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("NAS_LUT_REPEATS", "3")
    monkeypatch.setenv("NAS_PORT", "9001")
    settings = Settings()
    assert settings.database_url == f"sqlite:///{tmp_path}/deep/er/x.db"
    assert settings.ray_address == "ray://head:10001"
    assert settings.lut_repeats == 3 and settings.port == 9001


def test_bad_setting_names_the_field(monkeypatch) -> None:
    monkeypatch.setenv("NAS_MAX_CONCURRENT_SEARCHES", "0")
    with pytest.raises(ValidationError, match="max_concurrent_searches"):
        Settings()


def test_sqlite_path() -> None:
    assert sqlite_path("sqlite:///./var/nas.db") == Path("var/nas.db")
    assert sqlite_path("sqlite:////abs/x.db?timeout=3") == Path("/abs/x.db")
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql+psycopg://u@h/db") is None


def test_sqlite_engine_pragmas_and_schema(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    init_db(engine)
    init_db(engine)  # idempotent
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    inspector = sa.inspect(engine)
    assert {"searches", "trials", "lut_entries"} <= set(inspector.get_table_names())
    assert inspector.get_pk_constraint("trials")["constrained_columns"] == ["search_id", "number"]
    indexes = {tuple(ix["column_names"]) for ix in inspector.get_indexes("trials")}
    indexes |= {tuple(uc["column_names"]) for uc in inspector.get_unique_constraints("trials")}
    assert ("search_id", "config_id") in indexes  # look-ups by config id (an index or a unique key)
    engine.dispose()


def test_status_check_constraint(sqlite_engine) -> None:
    with pytest.raises(sa.exc.IntegrityError), sqlite_engine.begin() as conn:
        conn.execute(
            sa.insert(SearchRow.__table__).values(
                id="x", name="", spec={}, status="paused", status_message="", budget_trials=1
            )
        )
    assert SearchStatus("succeeded").finished and not SearchStatus("running").finished


def test_utc_datetimes_round_trip(sqlite_engine) -> None:
    columns = [sa.Column("id", sa.Integer, primary_key=True), sa.Column("t", UTCDateTime)]
    table = sa.Table("dt_probe", sa.MetaData(), *columns)
    table.create(sqlite_engine)
    local = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    with sqlite_engine.begin() as conn:
        conn.execute(table.insert(), [{"id": 1, "t": local}])
        got = conn.execute(sa.select(table.c.t)).scalar_one()
    assert got == local and got.tzinfo == UTC and got.hour == 1
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), sqlite_engine.begin() as conn:
        conn.execute(table.insert(), [{"id": 2, "t": datetime(2024, 1, 1)}])
