"""No double booking, under real concurrency: many receptionists (threads) send their requests
over HTTP to a threaded server at the same instant, and the database lets exactly one win."""
from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
import requests
import sqlalchemy as sa

from services.booking import service
from services.booking.db import (
    _BOOK_AT_ONCE,
    _INSERT_IF_FREE,
    AppointmentRepository,
    BookingUnitOfWork,
    appointments,
    taken_statement,
)
from services.booking.model import Appointment
from shared.db import outbox_channel
from shared.errors import Conflict

from .conftest import PATIENT, generic_plan


def _register_patients(site, count: int) -> list[str]:
    ids = []
    for n in range(count):
        response = site.post("/patients", {**PATIENT, "given_name": f"Patient {n}"})
        assert response.status_code == 201
        ids.append(response.get_json()["id"])
    return ids


def _all_at_once(base_url: str, headers: dict, bodies: list[dict]) -> list[requests.Response]:
    """POSTs every body to /appointments from its own thread, released together."""
    start = threading.Barrier(len(bodies))

    def send(body):
        start.wait(timeout=30)
        return requests.post(f"{base_url}/api/v1/appointments", json=body, headers=headers,
                             timeout=60)

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(send, bodies))


def _active_rows(site, clinician) -> list:
    with site.engine.connect() as connection:
        return connection.execute(sa.select(appointments).where(
            appointments.c.clinician_id == clinician,
            appointments.c.status == "booked")).all()


def test_fifty_parallel_requests_for_one_slot_book_it_once(booking, live_server):
    patients = _register_patients(booking, 50)
    base_url = live_server(booking.app)
    bodies = [{"patient_id": p, "clinician_id": str(booking.shah), "treatment_code": "TPI",
               "starts_at": "2026-10-21T10:00:00+01:00"} for p in patients]
    before = booking.counts()

    responses = _all_at_once(base_url, booking.admin, bodies)

    assert Counter(r.status_code for r in responses) == {201: 1, 409: 49}
    for refused in (r for r in responses if r.status_code == 409):
        error = refused.json()["error"]
        assert error["code"] == "conflict" and "starts_at" in error["fields"]
    winner = next(r.json() for r in responses if r.status_code == 201)
    rows = _active_rows(booking, booking.shah)
    assert [str(row.id) for row in rows] == [winner["id"]]
    after = booking.counts()
    assert after["appointments"] == before["appointments"] + 1
    assert after["outbox"] == before["outbox"] + 1
    [event] = booking.events()[before["outbox"]:]
    assert event["type"] == "booking.appointment.booked"
    assert event["subject"] == winner["id"]


def test_parallel_requests_for_overlapping_starts_book_only_one(booking, live_server):
    """Thirty starts a minute apart, 10:00 to 10:29, each a 30-minute treatment: any two
    overlap although no two are equal, so exactly one may stand."""
    patients = _register_patients(booking, 30)
    base_url = live_server(booking.app)
    bodies = [{"patient_id": p, "clinician_id": str(booking.shah), "treatment_code": "TPI",
               "starts_at": f"2026-10-21T10:{minute:02d}:00+01:00"}
              for minute, p in enumerate(patients)]

    responses = _all_at_once(base_url, booking.admin, bodies)

    assert Counter(r.status_code for r in responses) == {201: 1, 409: 29}
    assert len(_active_rows(booking, booking.shah)) == 1
    assert booking.counts()["outbox"] == 1


def test_parallel_requests_for_one_time_with_different_clinicians_all_succeed(
        booking, live_server):
    patients = _register_patients(booking, 2)
    base_url = live_server(booking.app)
    bodies = [{"patient_id": p, "clinician_id": str(clinician), "treatment_code": "TPI",
               "starts_at": "2026-10-21T10:00:00+01:00"}
              for p, clinician in zip(patients, (booking.shah, booking.whitfield), strict=True)]

    responses = _all_at_once(base_url, booking.admin, bodies)

    assert [r.status_code for r in responses] == [201, 201]
    assert len(_active_rows(booking, booking.shah)) == 1
    assert len(_active_rows(booking, booking.whitfield)) == 1


def test_a_slot_overlapping_a_booked_one_is_refused_and_touching_ones_are_not(booking):
    assert booking.book("2026-10-21T10:00:00+01:00").status_code == 201  # 10:00-10:30
    before = booking.counts()
    for starts_at, treatment in [("2026-10-21T10:15:00+01:00", "TPI"),          # inside
                                 ("2026-10-21T09:45:00+01:00", "POD-ASSESS"),   # 09:45-10:30
                                 ("2026-10-21T09:31:00+01:00", "TPI"),          # ends 10:01
                                 ("2026-10-21T10:29:00+01:00", "TPI"),          # starts 10:29
                                 ("2026-10-21T09:00:00Z", "TPI")]:              # same instant
        response = booking.book(starts_at, treatment=treatment)
        assert response.status_code == 409, (starts_at, response.get_json())
    assert booking.counts() == before
    # Back to back on either side is not an overlap.
    assert booking.book("2026-10-21T09:30:00+01:00").status_code == 201
    assert booking.book("2026-10-21T10:30:00+01:00").status_code == 201
    assert len(_active_rows(booking, booking.shah)) == 3


def test_the_same_time_with_another_clinician_is_free(booking):
    assert booking.book("2026-10-21T10:00:00+01:00", booking.shah).status_code == 201
    assert booking.book("2026-10-21T10:00:00+01:00", booking.whitfield).status_code == 201


def test_a_cancelled_appointment_frees_its_slot(booking):
    first = booking.book("2026-10-21T10:00:00+01:00").get_json()
    assert booking.book("2026-10-21T10:00:00+01:00").status_code == 409
    assert "2026-10-21T10:00:00+01:00" not in _offered(booking)
    cancelled = booking.post(f"/appointments/{first['id']}/cancel", {"reason": "Poorly"})
    assert cancelled.status_code == 200
    assert "2026-10-21T10:00:00+01:00" in _offered(booking)

    again = booking.book("2026-10-21T10:00:00+01:00")

    assert again.status_code == 201
    assert again.get_json()["id"] != first["id"]
    assert [e["type"] for e in booking.events()] == [
        "booking.appointment.booked", "booking.appointment.cancelled",
        "booking.appointment.booked"]


def _offered(site) -> list[str]:
    response = site.get("/availability", query_string={
        "clinician_id": str(site.shah), "treatment_code": "TPI", "date": "2026-10-21"})
    assert response.status_code == 200
    return [slot["starts_at"] for slot in response.get_json()["slots"]]


def test_rescheduling_onto_a_taken_slot_is_refused(booking):
    booking.book("2026-10-21T10:00:00+01:00")
    other = booking.book("2026-10-21T11:00:00+01:00").get_json()
    before = booking.counts()
    response = booking.post(f"/appointments/{other['id']}/reschedule",
                            {"starts_at": "2026-10-21T10:15:00+01:00"})
    assert response.status_code == 409
    assert booking.counts() == before
    assert booking.get(f"/appointments/{other['id']}").get_json()["starts_at"] == \
        "2026-10-21T11:00:00+01:00"


def _all_at_once_to(base_url: str, headers: dict, requests_: list[tuple[str, dict]]):
    """POSTs each (path, body) from its own thread, released together."""
    start = threading.Barrier(len(requests_))

    def send(item):
        path, body = item
        start.wait(timeout=30)
        return requests.post(f"{base_url}/api/v1{path}", json=body, headers=headers,
                             timeout=60)

    with ThreadPoolExecutor(max_workers=len(requests_)) as pool:
        return list(pool.map(send, requests_))


def test_ten_parallel_reschedules_into_one_slot_move_only_one(booking, live_server):
    patients = _register_patients(booking, 10)
    moved = []
    for day, patient in enumerate(patients, start=22):  # 22 to 31 October, at 10:00
        response = booking.post("/appointments", {
            "patient_id": patient, "clinician_id": str(booking.shah),
            "treatment_code": "TPI", "starts_at": f"2026-10-{day}T10:00:00Z"})
        assert response.status_code == 201, response.get_json()
        moved.append(response.get_json()["id"])
    base_url = live_server(booking.app)
    before = booking.counts()

    responses = _all_at_once_to(base_url, booking.admin, [
        (f"/appointments/{a}/reschedule", {"starts_at": "2026-10-21T10:00:00+01:00"})
        for a in moved])

    assert Counter(r.status_code for r in responses) == {200: 1, 409: 9}
    at_ten = [row for row in _active_rows(booking, booking.shah)
              if row.starts_at.isoformat() == "2026-10-21T09:00:00+00:00"]
    assert len(at_ten) == 1
    assert booking.counts()["outbox"] == before["outbox"] + 1
    assert booking.events()[-1]["type"] == "booking.appointment.rescheduled"


def test_ten_parallel_cancels_of_one_appointment_announce_it_once(booking, live_server):
    appointment = booking.book("2026-10-21T10:00:00+01:00").get_json()
    base_url = live_server(booking.app)

    responses = _all_at_once_to(base_url, booking.admin, [
        (f"/appointments/{appointment['id']}/cancel", {"reason": f"Call {n}"})
        for n in range(10)])

    assert Counter(r.status_code for r in responses) == {200: 1, 409: 9}
    winner = next(r.json() for r in responses if r.status_code == 200)
    events = booking.events()
    assert [e["type"] for e in events] == ["booking.appointment.booked",
                                           "booking.appointment.cancelled"]
    assert events[-1]["data"]["reason"] == winner["cancel_reason"]


def _waiting_on_advisory_lock(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND wait_event = 'advisory'")).scalar_one()


@pytest.mark.parametrize("write", ["book", "reschedule"])
def test_writes_into_one_diary_take_turns(pg_booking, write):
    """Two writes of overlapping times can each wait on the other in PostgreSQL's exclusion
    check, and one is then killed as a deadlock: a 503 where reception should hear "taken"
    (CI once saw 9 of 10 parallel reschedules end so). So a write holds the clinician's diary
    until it commits: here one that does not even overlap waits for the holder, while
    another clinician's diary stays open."""
    site, tz = pg_booking, ZoneInfo("Europe/London")
    patient = uuid.UUID(site.patient_id)
    nine = datetime(2026, 11, 2, 9, tzinfo=UTC)  # 09:00 GMT, Monday
    existing = service.book_appointment(BookingUnitOfWork(site.engine, site.clock), patient,
                                        site.shah, "TPI", nine + timedelta(days=1), tz)["id"]

    def write_into(clinician):
        uow = BookingUnitOfWork(site.engine, site.clock)
        if write == "book":
            return service.book_appointment(uow, patient, clinician, "TPI", nine, tz)["id"]
        return service.reschedule_appointment(uow, existing, nine, tz, clinician).id

    holder = BookingUnitOfWork(site.engine, site.clock)
    # The pool outside: if an assertion fails, the holder lets go before the pool waits.
    with ThreadPoolExecutor(max_workers=1) as pool, holder:
        holder.appointments.hold_diary(site.shah)
        assert write_into(site.whitfield)  # another diary: not held up
        waiting = pool.submit(write_into, site.shah)
        deadline = time.monotonic() + 15  # leaves as soon as the writer is seen waiting
        while _waiting_on_advisory_lock(site.engine) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _waiting_on_advisory_lock(site.engine) == 1 and not waiting.done()
        holder.rollback()
        assert waiting.result(timeout=30)


def test_racing_overlapping_writes_never_deadlock_when_the_diary_is_held(pg_booking):
    """The race itself, at the statement level where it is tight enough to happen: ten
    transactions move ten rows into one slot at once, a hundred times. Unheld, about one
    round in ten ends a transaction as a deadlock; held, every loser is an exclusion
    violation (which the service answers as 409)."""
    engine = pg_booking.engine
    patient = uuid.UUID(pg_booking.patient_id)
    rows = [Appointment(uuid.uuid4(), patient, pg_booking.shah, "TPI",
                        datetime(2027, 1, 1, tzinfo=UTC) + timedelta(days=n),
                        datetime(2027, 1, 1, 0, 30, tzinfo=UTC) + timedelta(days=n))
            for n in range(10)]
    outcomes = Counter()

    def move(row, slot, start):
        try:
            start.wait(timeout=30)
            with engine.begin() as connection:
                repository = AppointmentRepository(connection, pg_booking.clock)
                repository.hold_diary(row.clinician_id)
                repository.update(replace(row, starts_at=slot,
                                          ends_at=slot + timedelta(minutes=30)))
            return "moved"
        except sa.exc.DBAPIError as error:
            return type(error.orig).__name__

    for round_ in range(100):
        slot = datetime(2028, 1, 1, tzinfo=UTC) + timedelta(days=round_)
        with engine.begin() as connection:
            for row in rows:
                connection.execute(sa.delete(appointments).where(appointments.c.id == row.id))
                AppointmentRepository(connection, pg_booking.clock).add_if_free(row, "sent")
        start = threading.Barrier(len(rows))
        with ThreadPoolExecutor(max_workers=len(rows)) as pool:
            outcomes.update(pool.map(move, rows, [slot] * len(rows), [start] * len(rows)))
    assert outcomes == {"moved": 100, "ExclusionViolation": 900}


@contextlib.contextmanager
def _statements(engine):
    """The SQL each statement run on `engine` sent, in order, while the block runs."""
    sent = []

    def note(_conn, _cursor, statement, *_args):
        sent.append(statement)
    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)


def _in_one_statement(sent: list[str]) -> int:
    return sum(1 for statement in sent if statement.lstrip().startswith("WITH diary AS"))


def _wait_for_a_diary_waiter(engine) -> None:
    deadline = time.monotonic() + 15  # leaves as soon as the writer is seen waiting
    while _waiting_on_advisory_lock(engine) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _waiting_on_advisory_lock(engine) == 1


def test_a_booking_that_lost_a_race_in_its_one_statement_is_refused_by_the_transaction(
        pg_booking):
    """PostgreSQL first tries a booking as one statement, whose overlap check reads the
    snapshot taken before it waits for the clinician's diary: a booking the holder commits
    meanwhile is invisible to it, and the exclusion constraint refuses the overlap. That is
    no answer yet: the transactional path, holding the diary, decides (409), and nothing of
    the loser is written."""
    site, tz = pg_booking, ZoneInfo("Europe/London")
    patient = uuid.UUID(site.patient_id)
    nine = datetime(2026, 11, 3, 9, tzinfo=UTC)  # 09:00 GMT, Tuesday
    events_before = len(site.events())
    holder = BookingUnitOfWork(site.engine, site.clock)
    with _statements(site.engine) as sent, ThreadPoolExecutor(max_workers=1) as pool, holder:
        holder.appointments.hold_diary(site.shah)
        taken = Appointment(uuid.uuid4(), patient, site.shah, "TPI", nine,
                            nine + timedelta(minutes=30))
        assert holder.appointments.add_if_free(taken, "sent") is not None
        waiting = pool.submit(service.book_appointment, BookingUnitOfWork(site.engine, site.clock),
                              patient, site.shah, "TPI", nine, tz)
        _wait_for_a_diary_waiter(site.engine)
        holder.commit()
        with pytest.raises(Conflict):
            waiting.result(timeout=30)
    assert _in_one_statement(sent) == 1    # tried, refused by the constraint, then decided
    with site.engine.connect() as connection:
        booked = connection.execute(sa.select(appointments.c.id).where(
            appointments.c.clinician_id == site.shah, appointments.c.starts_at == nine)
        ).scalars().all()
    assert booked == [taken.id]
    assert len(site.events()) == events_before


def test_a_slot_a_reschedule_is_freeing_is_booked_once_the_reschedule_commits(pg_booking):
    """The one statement sees the appointment still at 09:00 (the reschedule moving it away
    has not committed) and books nothing; the transaction then waits for the diary, sees the
    time free, and books it: 201, as when the reschedule had come a moment earlier."""
    site, tz = pg_booking, ZoneInfo("Europe/London")
    patient = uuid.UUID(site.patient_id)
    nine = datetime(2026, 11, 5, 9, tzinfo=UTC)  # 09:00 GMT, Thursday
    moving = service.book_appointment(BookingUnitOfWork(site.engine, site.clock), patient,
                                      site.shah, "TPI", nine, tz)["id"]
    holder = BookingUnitOfWork(site.engine, site.clock)
    with _statements(site.engine) as sent, ThreadPoolExecutor(max_workers=1) as pool, holder:
        holder.appointments.hold_diary(site.shah)
        before = holder.appointments.get(moving)
        holder.appointments.update(replace(before, starts_at=nine + timedelta(hours=2),
                                           ends_at=nine + timedelta(hours=2, minutes=30)))
        waiting = pool.submit(service.book_appointment, BookingUnitOfWork(site.engine, site.clock),
                              patient, site.shah, "TPI", nine, tz)
        _wait_for_a_diary_waiter(site.engine)
        holder.commit()
        booked = waiting.result(timeout=30)
    assert _in_one_statement(sent) == 1
    assert booked["starts_at"] == nine and booked["id"] != moving


def test_an_uncontended_booking_is_one_statement_and_wakes_the_relay(pg_booking, postgres_url):
    """Two round trips (the read, then the write with its event); the relay is woken by the
    write's commit."""
    site, tz = pg_booking, ZoneInfo("Europe/London")
    listener = psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://"),
                               autocommit=True)
    try:
        listener.execute(f'LISTEN "{outbox_channel("booking")}"')
        with _statements(site.engine) as sent:
            booked = service.book_appointment(BookingUnitOfWork(site.engine, site.clock),
                                              uuid.UUID(site.patient_id), site.shah, "TPI",
                                              datetime(2026, 11, 6, 10, tzinfo=UTC), tz)
        woken = list(listener.notifies(timeout=2, stop_after=1))
    finally:
        listener.close()
    assert len(sent) == 2 and _in_one_statement(sent) == 1
    assert [n.channel for n in woken] == [outbox_channel("booking")]
    assert site.events()[-1]["data"]["appointment_id"] == str(booked["id"])
def test_a_refused_booking_writes_no_event_and_a_booked_one_writes_exactly_one(pg_booking):
    site, tz = pg_booking, ZoneInfo("Europe/London")
    patient = uuid.UUID(site.patient_id)
    ten = datetime(2026, 11, 4, 10, tzinfo=UTC)
    before = len(site.events())
    booked = service.book_appointment(BookingUnitOfWork(site.engine, site.clock), patient,
                                      site.shah, "TPI", ten, tz)
    with pytest.raises(Conflict):
        service.book_appointment(BookingUnitOfWork(site.engine, site.clock), patient,
                                 site.shah, "TPI", ten + timedelta(minutes=15), tz)
    events = site.events()[before:]
    assert [(e["type"], e["data"]["appointment_id"]) for e in events] == [
        ("booking.appointment.booked", str(booked["id"]))]


def test_the_overlap_checks_find_a_clinicians_time_through_the_constraints_index(pg_booking):
    """A booking's check for a clashing appointment, and availability's read of the taken
    times, must cost the same for a clinician with years of diary as for a new one: both are
    asked as a range overlap, which the exclusion constraint's GiST index answers by clinician
    AND time. Asked as `starts_at < end AND ends_at > start`, the index could only narrow by
    clinician, and every earlier appointment was read."""
    site = pg_booking
    start = datetime(2027, 3, 2, 10, tzinfo=UTC)
    end = start + timedelta(minutes=30)
    booking = {column.key: None for column in appointments.c} | {
        "id": uuid.uuid4(), "patient_id": uuid.UUID(site.patient_id),
        "clinician_id": site.shah, "treatment_code": "TPI", "starts_at": start, "ends_at": end,
        "status": "booked", "confirmed": False, "intake_form_status": "sent",
        "created_at": start, "updated_at": start, "diary": 1}
    event = {"event_event_id": "e", "event_type": "t", "event_subject": "s",
             "event_body": b"{}", "event_created_at": start, "event_channel": "c"}
    plans = {
        "one-statement booking": generic_plan(site.engine, _BOOK_AT_ONCE, booking | event),
        "transactional booking": generic_plan(site.engine, _INSERT_IF_FREE[True], booking),
        "availability": generic_plan(
            site.engine, taken_statement(site.shah, start, end, ranges=True), {}),
    }
    for use, plan in plans.items():
        scan = [line for line in plan.splitlines() if "no_double_booking" in line]
        assert scan, f"{use}: the constraint's index is not used:\n{plan}"
        conditions = plan.split(scan[0], 1)[1].splitlines()[1]
        assert "Index Cond" in conditions and "&&" in conditions, f"{use}:\n{plan}"
