"""The issue's fault test: RabbitMQ goes away while reception keeps booking."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.stack import (
    assert_commit_order_per_subject,
    broker_stopped,
    first_arrivals,
    reply_event,
    slots,
    wait_until,
)

BOOKINGS = 100
RESCHEDULED = 20  # each moved twice, so every one of them has three events to keep in order


@pytest.mark.slow
def test_bookings_during_a_broker_outage_are_all_announced_once_in_commit_order(
        booking, watcher):
    worker = booking.clinic.worker()
    watcher.wait_for_ids({row[0] for row in booking.outbox()}, timeout=30)  # the demo's
    patients = [booking.api.register_patient(n)["id"] for n in range(5)]
    starts = slots(BOOKINGS + 2 * RESCHEDULED)

    def book(n: int) -> str:
        return booking.api.book(patients[n % 5], booking.clinician_id, starts[n])["id"]

    def move_twice(n: int) -> None:
        booking.api.reschedule(appointments[n], starts[BOOKINGS + 2 * n])
        booking.api.reschedule(appointments[n], starts[BOOKINGS + 2 * n + 1])

    watcher.close()
    with broker_stopped(), ThreadPoolExecutor(8) as pool:
        appointments = list(pool.map(book, range(BOOKINGS)))  # each asserts its 201
        list(pool.map(move_twice, range(RESCHEDULED)))
        late = booking.clinic.worker()  # one that starts while the broker is away
    watcher.connect()

    committed = booking.outbox()
    assert len(committed) == 2 + BOOKINGS + 2 * RESCHEDULED
    received = watcher.wait_for_ids({row[0] for row in committed}, timeout=60)
    received = watcher.settle(1.0)
    ids = [message.event_id for message in received]
    assert len(ids) == len(set(ids)), "an event arrived twice"
    assert set(ids) == {row[0] for row in committed}
    booked = [m for m in received if m.routing_key == "booking.appointment.booked"]
    assert {m.json()["subject"] for m in booked} >= set(appointments)
    assert_commit_order_per_subject(first_arrivals(received), committed)
    assert worker.alive() and late.alive()
    wait_until(lambda: watcher.consumer_count("clinic.booking") == 2, timeout=45,
               what="both workers consuming again")

    # The consumer came back too: a patient's reply is handled after the restart.
    reply = reply_event("+447400999001", "other")
    watcher.publish("notify.reply.received", json.dumps(reply).encode())
    wait_until(lambda: booking.query("SELECT 1 FROM processed_events WHERE event_id = %s",
                                     reply["id"]), timeout=45, what="the reply to be processed")
    # Marked published once the broker confirms, in the relay's own later transaction (after
    # a confirm lost to the outage, its retry waits up to 5 s): wait for it.
    wait_until(lambda: booking.query("SELECT count(*) FROM outbox WHERE published_at IS NULL")
               == [(0,)], timeout=30, what="every event marked published")
