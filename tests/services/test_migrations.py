"""The Alembic migrations (`services.core.migrations`, `nas db ...`) on real SQLite files and real, empty
PostgreSQL databases: from nothing to exactly the models, idempotent, adopting databases made by
`create_all`, transactional (a failing migration changes nothing), SQLite batch ALTERs that keep
every trial, concurrent start-ups."""

from __future__ import annotations

import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from latency_lut import LatencyEntry, SqlLatencyTable
from latency_lut.sql_table import metadata as lut_metadata
from nas import SearchSpec, Trial
from services.cli import app
from services.core import migrations
from services.core.db import Base, SearchRow, TrialRow, make_engine
from services.core.migrations import init_db
from services.core.search_queue import SearchQueue
from services.core.trial_store import SqlTrialStore

runner = CliRunner()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request, tmp_path: Path) -> str:
    """The URL of an empty database: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return request.getfixturevalue("fresh_postgres_url")


@pytest.fixture
def engine(empty_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(empty_url)
    yield engine
    engine.dispose()


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def differences(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return [migrations.describe_difference(d) for d in migrations.schema_differences(conn)]


def add_search_with_trials(engine: sa.Engine, n: int = 3) -> str:
    search_id = SearchQueue(engine).submit(SearchSpec(space="any", objectives=["params"], name="kept")).id
    store = SqlTrialStore(engine)
    for number in range(n):
        store.add(
            search_id,
            Trial(
                number=number,
                config={"d": number},
                config_id=f"c{number}",
                values={"params": float(number)},
                finished_at=datetime(2025, 1, 1, tzinfo=UTC),
            ),
        )
    return search_id


def write_revision(folder: Path, rev: str, down: str, body: str) -> Path:
    """A migration script of a test, in its own versions folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{rev}_test.py"
    upgrade = textwrap.indent(textwrap.dedent(body).strip(), "    ")
    header = [
        "import sqlalchemy as sa",
        "from alembic import op",
        "",
        f"revision = {rev!r}",
        f"down_revision = {down!r}",
        "branch_labels = None",
        "depends_on = None",
        "",
        "",
        "def upgrade():",
    ]
    source = "\n".join(header) + "\n" + upgrade + "\n\n\ndef downgrade():\n    pass\n"
    path.write_text(source)
    return path


# ----------------------------------------------------------------------------- from nothing
def test_migrations_on_an_empty_database_give_exactly_the_models(engine: sa.Engine) -> None:
    """The test that catches a model change without its migration: Alembic's own comparison of the
    migrated database with the models (tables, columns, types, nullability, indexes, constraints)."""
    assert migrations.current(engine) is None
    report = migrations.upgrade(engine)
    assert (report.before, report.after, report.adopted) == (None, migrations.head_revision(), False)
    expected = set(Base.metadata.tables) | set(lut_metadata.tables)
    assert tables(engine) == expected | {"alembic_version"}
    assert differences(engine) == []
    # A model change without a migration shows up as a difference (so the assertion above can fail).
    extra = sa.Table("trials_probe_extra", Base.metadata, sa.Column("id", sa.Integer, primary_key=True))
    try:
        assert "add_table: table trials_probe_extra" in differences(engine)
    finally:
        Base.metadata.remove(extra)


def test_upgrade_is_idempotent_and_the_service_works_on_the_result(engine: sa.Engine) -> None:
    init_db(engine)
    again = migrations.upgrade(engine)
    assert not again.changed and again.after == migrations.head_revision()
    search_id = add_search_with_trials(engine)
    assert SqlTrialStore(engine).count(search_id) == 3
    SqlLatencyTable(engine).put_many([LatencyEntry("dev", "k|a=1", 1.0, 0.9, 1.1, 3)])
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sa.table("lut_entries"))).scalar() == 1
        versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    assert versions == [migrations.head_revision()]


def test_init_db_from_two_threads_at_once(empty_url: str) -> None:
    """Two replicas starting on one empty database: both succeed, the schema is made once."""
    engines = [make_engine(empty_url) for _ in range(2)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def start(engine: sa.Engine) -> None:
        barrier.wait()
        try:
            init_db(engine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        assert errors == []
        assert migrations.current(engines[0]) == migrations.head_revision()
        assert differences(engines[0]) == []
    finally:
        for engine in engines:
            engine.dispose()


# ----------------------------------------------------------------------------- adoption
def test_database_made_by_create_all_is_adopted_with_its_rows(engine: sa.Engine) -> None:
    Base.metadata.create_all(engine)
    lut_metadata.create_all(engine)
    search_id = add_search_with_trials(engine, 2)
    with engine.begin() as conn:  # an index added to the models after the table was made
        conn.execute(sa.text("DROP INDEX ix_trials_search_front"))
    report = migrations.upgrade(engine)
    assert report.adopted and report.before is None and report.after == migrations.head_revision()
    assert differences(engine) == []
    assert SqlTrialStore(engine).count(search_id) == 2


def test_database_of_a_latency_table_alone_gets_the_other_tables(engine: sa.Engine) -> None:
    SqlLatencyTable(engine).put_many([LatencyEntry("dev", "k|a=1", 1.0, 0.9, 1.1, 3)])
    assert tables(engine) == {"lut_entries"}
    assert migrations.upgrade(engine).adopted
    assert differences(engine) == []
    assert SqlLatencyTable(engine).keys("dev") == {"k|a=1"}


def test_create_all_database_that_differs_is_refused_and_left_alone(engine: sa.Engine) -> None:
    Base.metadata.create_all(engine)
    lut_metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE searches ADD COLUMN legacy_flag INTEGER"))
    with pytest.raises(migrations.MigrationError, match=r"no migration history[\s\S]*searches\.legacy_flag"):
        init_db(engine)
    assert "alembic_version" not in tables(engine)
    # Brought in line by hand and stamped, it migrates from there.
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE searches DROP COLUMN legacy_flag"))
    assert migrations.stamp(engine, "head") == migrations.head_revision()
    assert not migrations.upgrade(engine).changed


# ----------------------------------------------------------------------------- later migrations
def test_a_failing_migration_changes_nothing(engine: sa.Engine, tmp_path: Path) -> None:
    """Transactional DDL on both databases (on SQLite thanks to the engine's own BEGIN): a migration
    that fails half-way leaves neither its table nor a new version behind."""
    init_db(engine)
    head = migrations.head_revision()
    body = """
        op.create_table("half_done", sa.Column("id", sa.Integer, primary_key=True))
        with op.batch_alter_table("searches") as batch:
            batch.add_column(sa.Column("half_column", sa.Integer, nullable=True))
        raise RuntimeError("this migration fails after some DDL")
    """
    write_revision(tmp_path / "versions", "9001", head, body)
    with pytest.raises(RuntimeError, match="fails after some DDL"):
        migrations.upgrade(engine, extra_versions=[tmp_path / "versions"])
    assert "half_done" not in tables(engine)
    assert "half_column" not in {c["name"] for c in sa.inspect(engine).get_columns("searches")}
    assert migrations.current(engine) == head


def test_batch_alter_of_searches_keeps_every_trial(engine: sa.Engine, tmp_path: Path) -> None:
    """On SQLite a batch ALTER copies `searches` and drops the old table: with foreign keys on, that
    DROP would cascade to every trial. The migration runs with them off, checks them, turns them on."""
    init_db(engine)
    search_id = add_search_with_trials(engine, 4)
    body = """
        with op.batch_alter_table("searches") as batch:
            batch.add_column(sa.Column("priority", sa.Integer, nullable=False, server_default="0"))
            batch.alter_column("name", existing_type=sa.String(200), type_=sa.String(300))
    """
    write_revision(tmp_path / "versions", "9002", migrations.head_revision(), body)
    report = migrations.upgrade(engine, extra_versions=[tmp_path / "versions"])
    assert (report.before, report.after) == (migrations.head_revision(), "9002")
    assert SqlTrialStore(engine).count(search_id) == 4
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.column("priority")).select_from(sa.table("searches"))).scalar() == 0
        if engine.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    # Foreign keys still hold after the copy: deleting the search deletes its trials.
    with engine.begin() as conn:
        conn.execute(sa.delete(SearchRow).where(SearchRow.id == search_id))
    with engine.connect() as conn:
        left = conn.execute(
            sa.select(sa.func.count()).select_from(TrialRow).where(TrialRow.search_id == search_id)
        )
        assert left.scalar() == 0


# ----------------------------------------------------------------------------- CLI
def test_nas_db_upgrade_and_current(empty_url: str) -> None:
    behind = runner.invoke(app, ["db", "current", "--url", empty_url])
    assert (
        behind.exit_code == 1
        and "no migration history" in behind.stdout
        and "nas db upgrade" in behind.stdout
    )
    upgraded = runner.invoke(app, ["db", "upgrade", "--url", empty_url])
    assert upgraded.exit_code == 0, upgraded.output
    assert f"empty -> {migrations.head_revision()}" in upgraded.stdout
    again = runner.invoke(app, ["db", "upgrade"], env={"NAS_DATABASE_URL": empty_url})
    assert again.exit_code == 0 and "already at revision" in again.stdout
    current = runner.invoke(app, ["db", "current", "--url", empty_url])
    assert current.exit_code == 0 and "up to date" in current.stdout


def test_nas_db_errors_are_one_line_and_an_exit_code(tmp_path: Path) -> None:
    refused = runner.invoke(app, ["db", "upgrade", "--url", "postgresql+psycopg://nobody@127.0.0.1:1/x"])
    assert refused.exit_code == 1 and "does not answer" in refused.output
    bad = runner.invoke(app, ["db", "upgrade", "--url", "nosuchdb://x"])
    assert bad.exit_code == 2 and "bad database URL" in bad.output
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    legacy = make_engine(url)
    Base.metadata.create_all(legacy)
    with legacy.begin() as conn:
        conn.execute(sa.text("ALTER TABLE trials ADD COLUMN legacy_note TEXT"))
    legacy.dispose()
    mismatch = runner.invoke(app, ["db", "upgrade", "--url", url])
    assert mismatch.exit_code == 2 and "trials.legacy_note" in mismatch.output


def test_migration_scripts_ship_with_the_package() -> None:
    """An installed service migrates without a checkout: the scripts are in packages setuptools finds
    and the template is package data."""
    import tomllib

    from setuptools import find_packages

    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    found = find_packages(str(root), include=config["tool"]["setuptools"]["packages"]["find"]["include"])
    assert {"services.core.migrations", "services.core.migrations.versions"} <= set(found)
    package_data = config["tool"]["setuptools"]["package-data"]["services"]
    assert "core/migrations/script.py.mako" in package_data
    assert any(p.name.startswith("0001_") for p in migrations.VERSIONS_DIR.glob("*.py"))
    assert "alembic" in " ".join(config["project"]["dependencies"])
    assert sys.modules["alembic"].__name__ == "alembic"
