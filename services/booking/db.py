"""Booking's tables, repositories and unit of work.

The database, not Python, is what guarantees no double booking: on PostgreSQL an exclusion
constraint over each clinician's time range (added by the migration, as SQLite has no such
thing); SQLite, the single-process embedded default, serialises writers instead.
"""
from __future__ import annotations

import contextlib
import functools
import json
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from types import SimpleNamespace

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from services.booking.model import Appointment, Clinician, FollowUpPlan, Treatment, WorkingHours
from services.booking.model.records import (
    Address,
    GeneralPractitioner,
    Patient,
    PatientContact,
)
from shared.clock import Clock
from shared.db import (
    UnitOfWork,
    UTCDateTime,
    add_shared_tables,
    insert_ignoring_duplicates,
    one_statement,
    outbox_channel,
    outbox_insert_for_each,
    outbox_parameters,
)
from shared.direct import DirectStatement
from shared.events import Event

metadata = sa.MetaData()
shared_tables = add_shared_tables(metadata)

patients = sa.Table(
    "patients", metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("given_name", sa.String(100), nullable=False),
    sa.Column("family_name", sa.String(100), nullable=False),
    sa.Column("date_of_birth", sa.Date, nullable=False),
    sa.Column("phone", sa.String(20), nullable=False, index=True),
    sa.Column("email", sa.String(254), nullable=True),
    sa.Column("address", sa.JSON, nullable=False),
    sa.Column("gp", sa.JSON, nullable=True),
    sa.Column("consent_sms", sa.Boolean, nullable=False),
    sa.Column("consent_email", sa.Boolean, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

clinicians = sa.Table(
    "clinicians", metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("working_hours", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

treatments = sa.Table(
    "treatments", metadata,
    sa.Column("code", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("duration_minutes", sa.Integer, nullable=False),
    sa.Column("requires_consent", sa.Boolean, nullable=False),
    sa.Column("followup_kind", sa.String(40), nullable=True),
    sa.Column("followup_days", sa.Integer, nullable=True),
    sa.Column("followup_local_time", sa.String(5), nullable=True),
)

appointments = sa.Table(
    "appointments", metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("patient_id", sa.Uuid, sa.ForeignKey("patients.id"), nullable=False, index=True),
    sa.Column("clinician_id", sa.Uuid, sa.ForeignKey("clinicians.id"), nullable=False),
    sa.Column("treatment_code", sa.String(40), sa.ForeignKey("treatments.code"),
              nullable=False),
    sa.Column("starts_at", UTCDateTime, nullable=False),
    sa.Column("ends_at", UTCDateTime, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("confirmed", sa.Boolean, nullable=False, default=False),
    sa.Column("cancel_reason", sa.String(500), nullable=True),
    sa.Column("cancelled_by", sa.String(20), nullable=True),
    sa.Column("intake_form_status", sa.String(30), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("ends_at > starts_at", name="appointment_has_duration"),
    sa.Index("appointments_clinician_time", "clinician_id", "starts_at"),
    sa.Index("appointments_starts_at", "starts_at"),
)

followups = sa.Table(
    "followups", metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("appointment_id", sa.Uuid, sa.ForeignKey("appointments.id"), nullable=False),
    sa.Column("patient_id", sa.Uuid, nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # The check-in's answer: the 0-10 the patient texted back, and when (the latest counts).
    sa.Column("pain_score", sa.SmallInteger, nullable=True),
    sa.Column("scored_at", UTCDateTime, nullable=True),
    sa.UniqueConstraint("appointment_id", "kind", name="one_followup_per_kind"),
)

staff_users = sa.Table(
    "staff_users", metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("email", sa.String(254), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

phone_calls = sa.Table(
    "phone_calls", metadata,
    sa.Column("call_id", sa.String(100), primary_key=True),
    sa.Column("event", sa.String(30), primary_key=True),
    sa.Column("patient_id", sa.Uuid, nullable=True),
    sa.Column("at", UTCDateTime, nullable=False),
)

ACTIVE_STATUSES = ("booked", "attended")  # statuses that hold the clinician's time


class PatientRepository:
    def __init__(self, connection: Connection, clock: Clock):
        self._c, self._clock = connection, clock

    def add(self, patient: Patient) -> None:
        self._c.execute(patients.insert().values(
            id=patient.id, given_name=patient.given_name, family_name=patient.family_name,
            date_of_birth=patient.date_of_birth, phone=patient.phone, email=patient.email,
            address=vars(patient.address), gp=vars(patient.gp) if patient.gp else None,
            consent_sms=patient.consent_sms, consent_email=patient.consent_email,
            created_at=self._clock.now(),
        ))

    def get(self, patient_id: uuid.UUID) -> Patient | None:
        row = self._c.execute(sa.select(patients).where(patients.c.id == patient_id)).first()
        return _patient(row) if row else None

    def with_phone(self, phone: str) -> list[Patient]:
        rows = self._c.execute(sa.select(patients).where(patients.c.phone == phone)
                               .order_by(patients.c.created_at)).all()
        return [_patient(row) for row in rows]


def _patient(row) -> Patient:
    return Patient(
        id=row.id, given_name=row.given_name, family_name=row.family_name,
        date_of_birth=row.date_of_birth, phone=row.phone, email=row.email,
        address=Address(**row.address), gp=GeneralPractitioner(**row.gp) if row.gp else None,
        consent_sms=row.consent_sms, consent_email=row.consent_email,
    )


class ClinicianRepository:
    def __init__(self, connection: Connection, clock: Clock):
        self._c, self._clock = connection, clock

    def add(self, clinician: Clinician) -> None:
        self._c.execute(clinicians.insert().values(
            id=clinician.id, name=clinician.name,
            working_hours=[_hours_json(h) for h in clinician.working_hours],
            created_at=self._clock.now(),
        ))

    def save(self, clinician: Clinician) -> None:
        """Insert or refresh (the demo seed runs on every `make run`)."""
        if self.get(clinician.id) is None:
            self.add(clinician)
        else:
            self._c.execute(clinicians.update().where(clinicians.c.id == clinician.id).values(
                name=clinician.name,
                working_hours=[_hours_json(h) for h in clinician.working_hours]))

    def get(self, clinician_id: uuid.UUID) -> Clinician | None:
        row = self._c.execute(
            sa.select(clinicians).where(clinicians.c.id == clinician_id)).first()
        return _clinician(row) if row else None

    def list(self) -> list[Clinician]:
        return [_clinician(r) for r in self._c.execute(
            sa.select(clinicians).order_by(clinicians.c.name)).all()]


def _hours_json(hours: WorkingHours) -> dict:
    return {"weekday": hours.weekday, "start": hours.start.strftime("%H:%M"),
            "end": hours.end.strftime("%H:%M")}


def _clinician(row) -> Clinician:
    return Clinician(id=row.id, name=row.name, working_hours=tuple(
        WorkingHours(h["weekday"], time.fromisoformat(h["start"]), time.fromisoformat(h["end"]))
        for h in row.working_hours))


class TreatmentRepository:
    def __init__(self, connection: Connection):
        self._c = connection

    def save(self, treatment: Treatment) -> None:
        plan = treatment.followup
        values = dict(
            name=treatment.name, duration_minutes=treatment.duration_minutes,
            requires_consent=treatment.requires_consent,
            followup_kind=plan.kind if plan else None,
            followup_days=plan.days_after if plan else None,
            followup_local_time=plan.local_time.strftime("%H:%M") if plan else None,
        )
        if self.get(treatment.code) is None:
            self._c.execute(treatments.insert().values(code=treatment.code, **values))
        else:
            self._c.execute(treatments.update().where(treatments.c.code == treatment.code)
                            .values(**values))

    def get(self, code: str) -> Treatment | None:
        row = self._c.execute(sa.select(treatments).where(treatments.c.code == code)).first()
        return _treatment(row) if row else None

    def list(self) -> list[Treatment]:
        return [_treatment(r) for r in self._c.execute(
            sa.select(treatments).order_by(treatments.c.name)).all()]


def _treatment(row) -> Treatment:
    plan = None
    if row.followup_kind:
        plan = FollowUpPlan(row.followup_kind, row.followup_days,
                            time.fromisoformat(row.followup_local_time))
    return Treatment(code=row.code, name=row.name, duration_minutes=row.duration_minutes,
                     requires_consent=row.requires_consent, followup=plan)


class AppointmentRepository:
    def __init__(self, connection: Connection, clock: Clock):
        self._c, self._clock = connection, clock

    def add_if_free(self, appointment: Appointment, intake_form_status: str) -> dict | None:
        """Insert unless an active appointment of the clinician overlaps it: the row as
        written, or None when the time is taken. One statement where a check and an insert
        were two. On PostgreSQL the diary is held (booking_parties), so the check sees any
        booking committed before; the exclusion constraint stays the backstop (IntegrityError)."""
        now = self._clock.now()
        values = {**_appointment_values(appointment), "intake_form_status": intake_form_status,
                  "created_at": now, "updated_at": now}
        statement = _INSERT_IF_FREE[self._c.dialect.name == "postgresql"]
        if self._c.execute(statement, values).rowcount != 1:
            return None
        return values

    def booking_parties(self, patient_id: uuid.UUID, clinician_id: uuid.UUID,
                        treatment_code: str, *, hold_diary: bool) -> BookingParties:
        """Who and what a booking names, and whether the patient was ever booked: one round
        trip instead of four, on the path every booking takes. With `hold_diary`, on
        PostgreSQL, the same trip holds the clinician's diary until commit (see hold_diary)."""
        locking = hold_diary and self._c.dialect.name == "postgresql"
        return _booking_parties(self._c.execute(
            _BOOKING_PARTIES_HOLDING_DIARY if locking else _BOOKING_PARTIES,
            _parties_parameters(patient_id, clinician_id, treatment_code)).one())

    def hold_diary(self, clinician_id: uuid.UUID) -> None:
        """Bookings into one clinician's diary take turns until commit. Without this, two
        transactions writing overlapping times can each wait on the other's row in the
        exclusion constraint's check, and PostgreSQL ends one with a deadlock error (a 503)
        where the patient should hear "that time is taken" (409). SQLite has one writer."""
        if self._c.dialect.name == "postgresql":
            self._c.execute(_HOLD_DIARY, {"diary": _diary_key(clinician_id)})

    def update(self, appointment: Appointment) -> None:
        self._c.execute(appointments.update().where(appointments.c.id == appointment.id)
                        .values(**_appointment_values(appointment),
                                updated_at=self._clock.now()))

    def set_intake_form_status(self, appointment_id: uuid.UUID, status: str) -> bool:
        return self._c.execute(
            appointments.update().where(appointments.c.id == appointment_id)
            .values(intake_form_status=status, updated_at=self._clock.now())
        ).rowcount == 1

    def get(self, appointment_id: uuid.UUID, *, for_update: bool = False) -> Appointment | None:
        statement = sa.select(appointments).where(appointments.c.id == appointment_id)
        if for_update:
            statement = statement.with_for_update()
        row = self._c.execute(statement).first()
        return _appointment(row) if row else None

    def view(self, appointment_id: uuid.UUID):
        """The row as reception sees it, with the intake form's state."""
        return self._c.execute(
            sa.select(appointments).where(appointments.c.id == appointment_id)).first()

    def between(self, start: datetime, end: datetime, clinician_id: uuid.UUID | None = None):
        """Every appointment overlapping [start, end), cancelled ones included. On PostgreSQL
        read between two bounds of `starts_at` (none starts more than a day before what it
        overlaps: constraint appointment_within_a_day), so a day costs the same in the
        clinic's tenth year as in its first."""
        statement = (sa.select(appointments)
                     .where(day_list_window(start, end,
                                            bounded=self._c.dialect.name == "postgresql"))
                     .order_by(appointments.c.starts_at))
        if clinician_id:
            statement = statement.where(appointments.c.clinician_id == clinician_id)
        return self._c.execute(statement).all()

    def taken(self, clinician_id: uuid.UUID, start: datetime, end: datetime,
              excluding: uuid.UUID | None = None) -> list[tuple[datetime, datetime]]:
        statement = taken_statement(clinician_id, start, end, excluding,
                                    ranges=self._c.dialect.name == "postgresql")
        return [(r.starts_at, r.ends_at) for r in self._c.execute(statement).all()]

    def for_patient(self, patient_id: uuid.UUID) -> list[Appointment]:
        rows = self._c.execute(sa.select(appointments).where(
            appointments.c.patient_id == patient_id).order_by(appointments.c.starts_at)).all()
        return [_appointment(r) for r in rows]


@dataclass(frozen=True)
class BookingParties:
    """What a new booking is about; None for an id or code that names nothing."""

    patient: PatientContact | None
    clinician: Clinician | None
    treatment: Treatment | None
    booked_before: bool


def _booking_parties(row) -> BookingParties:
    """From a row of _BOOKING_PARTIES (or a tuple in its column order)."""
    patient = _part(row, 0, _CONTACT_COLUMNS)
    clinician = row[_CLINICIAN_AT:_TREATMENT_AT]
    treatment = row[_TREATMENT_AT:_BOOKED_BEFORE_AT]
    return BookingParties(
        patient=PatientContact(**patient) if patient else None,
        clinician=_known_clinician(*clinician) if clinician[0] is not None else None,
        treatment=_known_treatment(*treatment) if treatment[0] is not None else None,
        booked_before=row[_BOOKED_BEFORE_AT],
    )


# Every booking reads its clinician and treatment, and building a week of working hours cost
# more Python than the statement that read them. Built once per distinct row, keyed by all
# of its content (the hours as their stored JSON text), so a change of hours or of a
# treatment is a new key and is never served stale; the objects are frozen, so sharing them
# between requests is safe.
@functools.lru_cache(maxsize=1024)
def _known_clinician(clinician_id: uuid.UUID, name: str, working_hours_json: str) -> Clinician:
    return _clinician(SimpleNamespace(id=clinician_id, name=name,
                                      working_hours=json.loads(working_hours_json)))


@functools.lru_cache(maxsize=256)
def _known_treatment(*columns) -> Treatment:
    return _treatment(SimpleNamespace(**dict(zip((c.key for c in treatments.c), columns,
                                                 strict=True))))


def _part(row, start: int, columns) -> dict | None:
    """These columns of a joined row, from position `start`, under their own names as the
    mappers read them; None when the outer join found nothing (the first column, the primary
    key, is null)."""
    if row[start] is None:
        return None
    return dict(zip((c.key for c in columns), row[start:start + len(columns)], strict=True))


def _parties_parameters(patient_id: uuid.UUID, clinician_id: uuid.UUID,
                        treatment_code: str) -> dict:
    return {"patient_id": patient_id, "clinician_id": clinician_id,
            "treatment_code": treatment_code, "diary": _diary_key(clinician_id)}


# A booking's event carries the patient's contact channel only; the rest of the record
# (address, GP, date of birth) is neither needed nor fetched.
_CONTACT_COLUMNS = (patients.c.id, patients.c.phone, patients.c.email, patients.c.consent_sms,
                    patients.c.consent_email)
_patient_id = sa.bindparam("patient_id", type_=sa.Uuid)
_clinician_id = sa.bindparam("clinician_id", type_=sa.Uuid)
_CLINICIAN_COLUMNS = (clinicians.c.id, clinicians.c.name,
                      sa.cast(clinicians.c.working_hours, sa.Text).label("working_hours_json"))
_CLINICIAN_AT = len(_CONTACT_COLUMNS)
_TREATMENT_AT = _CLINICIAN_AT + len(_CLINICIAN_COLUMNS)
_BOOKED_BEFORE_AT = _TREATMENT_AT + len(treatments.c)
_BOOKING_PARTIES = (
    sa.select(
        *_CONTACT_COLUMNS, *_CLINICIAN_COLUMNS, *treatments.c,
        # Seen, or to be seen, already: a cancelled booking does not count unless its intake
        # form came back (rebooked after cancelling, a new patient still needs the form).
        # (Literals written into the SQL: this statement runs straight on the driver.)
        sa.exists().where(appointments.c.patient_id == _patient_id, sa.or_(
            appointments.c.status != sa.literal_column("'cancelled'"),
            appointments.c.intake_form_status.in_([
                sa.literal_column("'completed'"), sa.literal_column("'received_on_paper'")]),
        )).label("booked_before"),
    )
    .select_from(
        sa.select(sa.literal_column("1").label("one")).subquery("one")
        .outerjoin(patients, patients.c.id == _patient_id)
        .outerjoin(clinicians, clinicians.c.id == _clinician_id)
        .outerjoin(treatments, treatments.c.code == sa.bindparam("treatment_code",
                                                                  type_=sa.String))
    )
)

# Two-key advisory locks: a space apart from the outbox relay's one-key leadership lock.
_DIARY_LOCKS = 0x6469  # "di"
_HOLD_DIARY = sa.select(sa.func.pg_advisory_xact_lock(
    _DIARY_LOCKS, sa.bindparam("diary", type_=sa.Integer)))
_BOOKING_PARTIES_HOLDING_DIARY = _BOOKING_PARTIES.add_columns(
    sa.func.pg_advisory_xact_lock(_DIARY_LOCKS, sa.bindparam("diary", type_=sa.Integer))
    .label("diary_held"))


def _diary_key(clinician_id: uuid.UUID) -> int:
    """A signed 32-bit key from all of the clinician's id (time-ordered ids share their first
    bytes); two clinicians sharing a key only take turns."""
    return int.from_bytes(zlib.crc32(clinician_id.bytes).to_bytes(4, "big"), "big", signed=True)


_NEW_APPOINTMENT = {column.key: sa.bindparam(column.key, type_=column.type)
                    for column in appointments.c}
# The statuses as literals, not parameters: the exclusion constraint's index covers active
# appointments only (WHERE status IN ('booked', 'attended')), and PostgreSQL uses a partial
# index only where it can prove the query asks for no other rows, which it cannot from
# parameters once a prepared statement runs on its generic plan.
_ACTIVE = appointments.c.status.in_([sa.literal_column(f"'{status}'")
                                     for status in ACTIVE_STATUSES])


def _time_range(start, end) -> sa.ColumnElement:
    return sa.func.tstzrange(start, end, sa.literal_column("'[)'"))


def _overlapping(start, end, *, ranges: bool) -> sa.ColumnElement:
    """Appointments whose time overlaps [start, end). On PostgreSQL (`ranges`) as the range
    overlap the exclusion constraint's GiST index answers by clinician and time, so the cost
    stays flat however long a clinician's diary grows; `starts_at < end AND ends_at > start`
    instead read every appointment of the clinician starting before `end` (105 rows for a
    booking into a diary of 105; docs/architecture.md, "Finding a clinician's time")."""
    if ranges:
        return _time_range(appointments.c.starts_at, appointments.c.ends_at).op(
            "&&", is_comparison=True)(_time_range(start, end))
    return sa.and_(appointments.c.starts_at < end, appointments.c.ends_at > start)


LONGEST_APPOINTMENT = timedelta(hours=24)   # PostgreSQL: constraint appointment_within_a_day


def day_list_window(start: datetime, end: datetime, *, bounded: bool) -> sa.ColumnElement:
    overlapping = sa.and_(appointments.c.starts_at < end, appointments.c.ends_at > start)
    start = start.astimezone(UTC)   # a real day back: wall-clock days vary at clock changes
    if bounded and start - _EARLIEST > LONGEST_APPOINTMENT:   # not for a day in year 1
        return sa.and_(appointments.c.starts_at >= start - LONGEST_APPOINTMENT, overlapping)
    return overlapping


_EARLIEST = datetime.min.replace(tzinfo=UTC)


def taken_statement(clinician_id, start, end, excluding=None, *, ranges: bool) -> sa.Select:
    """The clinician's active appointments overlapping [start, end)."""
    # Typed as the columns are, so a naive datetime is refused, not read in the session's zone.
    start, end = sa.literal(start, UTCDateTime), sa.literal(end, UTCDateTime)
    statement = sa.select(appointments.c.starts_at, appointments.c.ends_at).where(
        appointments.c.clinician_id == clinician_id, _ACTIVE,
        _overlapping(start, end, ranges=ranges))
    if excluding:
        statement = statement.where(appointments.c.id != excluding)
    return statement


def _insert_if_free(ranges: bool) -> sa.Insert:
    return appointments.insert().from_select(
        list(_NEW_APPOINTMENT),
        sa.select(*_NEW_APPOINTMENT.values()).where(_no_overlap(ranges)),
    ).execution_options(preserve_rowcount=True)  # an INSERT's rowcount is otherwise not kept


def _no_overlap(ranges: bool) -> sa.ColumnElement:
    return ~sa.exists().where(
        appointments.c.clinician_id == _NEW_APPOINTMENT["clinician_id"], _ACTIVE,
        _overlapping(_NEW_APPOINTMENT["starts_at"], _NEW_APPOINTMENT["ends_at"], ranges=ranges))


_INSERT_IF_FREE = {True: _insert_if_free(ranges=True), False: _insert_if_free(ranges=False)}


def _book_at_once_statement() -> sa.Select:
    """WITH diary (its lock), booked (INSERT ... FROM diary WHERE no overlap RETURNING id),
    announced (the outbox row FROM booked) SELECT count(*) FROM booked. The inserted row
    comes from `diary`'s one row, so the lock is held before the row is written (the overlap
    check, uncorrelated, runs first: see book_at_once)."""
    diary = sa.select(sa.func.pg_advisory_xact_lock(
        _DIARY_LOCKS, sa.bindparam("diary", type_=sa.Integer)).label("held")).cte("diary")
    booked = appointments.insert().from_select(
        list(_NEW_APPOINTMENT),
        sa.select(*_NEW_APPOINTMENT.values()).select_from(diary).where(_no_overlap(ranges=True)),
    ).returning(appointments.c.id).cte("booked")
    announced = outbox_insert_for_each(shared_tables.outbox, booked).cte("announced")
    return sa.select(sa.func.count()).select_from(booked).add_cte(announced)


_BOOK_AT_ONCE = _book_at_once_statement()


class BookingAtOnce:
    """PostgreSQL, on a connection in autocommit (`BookingUnitOfWork.one_statement_at_a_time`):
    a booking as one read and one write, each its own transaction. The hottest path of the
    service, so both statements run straight on the driver (`shared.direct`)."""

    _parties = DirectStatement(_BOOKING_PARTIES)
    _book = DirectStatement(_BOOK_AT_ONCE)

    def __init__(self, connection: Connection, clock: Clock):
        self._c, self._clock = connection, clock

    def booking_parties(self, patient_id: uuid.UUID, clinician_id: uuid.UUID,
                        treatment_code: str) -> BookingParties:
        """As `AppointmentRepository.booking_parties`, without holding the diary."""
        return _booking_parties(self._parties.one(
            self._c, _parties_parameters(patient_id, clinician_id, treatment_code)))

    def book_at_once(self, appointment: Appointment, intake_form_status: str,
                     event_parameters: dict) -> dict | None:
        """The appointment, if its time is free, and its outbox row, in one statement, so one
        round trip and atomic by itself. The row as written; None when the time is taken.

        The overlap check reads the snapshot the statement started with, and PostgreSQL
        evaluates it before anything else, so before the diary is taken (see `_book_at_once`):
        a booking committed while this one waited for the diary is not seen by it, and the
        exclusion constraint refuses the overlap (IntegrityError, SQLSTATE 23P01). The diary
        still makes writers into one diary take turns, so they do not deadlock each other in
        the constraint's check."""
        now = self._clock.now()
        values = {**_appointment_values(appointment), "intake_form_status": intake_form_status,
                  "created_at": now, "updated_at": now}
        (booked,) = self._book.one(self._c, {
            **values, **event_parameters, "diary": _diary_key(appointment.clinician_id)})
        return values if booked == 1 else None


def _appointment_values(a: Appointment) -> dict:
    return dict(id=a.id, patient_id=a.patient_id, clinician_id=a.clinician_id,
                treatment_code=a.treatment_code, starts_at=a.starts_at, ends_at=a.ends_at,
                status=a.status, confirmed=a.confirmed, cancel_reason=a.cancel_reason,
                cancelled_by=a.cancelled_by)


def _appointment(row) -> Appointment:
    return Appointment(id=row.id, patient_id=row.patient_id, clinician_id=row.clinician_id,
                       treatment_code=row.treatment_code, starts_at=row.starts_at,
                       ends_at=row.ends_at, status=row.status, confirmed=row.confirmed,
                       cancel_reason=row.cancel_reason, cancelled_by=row.cancelled_by)


class FollowUpRepository:
    def __init__(self, connection: Connection, clock: Clock):
        self._c, self._clock = connection, clock

    def add(self, appointment_id: uuid.UUID, patient_id: uuid.UUID, kind: str,
            due_at: datetime) -> uuid.UUID | None:
        """None when this appointment already has a follow-up of this kind."""
        exists = self._c.execute(sa.select(followups.c.id).where(
            followups.c.appointment_id == appointment_id, followups.c.kind == kind)).first()
        if exists:
            return None
        followup_id = uuid.uuid4()
        insert_ignoring_duplicates(self._c, followups, dict(
            id=followup_id, appointment_id=appointment_id, patient_id=patient_id, kind=kind,
            due_at=due_at, created_at=self._clock.now()))
        return followup_id

    def record_score(self, followup_id: uuid.UUID, patient_id: uuid.UUID | None, score: int,
                     at: datetime) -> bool:
        """The patient's answer to the check-in; False when there is no such follow-up of
        this patient's (a reply naming another's is applied to nothing)."""
        condition = followups.c.id == followup_id
        if patient_id is not None:
            condition = condition & (followups.c.patient_id == patient_id)
        return self._c.execute(followups.update().where(condition).values(
            pain_score=score, scored_at=at)).rowcount == 1

    def of_appointment(self, appointment_id: uuid.UUID) -> list:
        return self._c.execute(
            sa.select(followups.c.id, followups.c.kind, followups.c.due_at,
                      followups.c.pain_score, followups.c.scored_at)
            .where(followups.c.appointment_id == appointment_id)
            .order_by(followups.c.due_at)).all()


class PhoneCallRepository:
    def __init__(self, connection: Connection, clock: Clock):
        self._c, self._clock = connection, clock

    def record(self, call_id: str, event: str, patient_id: uuid.UUID | None,
               at: datetime) -> bool:
        """False when the phone system sent this call event before (webhooks are retried)."""
        return insert_ignoring_duplicates(self._c, phone_calls, dict(
            call_id=call_id, event=event, patient_id=patient_id, at=at))


class BookingUnitOfWork(UnitOfWork):
    def __init__(self, engine: sa.Engine, clock: Clock):
        super().__init__(engine, shared_tables, clock, outbox_channel("booking"))

    @contextlib.contextmanager
    def one_statement_at_a_time(self) -> Iterator[BookingAtOnce]:
        """A booking's read and write on a connection of their own, outside this unit of work's
        transaction, where each statement commits by itself (`shared.db.one_statement`).
        PostgreSQL only."""
        with one_statement(self.engine) as connection:
            yield BookingAtOnce(connection, self.clock)

    def outbox_parameters(self, event: Event) -> dict:
        return outbox_parameters(event, self.clock, self._notify_channel)

    def _open(self, connection: Connection) -> None:
        self.patients = PatientRepository(connection, self.clock)
        self.clinicians = ClinicianRepository(connection, self.clock)
        self.treatments = TreatmentRepository(connection)
        self.appointments = AppointmentRepository(connection, self.clock)
        self.followups = FollowUpRepository(connection, self.clock)
        self.calls = PhoneCallRepository(connection, self.clock)


def local_day_bounds(day: date, tz) -> tuple[datetime, datetime]:
    """The UTC instants at which a clinic-local day starts and ends (23 or 25 hours long
    on the days the clocks change)."""
    start = datetime.combine(day, time(0), tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tz).astimezone(UTC)
    return start, end
