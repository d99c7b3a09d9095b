"""`shared.db.insert_many` on PostgreSQL: rows travel as one JSON parameter (written by
orjson), and arrive as the values given: instants at their instant whatever their offset, ids
as uuids, text with backslashes as written. What PostgreSQL would refuse with an error
quoting the rows around it is refused first, naming no one."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from shared.db import UTCDateTime, insert_many, make_engine

metadata = sa.MetaData()
visits = sa.Table(
    "visits", metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("note", sa.Text, nullable=True),
    sa.Column("at", UTCDateTime, nullable=True),
    sa.Column("count", sa.Integer, nullable=True),
)
AT = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)      # the hour London's clocks go back


@pytest.fixture
def engine(postgres_url):
    engine = make_engine(postgres_url)
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def _insert(engine, rows):
    with engine.begin() as connection:
        insert_many(connection, visits, rows)


def _stored(engine) -> dict:
    with engine.connect() as connection:
        return {row.id: row for row in connection.execute(sa.select(visits))}


def test_rows_arrive_as_given_instants_at_their_instant_whatever_their_offset(engine):
    rows = [
        {"id": uuid.uuid4(), "note": "plain", "at": AT, "count": 1},
        {"id": uuid.uuid4(), "note": "an hour ahead",
         "at": AT.astimezone(timezone(timedelta(hours=1))), "count": 2},
        {"id": uuid.uuid4(), "note": 'a \\u0000 typed, "quoted", Zoë', "at": None,
         "count": None},
    ]
    _insert(engine, rows)
    stored = _stored(engine)
    assert {key: (row.note, row.at, row.count) for key, row in stored.items()} == {
        row["id"]: (row["note"], row["at"], row["count"]) for row in rows}
    assert stored[rows[1]["id"]].at == AT


@pytest.mark.parametrize("bad", ["Marg\x00aret", "Marg\ud800aret"])
def test_text_postgresql_would_refuse_is_refused_without_quoting_it(engine, bad):
    rows = [{"id": uuid.uuid4(), "note": "Jane Doe 07400 123456", "at": AT, "count": 1},
            {"id": uuid.uuid4(), "note": bad, "at": AT, "count": 2}]
    with pytest.raises(ValueError) as refused:
        _insert(engine, rows)
    assert "Jane" not in str(refused.value) and "Marg" not in str(refused.value)
    assert _stored(engine) == {}


def test_a_naive_datetime_is_refused_rather_than_read_as_the_servers_local_time(engine):
    rows = [{"id": uuid.uuid4(), "note": None, "at": AT.replace(tzinfo=None), "count": 1}]
    with pytest.raises(ValueError, match="naive"):
        _insert(engine, rows)
    assert _stored(engine) == {}


def test_rows_must_all_have_the_same_columns(engine):
    with pytest.raises(ValueError, match="same columns"):
        _insert(engine, [{"id": uuid.uuid4(), "note": "a"}, {"note": "b", "id": uuid.uuid4()}])
