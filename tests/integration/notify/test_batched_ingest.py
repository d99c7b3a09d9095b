"""A burst of bookings handled a batch at a time (`on_booked_many`) leaves exactly what
handling each event in turn (`on_booked`) leaves: the same messages, contacts, appointment
states and processed marks. Both run on their own database, on SQLite and on PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from services.notify.app import bootstrap
from services.notify.db import appointment_states, contacts, messages, shared_tables
from services.notify.handlers import HANDLERS, on_booked_many
from shared.clock import FixedClock
from shared.consumer import OneByOne
from shared.db import make_engine
from shared.migrations import upgrade

from .conftest import EMAIL, appointment_event, contact, new_id, notifier_config

NOW = datetime.fromisoformat("2026-11-26T09:00:00+00:00")


@pytest.fixture(params=["sqlite", "postgresql"])
def make_context(request, tmp_path, make_postgres_url):
    """A factory of notifier contexts, each on a new database of the parametrised kind."""
    engines = []

    def make():
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / f'notify-{len(engines)}.sqlite3'}"
        else:
            url = make_postgres_url()
        engine = make_engine(url)
        engines.append(engine)
        upgrade(engine, "notify")
        return bootstrap(notifier_config(database_urls={"notify": url}, sms_backend="console",
                                         email_backend="console"),
                         engine=engine, clock=FixedClock(NOW))

    yield make
    for engine in engines:
        engine.dispose()


def _state(context) -> dict:
    """Everything the handlers write, without the ids and times a run makes up."""
    with context.engine.connect() as connection:
        def rows(query):
            return sorted(tuple(row) for row in connection.execute(query).all())
        return {
            "messages": rows(sa.select(
                messages.c.dedupe_key, messages.c.kind, messages.c.channel,
                messages.c.to_address, messages.c.appointment_id, messages.c.patient_id,
                messages.c.context, messages.c.due_at, messages.c.status)),
            "contacts": rows(sa.select(contacts.c.patient_id, contacts.c.phone,
                                       contacts.c.email, contacts.c.sms_ok, contacts.c.email_ok)),
            "states": rows(sa.select(appointment_states)),
            "processed": rows(sa.select(shared_tables.processed_events.c.consumer,
                                        shared_tables.processed_events.c.event_id)),
        }


def _burst() -> tuple[list, list]:
    """Events handled before the burst, and the burst: new bookings, one patient twice (her
    later contact wins), one at a time of day inside quiet hours, one without SMS consent, a
    redelivery of an event handled before, and the late `booked` of an appointment already
    cancelled, which must plan nothing."""
    starts = NOW + timedelta(days=3)
    cancelled_id, redelivered = new_id(), appointment_event("booked", new_id(), starts, NOW)
    before = [redelivered,
              appointment_event("cancelled", cancelled_id, starts, NOW + timedelta(minutes=5))]
    burst = [appointment_event("booked", new_id(), starts + timedelta(minutes=30 * n),
                               NOW + timedelta(seconds=n), patient_id=f"p-{n}",
                               contact=contact(phone=f"+4474001{n:05d}",
                                               email=f"p{n}@example.org"))
             for n in range(20)]
    burst += [
        appointment_event("booked", new_id(), starts + timedelta(days=1), NOW,
                          patient_id="p-3", contact=contact(phone="+447400200003",
                                                            email_ok=False)),
        appointment_event("booked", new_id(), NOW + timedelta(hours=14), NOW,
                          patient_id="p-night"),  # its 2 h reminder falls at 21:00
        appointment_event("booked", new_id(), starts, NOW, patient_id="p-no-sms",
                          contact=contact(sms=False)),
        # Booked again with no contact given: the one stored before stays, as one at a time.
        appointment_event("booked", new_id(), starts + timedelta(days=2), NOW,
                          patient_id="p-5", contact={}),
        redelivered,
        appointment_event("booked", cancelled_id, starts, NOW),
    ]
    return before, burst


def test_a_burst_handled_as_one_batch_leaves_what_one_at_a_time_leaves(make_context):
    one_at_a_time, batched = make_context(), make_context()
    before, burst = _burst()
    for context in (one_at_a_time, batched):
        for event in before:
            HANDLERS[event.type](event, context=context)

    for event in burst:
        HANDLERS[event.type](event, context=one_at_a_time)
    on_booked_many(burst, context=batched)

    expected = _state(one_at_a_time)
    assert _state(batched) == expected
    late = burst[-1].data["appointment_id"]  # cancelled before its booking was handled
    assert {row[1] for row in expected["messages"] if row[4] == late} == {"cancelled"}
    assert len(expected["messages"]) > 4 * 20
    assert ("p-3", "+447400200003", EMAIL, True, False) in expected["contacts"]
    assert ("p-5", "+447400100005", "p5@example.org", True, True) in expected["contacts"]


def test_handling_the_same_burst_again_changes_nothing(make_context):
    context = make_context()
    _, burst = _burst()
    on_booked_many(burst, context=context)
    first = _state(context)
    on_booked_many(burst, context=context)
    assert _state(context) == first


@pytest.mark.parametrize("second_id", ["same", 12345])
def test_events_it_cannot_treat_as_one_set_are_left_to_be_handled_in_turn(make_context,
                                                                          second_id):
    """Two bookings of one appointment (their order must decide), or an id that is not text
    (the database would hand it back as text and the event would look stale)."""
    context = make_context()
    appointment = new_id()
    events = [appointment_event("booked", appointment, NOW + timedelta(days=3), NOW),
              appointment_event("booked", appointment, NOW + timedelta(days=4),
                                NOW + timedelta(seconds=1))]
    if second_id != "same":
        events[1].data["appointment_id"] = second_id
    with pytest.raises(OneByOne):
        on_booked_many(events, context=context)
    assert _state(context)["processed"] == []


@pytest.mark.parametrize("make_context", ["postgresql"], indirect=True)
@pytest.mark.parametrize("bad", ["\x00", "\ud800"])
def test_text_postgresql_would_refuse_is_refused_without_quoting_anyone_s_details(
        make_context, bad):
    """PostgreSQL would refuse a NUL or a lone surrogate with an error quoting the rows
    around it; our error, which reaches logs and dead-letter reasons, names no one."""
    context = make_context()
    events = [appointment_event("booked", new_id(), NOW + timedelta(days=3), NOW,
                                patient_id=f"p-{n}", contact=contact(
                                    email=f"p{n}@example.org" + (bad if n else "")))
              for n in range(2)]
    with pytest.raises(ValueError) as refused:
        on_booked_many(events, context=context)
    assert "example.org" not in str(refused.value) and "7400" not in str(refused.value)
    assert _state(context)["processed"] == []


@pytest.mark.parametrize("make_context", ["postgresql"], indirect=True)
def test_a_nul_inside_a_message_s_context_is_stored_as_any_other_text(make_context):
    """The context is JSON text already, where a NUL is the escape \\u0000: PostgreSQL takes
    it, so the booking is planned as usual."""
    context = make_context()
    events = [appointment_event("booked", new_id(), NOW + timedelta(days=3 + n), NOW,
                                patient_id=f"p-{n}") for n in range(2)]
    events[1].data["clinician_name"] = "Dr A\x00 Shah"
    on_booked_many(events, context=context)
    assert len(_state(context)["processed"]) == 2
    assert {row[4] for row in _state(context)["messages"]} == {
        e.data["appointment_id"] for e in events}
