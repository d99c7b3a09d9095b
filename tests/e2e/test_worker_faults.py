"""`clinic worker booking` killed outright, and two of them at once: at least once, in order."""
from __future__ import annotations

import inspect
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from shared.outbox import OutboxRelay
from tests.e2e.stack import (
    assert_commit_order_per_subject,
    first_arrivals,
    slots,
    wait_until,
)

RELAY_BATCH = inspect.signature(OutboxRelay).parameters["batch_size"].default


def _book_and_move(booking, count: int, moved: int, first_slot: int = 0) -> list[str]:
    """`count` bookings over HTTP, then the first `moved` of them rescheduled once."""
    patient = booking.api.register_patient(first_slot)["id"]
    starts = slots(first_slot + count + moved)[first_slot:]
    with ThreadPoolExecutor(8) as pool:
        appointments = list(pool.map(
            lambda n: booking.api.book(patient, booking.clinician_id, starts[n])["id"],
            range(count)))
        list(pool.map(lambda n: booking.api.reschedule(appointments[n], starts[count + n]),
                      range(moved)))
    return appointments


def _lock_holders(booking) -> list[int]:
    """The backends holding an advisory lock in booking's database: the relay's leader."""
    return [pid for (pid,) in booking.query(
        "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()")]


def _unpublished(booking) -> int:
    return booking.query("SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0]


def _ended_sessions(observer: psycopg.Connection) -> int:
    """Client sessions to this database that have come and gone: PostgreSQL's count of
    sessions (each reported by the time it ends) less those open now. In a stack at rest the
    only ones are a standby relay's, which connects every second to try for the lock and,
    refused, disconnects (shared/outbox.py, AdvisoryLockLeadership.acquire)."""
    return observer.execute(
        "SELECT (SELECT sessions FROM pg_stat_database WHERE datname = current_database())"
        " - (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        "    AND backend_type = 'client backend')").fetchone()[0]


@pytest.mark.slow
def test_a_worker_killed_mid_burst_loses_nothing_and_its_successor_keeps_the_order(
        booking, watcher):
    # More than two of the relay's batches: it has two in flight at most, and reads a third
    # only once the first is confirmed and marked, so the burst cannot leave in one go.
    _book_and_move(booking, count=900, moved=300)
    committed = booking.outbox()
    committed_ids = {row[0] for row in committed}
    assert len(committed) > 2 * RELAY_BATCH

    first = booking.clinic.worker()
    watcher.wait_for(lambda got: len(got) > 0, timeout=30, what="the burst to start",
                     interval=0.001)
    first.kill()
    # More than two batches still unmarked: the first was never marked, so the third was
    # never even read. The killed relay left events it had not published, which only the
    # successor can send; a kill after the work would leave none and prove nothing.
    left = _unpublished(booking)
    assert left > 2 * RELAY_BATCH, (
        f"{left} of {len(committed)} events unpublished at the kill: it came too late")
    booking.clinic.worker()

    received = watcher.wait_for_ids(committed_ids, timeout=60)
    received = watcher.settle(1.0)
    assert {m.event_id for m in received} == committed_ids
    firsts = {m.event_id: m.body for m in first_arrivals(received)}
    for message in received:  # a copy sent again is the very same event, so it deduplicates
        assert message.body == firsts[message.event_id]
    assert_commit_order_per_subject(received, committed)
    # Every row marked, by the successor: after its batch's confirms, which a busy disk may
    # hold back a while after the events themselves arrived (CI once saw none marked 1 s on).
    wait_until(lambda: _unpublished(booking) == 0, timeout=30,
               what="the successor to mark every row published")


@pytest.mark.slow
def test_of_two_workers_one_relays_and_the_other_takes_over_when_it_is_killed(
        booking, watcher):
    leader = booking.clinic.worker()
    wait_until(lambda: leader.log_events("outbox.leading"), timeout=20, what="a leader")
    [leader_session] = _lock_holders(booking)
    with psycopg.connect(booking.database_url, autocommit=True) as observer:
        ended = _ended_sessions(observer)
        standby = booking.clinic.worker()
        wait_until(lambda: "Connected to amqp" in standby.log(), timeout=20,
                   what="the second worker to start")
        # The standby has asked for the lock since it started, and been refused.
        wait_until(lambda: _ended_sessions(observer) > ended, timeout=20,
                   what="the standby's relay to try for the lock")

    _book_and_move(booking, count=30, moved=10)
    watcher.wait_for_ids({row[0] for row in booking.outbox()}, timeout=20)
    assert standby.log_events("outbox.leading") == []
    assert _lock_holders(booking) == [leader_session]
    ids = [m.event_id for m in watcher.settle(0.5)]
    assert len(ids) == len(set(ids)), "two relays published the same events"

    leader.kill()
    _book_and_move(booking, count=10, moved=0, first_slot=40)
    committed = booking.outbox()
    # The takeover itself: the standby says it leads, and the lock is held by another
    # session than the dead leader's (the only relay left alive is the standby).
    wait_until(lambda: standby.log_events("outbox.leading"), timeout=60,
               what="the standby to take the lead")
    [successor_session] = wait_until(
        lambda: (held := _lock_holders(booking)) and held != [leader_session] and held,
        timeout=60, what="the lock to pass to the standby's session")
    assert successor_session != leader_session
    watcher.wait_for_ids({row[0] for row in committed}, timeout=60)
    assert len(standby.log_events("outbox.leading")) == 1
    assert _lock_holders(booking) == [successor_session]
    assert_commit_order_per_subject(watcher.received, committed)
    assert standby.alive()
