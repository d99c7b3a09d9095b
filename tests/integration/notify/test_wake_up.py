"""A message due now goes out at once because its handler wakes the scheduler: the handler's
commit NOTIFYs `DUE_CHANNEL`, on which an idle scheduler LISTENs (docs/notifier.md). However
idle, a scheduler also reads the table again every RECHECK_SECONDS, which would hide a lost
wake-up from any test that waited longer than that; here the re-check is made to take an hour,
so only the NOTIFY can send the message within the test's patience."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import psycopg
import sqlalchemy as sa

from services.notify.db import DUE_CHANNEL
from services.notify.scheduler import IDLE_WAIT, Scheduler
from shared.events import Event
from tests.integration.notify.conftest import appointment_event, contact, new_id

STARTS = datetime.fromisoformat("2026-11-30T10:00:00+00:00")
NEVER = 3600.0              # a re-check interval no test waits for
# What a woken scheduler takes milliseconds to do, allowed seconds; still far below the
# longest an idle scheduler sleeps before looking on its own (IDLE_WAIT, with nothing stored).
PATIENCE = 5.0


def wake_ups(notifier, action: Callable[[], object]) -> list[str]:
    """The channels notified while `action` ran, heard as the scheduler hears them: LISTEN on a
    connection of its own."""
    url = notifier.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f'LISTEN "{DUE_CHANNEL}"')
        action()
        return [n.channel for n in listener.notifies(timeout=0.5)]


def check_in(notifier, due_at: datetime) -> Event:
    appointment_id = new_id()
    return Event(type="booking.followup.scheduled", source="/booking", subject=appointment_id,
                 time=notifier.clock.now(), data={
                     "followup_id": new_id(), "appointment_id": appointment_id,
                     "patient_id": "p-1", "kind": "checkin", "due_at": due_at.isoformat(),
                     "treatment": {"code": "TPI", "name": "Trigger point injection"},
                     "contact": contact(email_ok=False)})


def test_a_booking_wakes_the_scheduler_as_it_commits_unless_it_stores_nothing(notifier):
    now = notifier.clock.now()
    booked = appointment_event("booked", new_id(), STARTS, now)
    assert wake_ups(notifier, lambda: notifier.handle(booked)) == [DUE_CHANNEL]
    assert {r.channel for r in notifier.rows(kind="confirmation", status="pending")} == {
        "sms", "email"}
    # Seen before: nothing stored, so nothing to wake for.
    assert wake_ups(notifier, lambda: notifier.handle(booked)) == []
    # Handled after its cancellation (two workers, or a redelivery): it commits, and stores
    # nothing.
    appointment_id = new_id()
    notifier.handle(appointment_event("cancelled", appointment_id, STARTS,
                                      now + timedelta(seconds=5), cancelled_by="patient"))
    stale = appointment_event("booked", appointment_id, STARTS, now)
    assert wake_ups(notifier, lambda: notifier.handle(stale)) == []
    assert notifier.rows(appointment_id=appointment_id, kind="confirmation") == []


def test_a_check_in_wakes_the_scheduler_only_when_it_is_due_now(notifier):
    """One due tomorrow is stored without a wake-up: the scheduler's next look at its due
    times finds it (a NOTIFY takes a database-wide lock at commit, not to be spent for
    nothing)."""
    now = notifier.clock.now()
    assert wake_ups(notifier, lambda: notifier.handle(check_in(notifier, now + timedelta(
        days=1)))) == []
    assert wake_ups(notifier, lambda: notifier.handle(check_in(notifier, now))) == [DUE_CHANNEL]
    assert sorted(r.due_at for r in notifier.rows(kind="checkin", status="pending")) == [
        now, now + timedelta(days=1)]


class WatchedScheduler(Scheduler):
    """A scheduler that tells the test when it has gone to sleep.

    After each round that found nothing to send it works out how long it may wait, then
    waits. Its first wait opens the LISTEN connection and returns at once (a commit may have
    come before the LISTEN); so once it has worked that out a second time it is asleep on the
    connection, and a message stored after that can only be found through a wake-up, or by a
    re-check or due time still far off."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.looks = 0
        self.asleep = threading.Event()

    def _idle_seconds(self) -> float:
        seconds = super()._idle_seconds()
        self.looks += 1
        if self.looks >= 2:
            self.asleep.set()
        return seconds


@contextmanager
def running(scheduler: Scheduler, engine: sa.Engine) -> Iterator[None]:
    stop = threading.Event()
    worker = threading.Thread(target=scheduler.run, args=(stop,), name="notify-scheduler")
    worker.start()
    try:
        yield
    finally:
        stop.set()
        with engine.begin() as connection:      # asleep for long: wake it to see the stop
            connection.execute(sa.select(sa.func.pg_notify(DUE_CHANNEL, "")))
        worker.join(PATIENCE)
    assert not worker.is_alive(), "the scheduler did not stop"


def wait_until(condition: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_an_idle_scheduler_sends_a_confirmation_as_soon_as_its_booking_is_handled(notifier):
    assert PATIENCE * 5 <= IDLE_WAIT, "an idle scheduler would look on its own in time"
    scheduler = WatchedScheduler(notifier.context, recheck_seconds=NEVER)
    with running(scheduler, notifier.engine):
        assert scheduler.asleep.wait(PATIENCE)
        notifier.handle(appointment_event("booked", new_id(), STARTS, notifier.clock.now(),
                                          contact=contact(email_ok=False)))
        assert wait_until(notifier.sms_to, PATIENCE), "the scheduler was not woken"
    [sms] = notifier.sms_to()
    assert "Reply YES to confirm" in sms["body"]
