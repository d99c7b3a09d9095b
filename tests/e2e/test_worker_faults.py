"""`clinic worker booking` killed outright, and two of them at once: at least once, in order."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.stack import (
    assert_commit_order_per_subject,
    first_arrivals,
    slots,
    wait_until,
)


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


def _advisory_locks(booking) -> int:
    return booking.query(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()")[0][0]


@pytest.mark.slow
def test_a_worker_killed_mid_burst_loses_nothing_and_its_successor_keeps_the_order(
        booking, watcher):
    _book_and_move(booking, count=120, moved=40)
    committed = booking.outbox()
    committed_ids = {row[0] for row in committed}

    first = booking.clinic.worker()
    watcher.wait_for(lambda got: len(got) > 0, timeout=30, what="the burst to start",
                     interval=0.001)
    first.kill()
    seen_before_kill = len(watcher.received)
    booking.clinic.worker()

    received = watcher.wait_for_ids(committed_ids, timeout=30)
    received = watcher.settle(1.0)
    assert {m.event_id for m in received} == committed_ids
    firsts = {m.event_id: m.body for m in first_arrivals(received)}
    for message in received:  # a copy sent again is the very same event, so it deduplicates
        assert message.body == firsts[message.event_id]
    assert_commit_order_per_subject(received, committed)
    assert seen_before_kill < len(committed), "the burst ended before the kill: not a fault"
    # Every row marked, by the successor: after its batch's confirms, which a busy disk may
    # hold back a while after the events themselves arrived (CI once saw none marked 1 s on).
    wait_until(lambda: booking.query(
        "SELECT count(*) FROM outbox WHERE published_at IS NULL") == [(0,)], timeout=30,
        what="the successor to mark every row published")


@pytest.mark.slow
def test_of_two_workers_one_relays_and_the_other_takes_over_when_it_is_killed(
        booking, watcher):
    leader = booking.clinic.worker()
    wait_until(lambda: leader.log_events("outbox.leading"), timeout=20, what="a leader")
    standby = booking.clinic.worker()
    wait_until(lambda: "Connected to amqp" in standby.log(), timeout=20,
               what="the second worker to start")
    time.sleep(1.5)  # more than the standby's one-second retry: it has tried and failed

    _book_and_move(booking, count=30, moved=10)
    watcher.wait_for_ids({row[0] for row in booking.outbox()}, timeout=20)
    assert standby.log_events("outbox.leading") == []
    assert _advisory_locks(booking) == 1
    ids = [m.event_id for m in watcher.settle(0.5)]
    assert len(ids) == len(set(ids)), "two relays published the same events"

    leader.kill()
    killed_at = time.monotonic()
    _book_and_move(booking, count=10, moved=0, first_slot=40)
    committed = booking.outbox()
    watcher.wait_for_ids({row[0] for row in committed}, timeout=10)
    took_over_in = time.monotonic() - killed_at
    assert took_over_in < 5.0
    assert len(standby.log_events("outbox.leading")) == 1
    assert _advisory_locks(booking) == 1
    assert_commit_order_per_subject(watcher.received, committed)
    assert standby.alive()
