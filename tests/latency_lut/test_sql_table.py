"""What `SqlLatencyTable` adds to the contract: its schema, persistence, timestamps and deletes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from latency_lut import LatencyEntry, SqlLatencyTable
from latency_lut.sql_table import lut_entries, metadata


def _entries(device: str, n: int, median: float = 1.0) -> list[LatencyEntry]:
    return [LatencyEntry(device, f"tiny.conv|dim={i}", median, median, median, 3) for i in range(n)]


def test_schema_on_its_own_metadata() -> None:
    table = metadata.tables["lut_entries"]
    assert list(table.columns.keys()) == [
        "device",
        "key",
        "kind",
        "median_ms",
        "p10_ms",
        "p90_ms",
        "count",
        "provenance",
        "updated_at",
    ]
    assert [c.name for c in table.primary_key.columns] == ["device", "key"]
    assert [[c.name for c in index.columns] for index in table.indexes] == [["device"]]


def test_creates_its_table_and_data_survives_a_new_engine(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lut.db'}"
    first = SqlLatencyTable(sa.create_engine(url))
    assert sa.inspect(first.engine).has_table("lut_entries")
    first.put_many(_entries("host-cpu-torch", 3))
    first.engine.dispose()

    second = SqlLatencyTable(sa.create_engine(url))
    assert SqlLatencyTable(second.engine).keys("host-cpu-torch") == {f"tiny.conv|dim={i}" for i in range(3)}
    assert second.devices() == ["host-cpu-torch"]
    second.engine.dispose()


def test_upsert_refreshes_updated_at(tmp_path: Path) -> None:
    table = SqlLatencyTable(sa.create_engine(f"sqlite:///{tmp_path / 'lut.db'}"))
    select = sa.select(lut_entries.c.updated_at, lut_entries.c.median_ms)
    table.put_many(_entries("d", 1, median=1.0))
    with table.engine.connect() as conn:
        before, _ = conn.execute(select).one()
    table.put_many(_entries("d", 1, median=2.0))
    with table.engine.connect() as conn:
        rows = conn.execute(select).all()
    assert len(rows) == 1
    after, median = rows[0]
    assert isinstance(after, datetime)
    assert after >= before
    assert median == 2.0
    table.engine.dispose()


def test_delete_some_keys_or_a_whole_device(tmp_path: Path) -> None:
    table = SqlLatencyTable(sa.create_engine(f"sqlite:///{tmp_path / 'lut.db'}"))
    table.put_many(_entries("a", 4) + _entries("b", 2))
    assert table.delete("a", ["tiny.conv|dim=1", "tiny.conv|dim=3", "absent|x=1"]) == 2
    assert table.keys("a") == {"tiny.conv|dim=0", "tiny.conv|dim=2"}
    assert table.delete("b") == 2
    assert table.devices() == ["a"]
    table.engine.dispose()


@pytest.mark.postgres
def test_postgres_tables_on_one_engine_share_rows(
    postgres_engine: sa.Engine, device_name: Callable[[str], str]
) -> None:
    device = device_name("pg")
    tables = [SqlLatencyTable(postgres_engine) for _ in range(2)]
    try:
        tables[0].put_many(_entries(device, 2))
        assert tables[1].keys(device) == {"tiny.conv|dim=0", "tiny.conv|dim=1"}
    finally:
        tables[0].delete(device)
    assert tables[1].keys(device) == set()


def test_other_databases_are_refused_by_name() -> None:
    engine = sa.create_mock_engine("mysql://", executor=lambda *args, **kwargs: None)
    with pytest.raises(ValueError, match=r"supports the databases \['postgresql', 'sqlite'\]; got 'mysql'"):
        SqlLatencyTable(engine)  # type: ignore[arg-type]
