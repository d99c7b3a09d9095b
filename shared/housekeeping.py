"""History that only grows, dropped once it can no longer matter: published outbox rows,
processed-event marks and `Idempotency-Key` answers. Every worker process runs this hourly;
workers running it at once skip each other's rows.

How long each is kept, and why, is in docs/architecture.md ("Retention").
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa

from shared.clock import Clock
from shared.db import SharedTables, describe_error
from shared.logging import get_logger

log = get_logger("housekeeping")

# Published events: the relay is done with them; a week is left for tracing.
KEEP_PUBLISHED = timedelta(days=7)
# A processed mark must outlive any redelivery of its event, including one replayed by hand
# from the dead-letter queue, or the event would be handled twice.
KEEP_PROCESSED = timedelta(days=90)
# A client retries a create within minutes; a week covers a desk PC left asleep over a holiday.
KEEP_IDEMPOTENCY_KEYS = timedelta(days=7)
EVERY_SECONDS = 3600.0
BATCH = 5000


@dataclass
class Housekeeping:
    engine: sa.Engine
    tables: SharedTables
    clock: Clock
    service: str
    batch: int = BATCH

    def prune(self, stop: threading.Event | None = None) -> dict[str, int]:
        """Rows dropped per table. In batches, so no delete holds many locks for long; rows
        another worker is deleting right now are skipped, not waited for (or deadlocked on).
        `stop` ends it between batches."""
        self._stop = stop or threading.Event()
        now = self.clock.now()
        outbox, processed = self.tables.outbox, self.tables.processed_events
        keys = self.tables.idempotency_keys
        return {
            "outbox": self._drop(outbox, [outbox.c.id], sa.and_(
                outbox.c.published_at.is_not(None),
                outbox.c.published_at < now - KEEP_PUBLISHED)),
            "processed_events": self._drop(
                processed, [processed.c.consumer, processed.c.event_id],
                processed.c.processed_at < now - KEEP_PROCESSED),
            "idempotency_keys": self._drop(
                keys, [keys.c.scope, keys.c.key], keys.c.created_at < now - KEEP_IDEMPOTENCY_KEYS),
        }

    def _drop(self, table: sa.Table, key: list[sa.Column], old: sa.ColumnElement[bool]) -> int:
        batch = sa.select(*key).where(old).limit(self.batch).with_for_update(skip_locked=True)
        statement = table.delete().where(sa.tuple_(*key).in_(batch) if len(key) > 1
                                         else key[0].in_(batch))
        dropped = 0
        while True:
            with self.engine.begin() as connection:
                count = connection.execute(statement).rowcount
            dropped += count
            if count < self.batch or self._stop.is_set():
                return dropped

    def run(self, stop: threading.Event) -> None:
        """Prune at start (a worker restarted often still prunes) and then hourly."""
        while not stop.is_set():
            try:
                dropped = self.prune(stop)
                if any(dropped.values()):
                    log.info("history.pruned", service=self.service, **dropped)
                wait = EVERY_SECONDS
            except Exception as error:          # database away: try again later
                log.warning("history.prune_failed", service=self.service,
                            error=type(error).__name__, detail=describe_error(error)[:300])
                wait = 60.0
            stop.wait(wait)
