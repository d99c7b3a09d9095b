"""Notify's tables: the scheduled messages (the schedule lives here, never in memory or in
broker delays), patients' contact channels and opt-outs, the shared SMS rate bucket, and the
webhook receipts that make a retried Twilio callback count once."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from services.notify.model.delivery import (
    ABOUT_A_COMING_APPOINTMENT,
    ASKING_FOR_A_REPLY,
    CALLED_OFF,
    FINISHED_APPOINTMENT,
    SMS_FALLBACK,
)
from services.notify.model.policy import PlannedMessage, checkin_by_email_instead
from shared.clock import Clock, FixedClock
from shared.db import (
    Outbox,
    UnitOfWork,
    UTCDateTime,
    add_shared_tables,
    insert_ignoring_duplicates,
    insert_many,
    outbox_channel,
    outbox_insert_for_each,
    outbox_parameters,
)
from shared.direct import DirectStatement
from shared.events import Event

metadata = sa.MetaData()
shared_tables = add_shared_tables(metadata)
DUE_CHANNEL = "clinic_notify_due"

messages = sa.Table(
    "messages", metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("dedupe_key", sa.String(200), nullable=False, unique=True),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("channel", sa.String(10), nullable=False),
    sa.Column("to_address", sa.String(254), nullable=False),
    sa.Column("appointment_id", sa.String(64), nullable=True, index=True),
    sa.Column("patient_id", sa.String(64), nullable=True, index=True),
    sa.Column("context", sa.Text, nullable=False),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("claim_token", sa.Uuid, nullable=True),
    sa.Column("lease_until", UTCDateTime, nullable=True),
    sa.Column("sending_at", UTCDateTime, nullable=True),
    sa.Column("sent_at", UTCDateTime, nullable=True),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    sa.Column("provider_id", sa.String(64), nullable=True, unique=True),
    sa.Column("provider_status", sa.String(20), nullable=True),
    sa.Column("error_code", sa.String(20), nullable=True),
    sa.Column("error", sa.String(300), nullable=True),
    sa.Column("fallback_of", sa.Uuid, nullable=True),
    # Why a message whose send is begun but unresolved must not be sent after all (migration
    # 0003): set by a cancellation, a new time or a STOP that came while it was in doubt.
    sa.Column("withdrawn", sa.String(100), nullable=True),
    # SHA-256 of the SMS text handed to the provider (migration 0004): what crash recovery
    # looks for in Twilio's list, as a template changed since would not render it again.
    sa.Column("sent_text_sha256", sa.String(64), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)
# Claiming reads only pending rows by due time: the partial index keeps that cost flat however
# many sent rows pile up. A second one finds messages stuck in `sending` after a crash.
sa.Index("messages_pending_due", messages.c.due_at,
         postgresql_where=messages.c.status == "pending",
         sqlite_where=messages.c.status == "pending")
sa.Index("messages_sending_lease", messages.c.lease_until,
         postgresql_where=messages.c.status == "sending",
         sqlite_where=messages.c.status == "sending")

contacts = sa.Table(
    "contacts", metadata,
    sa.Column("patient_id", sa.String(64), primary_key=True),
    sa.Column("phone", sa.String(20), nullable=True, index=True),
    sa.Column("email", sa.String(254), nullable=True),
    sa.Column("sms_ok", sa.Boolean, nullable=False),
    sa.Column("email_ok", sa.Boolean, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

opt_outs = sa.Table(
    "sms_opt_outs", metadata,
    sa.Column("phone", sa.String(20), primary_key=True),
    sa.Column("opted_out", sa.Boolean, nullable=False),
    sa.Column("changed_at", UTCDateTime, nullable=False),
)

# The SMS cap shared by every worker: the next free sending slot (GCRA), one row per limit.
rate_limits = sa.Table(
    "rate_limits", metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("next_slot_at", UTCDateTime, nullable=False),
)

# The latest state of each appointment as its events told us, so an event handled out of
# order (two workers, a redelivery) cannot re-plan reminders for a cancelled appointment.
appointment_states = sa.Table(
    "appointment_states", metadata,
    sa.Column("appointment_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("event_time", UTCDateTime, nullable=False),
)

# Twilio's status reports for a sid we have not recorded yet: a fast callback can overtake the
# commit of the send it reports on. Applied, then deleted, when the sid is recorded.
early_reports = sa.Table(
    "early_reports", metadata,
    sa.Column("provider_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(20), primary_key=True),
    sa.Column("error_code", sa.String(20), nullable=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
)

webhook_receipts = sa.Table(
    "webhook_receipts", metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
)

PENDING, SENDING, SENT, DELIVERED, FAILED, CANCELLED = (
    "pending", "sending", "sent", "delivered", "failed", "cancelled")
# An email whose end-of-data line may have reached the SMTP server: never sent again.
HANDED_OVER = "handed_over"


def _context_text(context: dict) -> str:
    return json.dumps(context, default=_json_default)


def _json_default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class AnsweredText(NamedTuple):
    """The text a patient's reply answers (`MessageRepository.last_about_an_appointment`)."""
    appointment_id: str | None
    patient_id: str | None
    kind: str
    followup_id: str | None


@dataclass(frozen=True)
class ClaimedMessage:
    id: uuid.UUID
    dedupe_key: str
    kind: str
    channel: str
    to: str
    appointment_id: str | None
    patient_id: str | None
    context: dict
    due_at: datetime
    attempts: int
    sending_at: datetime | None
    provider_status: str | None = None
    sent_text_sha256: str | None = None


class MessageRepository:
    def __init__(self, connection: Connection, clock: Clock):
        self._c, self._clock = connection, clock

    def schedule(self, planned: PlannedMessage, fallback_of: uuid.UUID | None = None) -> bool:
        """Store a planned message unless the same one (dedupe key) is stored already."""
        return insert_ignoring_duplicates(self._c, messages,
                                          self._row(planned, fallback_of, self._clock.now(),
                                                    _context_text(planned.context)))

    def schedule_all(self, planned: list[PlannedMessage]) -> int:
        """Store planned messages in one statement; how many were new or revived.

        A message stored already (same dedupe key) is skipped, unless that row was cancelled:
        then it is planned again. A reschedule cancels the old reminders and plans new ones,
        and a move back to the old time, a change of clinician only or a reminder moved out of
        quiet hours to the same minute gives a new reminder the key of a cancelled one.
        """
        if not planned:
            return 0
        now = self._clock.now()

        def upsert(insert):
            revive = {name: getattr(insert.excluded, name) for name in (
                "kind", "channel", "to_address", "appointment_id", "patient_id", "context",
                "due_at", "status", "attempts", "updated_at")}
            revive.update({name: sa.null() for name in (
                "claim_token", "lease_until", "sending_at", "error", "error_code",
                "provider_status", "withdrawn")})
            return insert.on_conflict_do_update(
                index_elements=[messages.c.dedupe_key], set_=revive,
                where=messages.c.status == CANCELLED,
            ).returning(messages.c.id)

        # The messages of one plan share their context dict: each is encoded once.
        contexts = {id(p.context): p.context for p in planned}
        encoded = {key: _context_text(context) for key, context in contexts.items()}
        rows = [self._row(p, None, now, encoded[id(p.context)])
                for p in sorted(planned, key=lambda p: p.dedupe_key)]
        return len(insert_many(self._c, messages, rows, upsert).all())

    @staticmethod
    def _row(planned: PlannedMessage, fallback_of: uuid.UUID | None, now: datetime,
             context_text: str) -> dict:
        return dict(
            id=uuid.uuid4(), dedupe_key=planned.dedupe_key, kind=planned.kind,
            channel=planned.channel, to_address=planned.to,
            appointment_id=planned.appointment_id, patient_id=planned.patient_id,
            context=context_text,
            due_at=planned.due_at, status=PENDING, attempts=0, fallback_of=fallback_of,
            created_at=now, updated_at=now)

    def cancel_pending(self, appointment_id: str, kinds: tuple[str, ...] | None = None,
                       reason: str | None = None) -> int:
        """Cancel what has not gone yet: pending rows, and rows a scheduler has claimed but not
        begun to send (its `begin_send` then finds the row cancelled and sends nothing); and
        withdraw those begun (`_withdraw`).

        In that order: a send begun between the two statements is then seen begun by the
        second, where the other way round it was neither withdrawn (not begun yet) nor
        cancelled (begun by then), and went out after a 5xx and a recovery."""
        about = [messages.c.appointment_id == appointment_id]
        if kinds:
            about.append(_of_kinds(appointment_id, kinds))
        cancelled = self._c.execute(messages.update().where(_not_yet_sent(), *about).values(
            status=CANCELLED, claim_token=None, lease_until=None, error=reason,
            updated_at=self._clock.now())).rowcount
        self._withdraw(reason or "cancelled", *about)
        return cancelled

    def _withdraw(self, reason: str, *where) -> None:
        """Sends begun whose outcome is unknown (the provider answered unclearly, or the
        worker died): recovery asks the provider whether they went and, if not, cancels them
        with this reason instead of sending (`Scheduler._recover`)."""
        self._c.execute(messages.update().where(
            messages.c.status == SENDING, messages.c.sending_at.is_not(None), *where,
        ).values(withdrawn=reason[:100]))

    def move_pending(self, appointment_id: str, kind: str, due_at: datetime | None,
                     starts_at: datetime) -> None:
        """Move the unsent messages of a kind to a new time (cancelled when None) and the
        appointment time their text names to `starts_at`."""
        rows = self._c.execute(sa.select(messages.c.id, messages.c.context).where(
            messages.c.appointment_id == appointment_id, messages.c.kind == kind,
            _not_yet_sent())).all()
        now = self._clock.now()
        for row in rows:
            if due_at is None:
                values = dict(status=CANCELLED, error="appointment moved")
            else:
                context = {**json.loads(row.context), "starts_at": starts_at}
                values = dict(status=PENDING, due_at=due_at, claim_token=None, lease_until=None,
                              context=_context_text(context))
            self._c.execute(messages.update().where(messages.c.id == row.id).values(
                updated_at=now, **values))

    def hold_for_opt_out(self, phone: str) -> int:
        """STOP: SMS to this number claimed but not begun go back to pending, where the next
        round cancels them as opted out (their claimer's `begin_send` finds them gone); those
        begun and in doubt are withdrawn (`_withdraw`), after: see `cancel_pending`."""
        held = self._c.execute(messages.update().where(
            messages.c.to_address == phone, messages.c.channel == "sms",
            messages.c.status == SENDING, messages.c.sending_at.is_(None),
        ).values(status=PENDING, claim_token=None, lease_until=None,
                 updated_at=self._clock.now())).rowcount
        self._withdraw("opted out of SMS", messages.c.to_address == phone,
                       messages.c.channel == "sms")
        return held

    def last_about_an_appointment(self, phone: str, kinds: frozenset[str] = ASKING_FOR_A_REPLY):
        """The last SMS that went to this number inviting a reply
        (`model.delivery.ASKING_FOR_A_REPLY`), as (appointment_id, patient_id, kind,
        followup_id): what a patient's reply answers,
        whatever has become of that appointment since. Passing over an appointment cancelled
        or over would name an older text's, and a NO meant for a visit already missed would
        cancel the next one; booking instead applies it to nothing. A number several patients
        share (a parent and child) is told apart by what was sent to it last, not by whose
        contact changed last. Found through the patients who have this number (indexed), not
        by scanning every message's address."""
        sharing = sa.select(contacts.c.patient_id).where(contacts.c.phone == phone)
        row = self._c.execute(
            sa.select(messages.c.appointment_id, messages.c.patient_id, messages.c.kind,
                      messages.c.context).where(
                messages.c.patient_id.in_(sharing.scalar_subquery()),
                messages.c.to_address == phone, messages.c.channel == "sms",
                messages.c.appointment_id.is_not(None),
                messages.c.kind.in_(sorted(kinds)),
                messages.c.status.in_((SENT, DELIVERED)))
            .order_by(messages.c.sent_at.desc()).limit(1)).first()
        if row is None:
            return None
        followup_id = json.loads(row.context).get("followup_id") if row.kind == "checkin" else None
        return AnsweredText(row.appointment_id, row.patient_id, row.kind, followup_id)

    def sids_of_others_sent_to(self, phone: str, message_id: uuid.UUID, since: datetime
                               ) -> set[str]:
        """The provider ids recorded for other SMS to this number since `since`: what crash
        recovery must not take for this message's, however alike their texts. Found through
        the patients who have this number (indexed), as `last_about_an_appointment`."""
        sharing = sa.select(contacts.c.patient_id).where(contacts.c.phone == phone)
        return set(self._c.execute(sa.select(messages.c.provider_id).where(
            messages.c.patient_id.in_(sharing.scalar_subquery()),
            messages.c.to_address == phone, messages.c.channel == "sms",
            messages.c.id != message_id, messages.c.provider_id.is_not(None),
            messages.c.sending_at >= since)).scalars())

    def last_sent_to_patient(self, patient_id: str, kind: str) -> datetime | None:
        return self._c.execute(sa.select(sa.func.max(messages.c.created_at)).where(
            messages.c.patient_id == patient_id, messages.c.kind == kind,
            messages.c.status != CANCELLED)).scalar()

    def for_appointment(self, appointment_id: str):
        return self._c.execute(sa.select(messages).where(
            messages.c.appointment_id == appointment_id).order_by(
                messages.c.created_at, messages.c.due_at, messages.c.kind, messages.c.channel,
            )).all()

    def by_provider_id(self, provider_id: str, *, for_update: bool = False):
        statement = sa.select(messages).where(messages.c.provider_id == provider_id)
        if for_update:
            statement = statement.with_for_update()
        return self._c.execute(statement).first()

    def update(self, message_id: uuid.UUID, **values) -> None:
        self._c.execute(messages.update().where(messages.c.id == message_id).values(
            updated_at=self._clock.now(), **values))

    def begin_send(self, message_id: uuid.UUID, token: uuid.UUID, lease: timedelta,
                   text_sha256: str | None = None) -> bool:
        """Record, just before the provider call, that this claim is sending now, and (SMS)
        the digest of the text it sends.

        `sending_at` bounds the provider search after a crash, and the digest is what it
        looks for. False when the claim is no longer ours (lease taken over) or the message
        was cancelled meanwhile: then nothing is sent.
        """
        now = self._clock.now()
        return self._c.execute(messages.update().where(
            messages.c.id == message_id, messages.c.claim_token == token,
            messages.c.status == SENDING, messages.c.withdrawn.is_(None),
        ).values(sending_at=now, lease_until=now + lease, updated_at=now,
                 attempts=messages.c.attempts + 1, sent_text_sha256=text_sha256)
        ).rowcount == 1

    def hold(self, message_id: uuid.UUID, token: uuid.UUID, wait: timedelta) -> bool:
        """Keep a message `sending` (it may have gone) until `wait` has passed, when recovery
        asks the provider before anything is sent again."""
        return self._c.execute(messages.update().where(
            messages.c.id == message_id, messages.c.claim_token == token,
        ).values(lease_until=self._clock.now() + wait)).rowcount == 1

    def hand_over(self, message_id: uuid.UUID, token: uuid.UUID) -> bool:
        """Record that the email is about to be taken by the SMTP server (see scheduler)."""
        return self._c.execute(messages.update().where(
            messages.c.id == message_id, messages.c.claim_token == token,
            messages.c.status == SENDING,
        ).values(provider_status=HANDED_OVER, updated_at=self._clock.now())).rowcount == 1

    def cancel_if_withdrawn(self, message_id: uuid.UUID, token: uuid.UUID) -> bool:
        """A send found not to have gone, cancelled if it was withdrawn meanwhile (`_withdraw`).
        Whether it was."""
        return self._c.execute(messages.update().where(
            messages.c.id == message_id, messages.c.claim_token == token,
            messages.c.status == SENDING, messages.c.withdrawn.is_not(None),
        ).values(status=CANCELLED, error=messages.c.withdrawn, claim_token=None,
                 lease_until=None, updated_at=self._clock.now())).rowcount == 1

    def settle(self, message_id: uuid.UUID, token: uuid.UUID, **values) -> bool:
        """Record a claimed message's outcome, if the claim is still ours. Back to `pending`
        (a retry later, a stop, a new time) is `cancelled` instead when the message was
        withdrawn while begun (`_withdraw`): it must not go later with its old text."""
        if values.get("status") == PENDING:
            withdrawn = messages.c.withdrawn.is_not(None)
            values["status"] = sa.case((withdrawn, CANCELLED), else_=PENDING)
            values["error"] = sa.case((withdrawn, messages.c.withdrawn),
                                      else_=values.get("error", messages.c.error))
        return self._c.execute(messages.update().where(
            messages.c.id == message_id, messages.c.claim_token == token,
            messages.c.status == SENDING,
        ).values(claim_token=None, lease_until=None, updated_at=self._clock.now(),
                 **values)).rowcount == 1

    def exists(self, dedupe_key: str) -> bool:
        """Whether this message (by dedupe key) is planned and not cancelled."""
        return self._c.execute(sa.select(messages.c.id).where(
            messages.c.dedupe_key == dedupe_key, messages.c.status != CANCELLED)
        ).first() is not None

    def get(self, message_id: uuid.UUID, *, for_update: bool = False):
        statement = sa.select(messages).where(messages.c.id == message_id)
        if for_update:
            statement = statement.with_for_update()
        return self._c.execute(statement).first()

    def next_due_at(self) -> datetime | None:
        return self._c.execute(sa.select(sa.func.min(messages.c.due_at)).where(
            messages.c.status == PENDING)).scalar()


def _dialect_insert(connection: Connection):
    return (postgresql if connection.dialect.name == "postgresql" else sqlite).insert


def _of_kinds(appointment_id: str, kinds: tuple[str, ...]):
    """An appointment's messages of these kinds, and the fallback emails standing for its SMS
    of these kinds (found through `fallback_of`): a fallback carries its SMS's text, so what
    makes the SMS stale (a new time, a form come back) makes it stale too."""
    original = messages.alias("original")
    return sa.or_(messages.c.kind.in_(kinds), sa.and_(
        messages.c.kind == SMS_FALLBACK,
        messages.c.fallback_of.in_(sa.select(original.c.id).where(
            original.c.appointment_id == appointment_id, original.c.kind.in_(kinds)))))


def _not_yet_sent():
    return sa.or_(messages.c.status == PENDING,
                  sa.and_(messages.c.status == SENDING, messages.c.sending_at.is_(None)))


def _opted_out_sms():
    opted_out = sa.select(opt_outs.c.phone).where(opt_outs.c.opted_out.is_(True))
    return sa.and_(messages.c.channel == "sms", messages.c.to_address.in_(opted_out))


def _about_an_appointment_that_is_over():
    def appointments(statuses):
        return sa.select(appointment_states.c.appointment_id).where(
            appointment_states.c.status.in_(sorted(statuses)))
    return sa.or_(
        sa.and_(messages.c.kind.in_(sorted(ABOUT_A_COMING_APPOINTMENT)),
                messages.c.appointment_id.in_(appointments(FINISHED_APPOINTMENT))),
        sa.and_(messages.c.kind == SMS_FALLBACK,
                messages.c.appointment_id.in_(appointments(CALLED_OFF))))


def cancel_unwanted(connection: Connection, now: datetime) -> int:
    """Due messages that must not go, cancelled with the reason: SMS to a number that replied
    STOP (a check-in then goes by email, `policy.checkin_by_email_instead`), a reminder
    overtaken by a later one, and messages about an appointment that is over
    (`model.delivery`). Set-wise statements a round rather than a query per message;
    `claim_due` skips opted-out and finished ones too, so one that falls due between the two
    is not sent either."""
    due = sa.and_(messages.c.status == PENDING, messages.c.due_at <= now)
    checkins = connection.execute(
        sa.select(messages, contacts.c.email, contacts.c.email_ok)
        .outerjoin(contacts, contacts.c.patient_id == messages.c.patient_id)
        .where(due, _opted_out_sms(), messages.c.kind == "checkin")).all()
    cancelled = connection.execute(messages.update().where(due, _opted_out_sms()).values(
        status=CANCELLED, error="opted out of SMS", updated_at=now)).rowcount
    repository = MessageRepository(connection, FixedClock(now))
    for row in checkins:
        by_email = checkin_by_email_instead(
            row.due_at, row.appointment_id, row.patient_id, json.loads(row.context),
            row.dedupe_key, {"email": row.email, "email_ok": row.email_ok})
        if by_email is not None:
            repository.schedule(by_email)
    superseded = _superseded_reminders(connection, now)
    for start in range(0, len(superseded), _IDS_PER_STATEMENT):
        cancelled += connection.execute(messages.update().where(
            due, messages.c.id.in_(superseded[start:start + _IDS_PER_STATEMENT]),
        ).values(status=CANCELLED, error="superseded by a later reminder",
                 updated_at=now)).rowcount
    return cancelled + connection.execute(messages.update().where(
        due, _about_an_appointment_that_is_over(),
    ).values(status=CANCELLED, error="appointment no longer coming", updated_at=now)).rowcount


# Ids bound per statement: PostgreSQL takes at most 65,535 parameters in one.
_IDS_PER_STATEMENT = 1000


def _superseded_reminders(connection: Connection, now: datetime) -> list:
    """Reminders found due together with a later one for the same appointment and channel
    (the workers were down across both times): only the later goes, not two in a row.

    Ranked in one pass over the due reminders (a window), read first and cancelled by id:
    after a burst the table's statistics are stale, and a correlated EXISTS, or an IN over the
    ranking, was planned as the due rows joined with themselves (3,000 due reminders took
    1.5 s a round, every round, until the backlog was gone)."""
    ranked = sa.select(
        messages.c.id,
        sa.func.row_number().over(
            partition_by=(messages.c.appointment_id, messages.c.channel),
            order_by=(messages.c.due_at.desc(), messages.c.id.desc())).label("newest"),
    ).where(messages.c.kind == "reminder", messages.c.status == PENDING,
            messages.c.due_at <= now, messages.c.appointment_id.is_not(None)).subquery()
    return list(connection.execute(
        sa.select(ranked.c.id).where(ranked.c.newest > 1)).scalars())


def claim_due(connection: Connection, now: datetime, limit: int, lease: timedelta,
              token: uuid.UUID, channel: str | None = None) -> list[ClaimedMessage]:
    """Take up to `limit` due messages for this worker: pending -> sending, with a lease.

    `FOR UPDATE SKIP LOCKED` lets any number of workers claim side by side without waiting on
    or double-claiming each other's rows (SQLite has one writer, so needs no such clause).
    `token` marks the claim as this worker's: a worker whose lease ran out and was taken over
    can no longer record anything for the message. Messages `cancel_unwanted` would cancel
    are left for it.
    """
    pick = (sa.select(messages.c.id)
            .where(messages.c.status == PENDING, messages.c.due_at <= now,
                   sa.not_(_opted_out_sms()), sa.not_(_about_an_appointment_that_is_over()))
            .order_by(messages.c.due_at).limit(limit))
    if channel:
        pick = pick.where(messages.c.channel == channel)
    return _take(connection, pick, now, lease, token, sending_at=None)


def expired_leases(connection: Connection, now: datetime, limit: int, lease: timedelta,
                   token: uuid.UUID) -> list[ClaimedMessage]:
    """Messages left in `sending` by a worker that died or gave up on an unclear answer:
    claimed again with a new token, so one recovering worker at a time asks the provider
    whether they went before anything is sent a second time."""
    pick = (sa.select(messages.c.id)
            .where(messages.c.status == SENDING, messages.c.lease_until < now)
            .order_by(messages.c.lease_until).limit(limit))
    return _take(connection, pick, now, lease, token)


def _take(connection: Connection, pick, now: datetime, lease: timedelta, token: uuid.UUID,
          **values) -> list[ClaimedMessage]:
    if connection.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    rows = connection.execute(
        messages.update().where(messages.c.id.in_(pick.scalar_subquery()))
        .values(status=SENDING, claim_token=token, lease_until=now + lease, updated_at=now,
                **values)
        .returning(messages)
    ).all()
    return [_claimed(row) for row in sorted(rows, key=lambda r: r.due_at)]


def _claimed(row) -> ClaimedMessage:
    return ClaimedMessage(id=row.id, dedupe_key=row.dedupe_key, kind=row.kind,
                          channel=row.channel, to=row.to_address,
                          appointment_id=row.appointment_id, patient_id=row.patient_id,
                          context=json.loads(row.context), due_at=row.due_at,
                          attempts=row.attempts, sending_at=row.sending_at,
                          provider_status=row.provider_status,
                          sent_text_sha256=row.sent_text_sha256)


def _reserve_slot(connection: Connection, name: str, now: datetime,
                  interval: timedelta) -> datetime:
    """The instant this caller may send, under a cap shared by every worker (GCRA): each
    caller takes the next free slot and moves it on by `interval`, so slots never overlap
    however many ask; the caller waits for its slot rather than asking again. SQLite only
    (its writes are serialised); PostgreSQL's is one upsert in `start_sms_send`."""
    insert_ignoring_duplicates(connection, rate_limits, dict(name=name, next_slot_at=now))
    query = sa.select(rate_limits.c.next_slot_at).where(rate_limits.c.name == name)
    slot = max(connection.execute(query).scalar_one(), now)
    connection.execute(rate_limits.update().where(rate_limits.c.name == name)
                       .values(next_slot_at=slot + interval))
    return slot


# --- the send path: one statement each on PostgreSQL ------------------------------------
# Run through `shared.db.one_statement`, so each costs one round trip: these run around every
# message sent, and with a provider as fast as a local one they bound the rate.

class SentRecord(NamedTuple):
    """A send the provider accepted, to be recorded (`record_sent`) with its event."""
    message_id: uuid.UUID
    provider_id: str | None
    provider_status: str
    event: Event


def start_sms_send(connection: Connection, message_id: uuid.UUID, token: uuid.UUID,
                   now: datetime, lease: timedelta, interval: timedelta,
                   text_sha256: str | None = None) -> tuple[datetime, bool | None]:
    """Take the SMS cap's next slot (`_reserve_slot`) and, when that slot is now, begin the send
    (`begin_send`) in the same statement. The slot, and whether the send began: None when it
    is still to begin, by `begin_send` after waiting for the slot. A send is never begun
    before its wait (a cancellation or STOP during the wait must still find it not begun).

    The cap's row is locked for the whole statement, so the statement never waits for
    anything else: a message row locked by another transaction (a cancellation in progress)
    is skipped, not waited for, and left to `begin_send`. Otherwise every worker's SMS would
    queue behind that one transaction."""
    if connection.dialect.name != "postgresql":
        return _start_in_steps(connection, message_id, token, now, lease, interval, text_sha256)
    slot, begun, free = _START_SMS_SEND.one(connection, _start_parameters(
        message_id, token, now, lease, interval, text_sha256))
    return _started(slot, begun, free, now)


def record_sent_and_start_sms_send(
        connection: Connection, sent: SentRecord, message_id: uuid.UUID, token: uuid.UUID,
        now: datetime, lease: timedelta, interval: timedelta, text_sha256: str | None = None
) -> tuple[datetime, bool | None, bool]:
    """`record_sent` for `sent`, the send this worker made just before, and `start_sms_send`
    for the next, in one statement: a send lane costs one round trip and one commit per SMS
    instead of two. The slot, whether it began, and whether `sent` was recorded.

    Not recorded (False) when another transaction holds its row (a cancellation or STOP
    withdrawing it): as `start_sms_send` skips a locked message row rather than wait under
    the cap's lock, this skips that one, and the caller records it later by `record_sent`.
    Waiting here would stall every worker's SMS behind that one transaction, and could
    deadlock with a reschedule, which withdraws one message and then moves another. Also
    False when the claim on it is gone, and then `record_sent` will find nothing to do."""
    if sent.message_id == message_id:
        raise ValueError("a send is recorded before its message is begun again")
    if connection.dialect.name != "postgresql":
        settled = record_sent(connection, sent.message_id, token, now, sent.provider_id,
                              sent.provider_status, sent.event)
        return (*_start_in_steps(connection, message_id, token, now, lease, interval,
                                 text_sha256), settled)
    slot, begun, free, settled = _RECORD_SENT_AND_START_SMS_SEND.one(connection, dict(
        _start_parameters(message_id, token, now, lease, interval, text_sha256),
        **_record_parameters(sent.message_id, now, sent.provider_id, sent.provider_status,
                             sent.event)))
    return (*_started(slot, begun, free, now), settled)


def _start_in_steps(connection: Connection, message_id: uuid.UUID, token: uuid.UUID,
                    now: datetime, lease: timedelta, interval: timedelta,
                    text_sha256: str | None) -> tuple[datetime, bool | None]:
    """SQLite (one process, so nothing to skip): the same, as steps in one transaction."""
    slot = _reserve_slot(connection, "sms", now, interval)
    if slot > now:
        return slot, None
    return slot, MessageRepository(connection, FixedClock(now)).begin_send(
        message_id, token, lease, text_sha256)


def _start_parameters(message_id: uuid.UUID, token: uuid.UUID, now: datetime,
                      lease: timedelta, interval: timedelta, text_sha256: str | None) -> dict:
    return dict(name="sms", now=now, interval=interval, lease_until=now + lease,
                id=message_id, token=token, digest=text_sha256)


def _started(slot: datetime, begun: bool, free: bool, now: datetime
             ) -> tuple[datetime, bool | None]:
    if slot > now:
        return slot, None               # wait for the slot, then begin
    if begun or free:
        return slot, begun              # False: the claim is gone or the message cancelled
    return slot, None                   # the row was locked: `begin_send` waits for it


# Each SMS runs one of these once, and _RECORD_SENT when it is not recorded by its lane's next
# (`Scheduler._deliver`): straight on the driver (`shared.direct`).
_START_CTES = f"""
    slot AS (     -- one upsert under the row's lock: no slot is handed out twice
        INSERT INTO rate_limits (name, next_slot_at) VALUES (:name, :now + :interval)
        ON CONFLICT (name) DO UPDATE
           SET next_slot_at = greatest(rate_limits.next_slot_at, :now) + :interval
        RETURNING next_slot_at - :interval AS at),
    target AS (
        SELECT id FROM messages WHERE id = :id FOR UPDATE SKIP LOCKED),
    begun AS (
        UPDATE messages
           SET sending_at = :now, lease_until = :lease_until, updated_at = :now,
               attempts = attempts + 1, sent_text_sha256 = :digest
         WHERE id IN (SELECT id FROM target) AND claim_token = :token
           AND status = '{SENDING}' AND withdrawn IS NULL AND (SELECT at FROM slot) <= :now
        RETURNING id)
    SELECT (SELECT at FROM slot), EXISTS (SELECT 1 FROM begun), EXISTS (SELECT 1 FROM target)
"""
# The record of `_record_sent_statement`, as text to go before _START_CTES. Data-modifying
# CTEs run once, whether the final SELECT reads them or not.
_SETTLED_CTES = f"""
    settle_target AS (
        SELECT id FROM messages WHERE id = :message_id FOR UPDATE SKIP LOCKED),
    settled AS (
        UPDATE messages
           SET status = '{SENT}', sent_at = :now, provider_id = :provider_id,
               provider_status = :provider_status, error = NULL, error_code = NULL,
               claim_token = NULL, lease_until = NULL, updated_at = :now
         WHERE id IN (SELECT id FROM settle_target) AND claim_token = :token
           AND status = '{SENDING}'
        RETURNING id),
    announced AS (
        INSERT INTO outbox (event_id, type, subject, body, created_at)
        SELECT :event_event_id, :event_type, :event_subject, :event_body, :event_created_at
          FROM settled),
"""
_START_PARAMETERS = (sa.bindparam("now", type_=UTCDateTime),
                     sa.bindparam("lease_until", type_=UTCDateTime),
                     sa.bindparam("interval", type_=sa.Interval),
                     sa.bindparam("id", type_=sa.Uuid), sa.bindparam("token", type_=sa.Uuid),
                     sa.bindparam("digest", type_=sa.String))
_START_COLUMNS = (sa.column("at", UTCDateTime), sa.column("begun", sa.Boolean),
                  sa.column("free", sa.Boolean))
_START_SMS_SEND = DirectStatement(sa.text(f"WITH {_START_CTES}").bindparams(
    *_START_PARAMETERS).columns(*_START_COLUMNS))
_RECORD_SENT_AND_START_SMS_SEND = DirectStatement(sa.text(
    f"WITH {_SETTLED_CTES} {_START_CTES}, EXISTS (SELECT 1 FROM settled)").bindparams(
    *_START_PARAMETERS, sa.bindparam("message_id", type_=sa.Uuid),
    sa.bindparam("provider_id", type_=sa.String),
    sa.bindparam("provider_status", type_=sa.String),
    *(sa.bindparam(f"event_{name}", type_=shared_tables.outbox.c[name].type)
      for name in ("event_id", "type", "subject", "body", "created_at")),
).columns(*_START_COLUMNS, sa.column("settled", sa.Boolean)))


def record_sent(connection: Connection, message_id: uuid.UUID, token: uuid.UUID,
                now: datetime, provider_id: str | None, provider_status: str,
                event: Event) -> bool:
    """The message `sent` and its `notify.message.sent` event in the outbox, together, if the
    claim is still ours: on PostgreSQL one statement, the event's row inserted only when the
    update matched (and not announced to the relay: `_record_sent_statement`)."""
    if connection.dialect.name != "postgresql":
        clock = FixedClock(now)
        settled = MessageRepository(connection, clock).settle(
            message_id, token, status=SENT, sent_at=now, provider_id=provider_id,
            provider_status=provider_status, error=None, error_code=None)
        if settled:
            Outbox(connection, shared_tables.outbox, clock, outbox_channel("notify")).add(event)
        return settled
    (settled,) = _RECORD_SENT.one(connection, dict(
        token=token, **_record_parameters(message_id, now, provider_id, provider_status,
                                          event)))
    return settled == 1


def _record_parameters(message_id: uuid.UUID, now: datetime, provider_id: str | None,
                       provider_status: str, event: Event) -> dict:
    return dict(message_id=message_id, now=now, provider_id=provider_id,
                provider_status=provider_status,
                # No channel: not announced (see _record_sent_statement).
                **outbox_parameters(event, FixedClock(now), None))


def _record_sent_statement() -> sa.Select:
    """WITH settled (the claim's row, set `sent`, RETURNING id), announced (INSERT INTO
    outbox ... FROM settled) SELECT count(*) FROM settled: the event's row only when the
    update matched.

    Without the relay's wake-up (`pg_notify`): run once per SMS, it had every worker's sends
    queue for PostgreSQL's notification lock, held through each commit's flush (dispatch went
    from about 450 to 570 SMS a second without it). `notify.message.sent` is for the record,
    not for a patient waiting: it goes with the relay's next batch, within its one-second
    poll. A failure, which reception acts on, still wakes the relay."""
    now = sa.bindparam("now", type_=UTCDateTime)
    settled = messages.update().where(
        # Not named "id": a parameter named after a column would also be SET by the UPDATE.
        messages.c.id == sa.bindparam("message_id", type_=sa.Uuid),
        messages.c.claim_token == sa.bindparam("token", type_=sa.Uuid),
        messages.c.status == SENDING,
    ).values(
        status=SENT, sent_at=now, provider_id=sa.bindparam("provider_id", type_=sa.String),
        provider_status=sa.bindparam("provider_status", type_=sa.String), error=None,
        error_code=None, claim_token=None, lease_until=None, updated_at=now,
    ).returning(messages.c.id).cte("settled")
    announced = outbox_insert_for_each(shared_tables.outbox, settled,
                                       announce=False).cte("announced")
    return sa.select(sa.func.count()).select_from(settled).add_cte(announced)


_RECORD_SENT = DirectStatement(_record_sent_statement())


def recorded_early_reports(connection: Connection, limit: int = 100
                           ) -> list[tuple[uuid.UUID, str]]:
    """(message id, sid) of reports kept because they came before their sid was recorded, and
    whose sid is recorded now: almost always none, so one read per scheduler round, and
    `EarlyReports.take` (in a transaction) only for what it finds."""
    return [tuple(row) for row in connection.execute(_RECORDED_EARLY_REPORTS,
                                                     {"limit": limit}).all()]


# Built once: building a statement costs more Python than running it, on this path.
_RECORDED_EARLY_REPORTS = (
    sa.select(messages.c.id, early_reports.c.provider_id)
    .join(messages, messages.c.provider_id == early_reports.c.provider_id)
    .distinct().order_by(messages.c.id).limit(sa.bindparam("limit", type_=sa.Integer)))


class ContactRepository:
    def __init__(self, connection: Connection, clock: Clock):
        self._c, self._clock = connection, clock

    def remember(self, patient_id: str | None, contact: dict | None) -> None:
        """Keep the patient's latest contact channels: one upsert per event."""
        if not patient_id or not contact:
            return
        values = dict(phone=contact.get("phone"), email=contact.get("email"),
                      sms_ok=bool(contact.get("sms")), email_ok=bool(contact.get("email_ok")),
                      updated_at=self._clock.now())
        self._c.execute(_dialect_insert(self._c)(contacts).values(patient_id=patient_id, **values)
                        .on_conflict_do_update(index_elements=[contacts.c.patient_id],
                                               set_=values))

    def remember_all(self, contacts_by_patient: dict[str, dict]) -> None:
        """As `remember` for many patients (each once) in one statement."""
        now = self._clock.now()
        rows = [dict(patient_id=patient_id, phone=contact.get("phone"),
                     email=contact.get("email"), sms_ok=bool(contact.get("sms")),
                     email_ok=bool(contact.get("email_ok")), updated_at=now)
                for patient_id, contact in sorted(contacts_by_patient.items(),
                                                  key=lambda item: str(item[0]))
                if patient_id and contact]
        if not rows:
            return
        insert_many(self._c, contacts, rows, lambda insert: insert.on_conflict_do_update(
            index_elements=[contacts.c.patient_id],
            set_={name: getattr(insert.excluded, name) for name in (
                "phone", "email", "sms_ok", "email_ok", "updated_at")}))

    def get(self, patient_id: str):
        return self._c.execute(
            sa.select(contacts).where(contacts.c.patient_id == patient_id)).first()

    def with_phone(self, phone: str):
        return self._c.execute(sa.select(contacts).where(contacts.c.phone == phone)
                               .order_by(contacts.c.updated_at.desc())).first()


class OptOutRepository:
    def __init__(self, connection: Connection, clock: Clock):
        self._c, self._clock = connection, clock

    def set(self, phone: str, opted_out: bool) -> None:
        values = dict(opted_out=opted_out, changed_at=self._clock.now())
        if not insert_ignoring_duplicates(self._c, opt_outs, {"phone": phone, **values}):
            self._c.execute(opt_outs.update().where(opt_outs.c.phone == phone).values(**values))

class AppointmentStates:
    def __init__(self, connection: Connection):
        self._c = connection

    def advance(self, appointment_id: str, status: str, event_time: datetime) -> bool:
        """Apply an appointment event unless a later one was applied already.

        Events for one appointment leave booking in commit order, but two notify workers, or a
        redelivery after a crash, can handle them out of order: a `booked` handled after its
        `cancelled` must not plan reminders again. One upsert that only overwrites an older
        state; the row lock it takes serialises two handlers of the same appointment.
        """
        table = appointment_states
        insert = _dialect_insert(self._c)(table).values(
            appointment_id=appointment_id, status=status, event_time=event_time)
        applied = self._c.execute(insert.on_conflict_do_update(
            index_elements=[table.c.appointment_id],
            set_={"status": insert.excluded.status, "event_time": insert.excluded.event_time},
            where=table.c.event_time <= insert.excluded.event_time,
        ).returning(table.c.appointment_id)).first()
        return applied is not None

    def advance_all(self, changes: list[tuple[str, str, datetime]]) -> set[str]:
        """As `advance` for many appointments (each once) in one statement: the ids applied."""
        if not changes:
            return set()
        table = appointment_states
        return set(insert_many(self._c, table, [
            dict(appointment_id=appointment_id, status=status, event_time=event_time)
            for appointment_id, status, event_time in sorted(changes, key=lambda c: str(c[0]))],
            lambda insert: insert.on_conflict_do_update(
                index_elements=[table.c.appointment_id],
                set_={"status": insert.excluded.status, "event_time": insert.excluded.event_time},
                where=table.c.event_time <= insert.excluded.event_time,
            ).returning(table.c.appointment_id)).scalars())


class EarlyReports:
    def __init__(self, connection: Connection, clock: Clock):
        self._c, self._clock = connection, clock

    def keep(self, provider_id: str, status: str, error_code: str | None) -> None:
        insert_ignoring_duplicates(self._c, early_reports, dict(
            provider_id=provider_id, status=status, error_code=error_code,
            received_at=self._clock.now()))

    def take(self, provider_id: str) -> list:
        return self._c.execute(early_reports.delete().where(
            early_reports.c.provider_id == provider_id).returning(early_reports)).all()


class WebhookReceipts:
    def __init__(self, connection: Connection, clock: Clock):
        self._c, self._clock = connection, clock

    def first_time(self, key: str) -> bool:
        return insert_ignoring_duplicates(self._c, webhook_receipts, dict(
            key=key[:200], received_at=self._clock.now()))


class NotifyUnitOfWork(UnitOfWork):
    def __init__(self, engine: sa.Engine, clock: Clock):
        super().__init__(engine, shared_tables, clock, outbox_channel("notify"))
        self._wake_scheduler = False

    def _open(self, connection: Connection) -> None:
        self.messages = MessageRepository(connection, self.clock)
        self.contacts = ContactRepository(connection, self.clock)
        self.opt_outs = OptOutRepository(connection, self.clock)
        self.receipts = WebhookReceipts(connection, self.clock)
        self.appointments = AppointmentStates(connection)
        self.early_reports = EarlyReports(connection, self.clock)
        self._wake_scheduler = False

    def wake_scheduler(self) -> None:
        """Ask the scheduler to look again when this commits (a message is due now)."""
        self._wake_scheduler = True

    def commit(self) -> None:
        if self._wake_scheduler and self.connection.dialect.name == "postgresql":
            self.connection.execute(sa.select(sa.func.pg_notify(DUE_CHANNEL, "")))
        super().commit()


def message_gauges(connection: Connection, now: datetime) -> dict[str, float]:
    """What an operator alerts on, read at scrape time so every process reports the same: the
    messages waiting and in flight, and how late the oldest overdue one is (0 when none is).
    Only pending and sending rows are counted, through their partial indexes: a count of the
    whole table would scan a million rows on every scrape."""
    counts = {status: connection.execute(sa.select(sa.func.count()).select_from(messages)
                                         .where(messages.c.status == status)).scalar()
              for status in (PENDING, SENDING)}
    oldest_due = connection.execute(sa.select(sa.func.min(messages.c.due_at)).where(
        messages.c.status == PENDING, messages.c.due_at <= now)).scalar()
    return {
        **{f"status:{status}": float(count) for status, count in counts.items()},
        "overdue_seconds": (now - oldest_due).total_seconds() if oldest_due else 0.0,
    }
