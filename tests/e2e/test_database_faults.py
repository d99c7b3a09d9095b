"""PostgreSQL drops every connection of booking's database (a restart or failover, as the
processes see it): the web app, the relay's leadership and the consumer all recover."""
from __future__ import annotations

import json

import pytest

from tests.e2e.stack import reply_event, slots, wait_until

# Waits (up to 5 s each) until every backend has exited, as after a restart: a backend only
# signalled may not have said goodbye yet when the next request arrives, which would then
# race a connection that is dying, not one that is dead (CI once saw that 503).
TERMINATE = ("SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
             "WHERE datname = current_database() AND pid <> pg_backend_pid()")


def _leaders(booking) -> int:
    return booking.query(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()")[0][0]


@pytest.mark.slow
def test_every_process_recovers_when_the_database_drops_its_connections(booking, watcher):
    worker = booking.clinic.worker()
    watcher.wait_for_ids({row[0] for row in booking.outbox()}, timeout=30)  # the demo's
    patient = booking.api.register_patient()["id"]
    starts = slots(6)
    before = booking.api.book(patient, booking.clinician_id, starts[0])["id"]
    watcher.wait_for_ids({row[0] for row in booking.outbox()}, timeout=10)
    assert _leaders(booking) == 1

    assert booking.query(TERMINATE)[0][0] >= 2  # at least the relay's and the consumer's

    after = [booking.api.book(patient, booking.clinician_id, start)["id"] for start in starts[1:4]]
    booking.api.reschedule(before, starts[4])
    committed = booking.outbox()
    watcher.wait_for_ids({row[0] for row in committed}, timeout=15)
    assert {m.json()["subject"] for m in watcher.received} >= {before, *after}
    wait_until(lambda: _leaders(booking) == 1, timeout=10, what="the relay to lead again")

    reply = reply_event("+447400999002", "other")
    watcher.publish("notify.reply.received", json.dumps(reply).encode())
    wait_until(lambda: booking.query("SELECT 1 FROM processed_events WHERE event_id = %s",
                                     reply["id"]), timeout=20, what="the reply to be processed")
    assert worker.alive() and booking.server.process.alive()
    ids = [m.event_id for m in watcher.settle(0.5)]
    assert len(ids) == len(set(ids))


@pytest.mark.slow
def test_worker_and_server_stop_cleanly_on_sigterm(booking):
    worker = booking.clinic.worker()
    wait_until(lambda: worker.log_events("outbox.leading"), timeout=20, what="the relay")
    for process in (worker, booking.server.process):
        process.stop()
        assert process.popen.returncode == 0, f"{process.name} exited {process.popen.returncode}"
