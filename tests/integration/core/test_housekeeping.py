"""Published outbox rows, processed-event marks and Idempotency-Key answers are dropped once
past their keeping time, in batches, on SQLite and PostgreSQL; what is still work (an
unpublished event) or still recent is kept. Every worker process runs it."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import sqlalchemy as sa

from shared.clock import FixedClock
from shared.db import add_shared_tables, make_engine
from shared.housekeeping import (
    KEEP_IDEMPOTENCY_KEYS,
    KEEP_PROCESSED,
    KEEP_PUBLISHED,
    Housekeeping,
)
from shared.worker import background_threads

NOW = datetime.fromisoformat("2026-11-26T09:00:00+00:00")
MOMENT = timedelta(minutes=1)


def history(url: str):
    metadata = sa.MetaData()
    tables = add_shared_tables(metadata)
    engine = make_engine(url)
    metadata.create_all(engine)
    return engine, tables


def fill(engine, tables, copies: int = 1) -> None:
    """For each kind of history: `copies` rows just past their keeping time and one just
    within it; and outbox rows never published, however old."""
    outbox, processed, keys = tables.outbox, tables.processed_events, tables.idempotency_keys
    rows_outbox, rows_processed, rows_keys = [], [], []
    for n in range(copies + 1):
        old = n < copies
        published = NOW - KEEP_PUBLISHED + (-MOMENT if old else MOMENT)
        rows_outbox.append(dict(event_id=f"published-{n}", type="t", subject="s", body=b"{}",
                                created_at=published, published_at=published))
        rows_outbox.append(dict(event_id=f"pending-{n}", type="t", subject="s", body=b"{}",
                                created_at=NOW - timedelta(days=400), published_at=None))
        rows_processed.append(dict(consumer="notify", event_id=f"event-{n}",
                                   processed_at=NOW - KEEP_PROCESSED + (-MOMENT if old
                                                                         else MOMENT)))
        rows_keys.append(dict(scope="appointments", key=f"key-{n}", request_hash="h",
                              status_code=201, response="{}",
                              created_at=NOW - KEEP_IDEMPOTENCY_KEYS + (-MOMENT if old
                                                                        else MOMENT)))
    with engine.begin() as connection:
        connection.execute(outbox.insert(), rows_outbox)
        connection.execute(processed.insert(), rows_processed)
        connection.execute(keys.insert(), rows_keys)


def left(engine, tables) -> dict:
    with engine.connect() as connection:
        def column(query):
            return sorted(connection.execute(query).scalars())
        return {
            "outbox": column(sa.select(tables.outbox.c.event_id)),
            "processed_events": column(sa.select(tables.processed_events.c.event_id)),
            "idempotency_keys": column(sa.select(tables.idempotency_keys.c.key)),
        }


def test_history_past_its_keeping_time_is_dropped_and_the_rest_kept(database_url):
    engine, tables = history(database_url)
    try:
        fill(engine, tables, copies=7)
        dropped = Housekeeping(engine, tables, FixedClock(NOW), "booking", batch=3).prune()
        assert dropped == {"outbox": 7, "processed_events": 7, "idempotency_keys": 7}
        assert left(engine, tables) == {
            "outbox": sorted(["published-7"] + [f"pending-{n}" for n in range(8)]),
            "processed_events": ["event-7"],
            "idempotency_keys": ["key-7"],
        }
        assert Housekeeping(engine, tables, FixedClock(NOW), "booking").prune() == {
            "outbox": 0, "processed_events": 0, "idempotency_keys": 0}
    finally:
        engine.dispose()


def test_a_worker_process_prunes_when_it_starts(postgres_url, amqp_url):
    engine, tables = history(postgres_url)
    stop = threading.Event()
    threads = background_threads("booking", amqp_url, engine, tables, FixedClock(NOW), {},
                                 stop)
    try:
        fill(engine, tables)
        for thread in threads:
            thread.start()
        # The tables are pruned one after the other, each in its own transactions: wait for
        # the last one too, not only the first seen done.
        deadline = time.monotonic() + 10
        while (left(engine, tables)["processed_events"],
               left(engine, tables)["idempotency_keys"]) != (["event-1"], ["key-1"]):
            assert time.monotonic() < deadline, "the worker did not prune at start"
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        engine.dispose()
