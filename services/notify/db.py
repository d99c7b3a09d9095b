"""Notify's tables: the scheduled messages (the schedule lives here, never in memory or in
broker delays), patients' contact channels and opt-outs, the shared SMS rate bucket, and the
webhook receipts that make a retried Twilio callback count once."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from services.notify.model.policy import PlannedMessage
from shared.clock import Clock
from shared.db import (
    UnitOfWork, UTCDateTime, add_shared_tables, insert_ignoring_duplicates, outbox_channel,
)

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
    sa.Column("lease_until", UTCDateTime, nullable=True),
    sa.Column("sending_at", UTCDateTime, nullable=True),
    sa.Column("sent_at", UTCDateTime, nullable=True),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    sa.Column("provider_id", sa.String(64), nullable=True, unique=True),
    sa.Column("provider_status", sa.String(20), nullable=True),
    sa.Column("error_code", sa.String(20), nullable=True),
    sa.Column("error", sa.String(300), nullable=True),
    sa.Column("fallback_of", sa.Uuid, nullable=True),
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

rate_buckets = sa.Table(
    "rate_buckets", metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("tokens", sa.Float, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

webhook_receipts = sa.Table(
    "webhook_receipts", metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
)

PENDING, SENDING, SENT, DELIVERED, FAILED, CANCELLED = (
    "pending", "sending", "sent", "delivered", "failed", "cancelled")


def _json_default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


@dataclass(frozen=True)
class ClaimedMessage:
    id: uuid.UUID
    kind: str
    channel: str
    to: str
    appointment_id: str | None
    patient_id: str | None
    context: dict
    due_at: datetime
    attempts: int
    sending_at: datetime


class MessageRepository:
    def __init__(self, connection: Connection, clock: Clock):
        self._c, self._clock = connection, clock

    def schedule(self, planned: PlannedMessage, fallback_of: uuid.UUID | None = None) -> bool:
        """Store a planned message unless the same one (dedupe key) is stored already."""
        now = self._clock.now()
        return insert_ignoring_duplicates(self._c, messages, dict(
            id=uuid.uuid4(), dedupe_key=planned.dedupe_key, kind=planned.kind,
            channel=planned.channel, to_address=planned.to,
            appointment_id=planned.appointment_id, patient_id=planned.patient_id,
            context=json.dumps(planned.context, default=_json_default),
            due_at=planned.due_at, status=PENDING, attempts=0, fallback_of=fallback_of,
            created_at=now, updated_at=now))

    def cancel_pending(self, appointment_id: str, kinds: tuple[str, ...] | None = None) -> int:
        statement = messages.update().where(
            messages.c.appointment_id == appointment_id, messages.c.status == PENDING)
        if kinds:
            statement = statement.where(messages.c.kind.in_(kinds))
        return self._c.execute(statement.values(
            status=CANCELLED, updated_at=self._clock.now())).rowcount

    def last_sent_to_patient(self, patient_id: str, kind: str) -> datetime | None:
        return self._c.execute(sa.select(sa.func.max(messages.c.created_at)).where(
            messages.c.patient_id == patient_id, messages.c.kind == kind,
            messages.c.status != CANCELLED)).scalar()

    def for_appointment(self, appointment_id: str):
        return self._c.execute(sa.select(messages).where(
            messages.c.appointment_id == appointment_id).order_by(messages.c.created_at)).all()

    def by_provider_id(self, provider_id: str, *, for_update: bool = False):
        statement = sa.select(messages).where(messages.c.provider_id == provider_id)
        if for_update:
            statement = statement.with_for_update()
        return self._c.execute(statement).first()

    def latest_to(self, phone: str, kind: str | None = None):
        statement = sa.select(messages).where(messages.c.to_address == phone,
                                              messages.c.status.in_((SENT, DELIVERED)))
        if kind:
            statement = statement.where(messages.c.kind == kind)
        return self._c.execute(statement.order_by(messages.c.sent_at.desc()).limit(1)).first()

    def update(self, message_id: uuid.UUID, **values) -> None:
        self._c.execute(messages.update().where(messages.c.id == message_id).values(
            updated_at=self._clock.now(), **values))

    def next_due_at(self) -> datetime | None:
        return self._c.execute(sa.select(sa.func.min(messages.c.due_at)).where(
            messages.c.status == PENDING)).scalar()


def claim_due(connection: Connection, now: datetime, limit: int, lease: timedelta,
              channel: str | None = None) -> list[ClaimedMessage]:
    """Take up to `limit` due messages for this worker: pending -> sending, with a lease.

    `FOR UPDATE SKIP LOCKED` lets any number of workers claim side by side without waiting on
    or double-claiming each other's rows (SQLite has one writer, so needs no such clause).
    """
    pick = (sa.select(messages.c.id)
            .where(messages.c.status == PENDING, messages.c.due_at <= now)
            .order_by(messages.c.due_at).limit(limit))
    if channel:
        pick = pick.where(messages.c.channel == channel)
    if connection.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    rows = connection.execute(
        messages.update().where(messages.c.id.in_(pick.scalar_subquery()))
        .values(status=SENDING, sending_at=now, lease_until=now + lease, updated_at=now,
                attempts=messages.c.attempts + 1)
        .returning(messages)
    ).all()
    return [_claimed(row) for row in sorted(rows, key=lambda r: r.due_at)]


def expired_leases(connection: Connection, now: datetime, limit: int) -> list[ClaimedMessage]:
    """Messages left in `sending` by a worker that died: claimed again (lease renewed) so one
    recovering worker at a time asks the provider whether they went."""
    pick = (sa.select(messages.c.id)
            .where(messages.c.status == SENDING, messages.c.lease_until < now)
            .limit(limit))
    if connection.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    rows = connection.execute(
        messages.update().where(messages.c.id.in_(pick.scalar_subquery()))
        .values(lease_until=now + timedelta(minutes=2), updated_at=now)
        .returning(messages)
    ).all()
    return [_claimed(row) for row in rows]


def _claimed(row) -> ClaimedMessage:
    return ClaimedMessage(id=row.id, kind=row.kind, channel=row.channel, to=row.to_address,
                          appointment_id=row.appointment_id, patient_id=row.patient_id,
                          context=json.loads(row.context), due_at=row.due_at,
                          attempts=row.attempts, sending_at=row.sending_at)


class ContactRepository:
    def __init__(self, connection: Connection, clock: Clock):
        self._c, self._clock = connection, clock

    def remember(self, patient_id: str | None, contact: dict | None) -> None:
        if not patient_id or not contact:
            return
        values = dict(phone=contact.get("phone"), email=contact.get("email"),
                      sms_ok=bool(contact.get("sms")), email_ok=bool(contact.get("email_ok")),
                      updated_at=self._clock.now())
        if not insert_ignoring_duplicates(self._c, contacts, {"patient_id": patient_id,
                                                              **values}):
            self._c.execute(contacts.update().where(contacts.c.patient_id == patient_id)
                            .values(**values))

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

    def is_opted_out(self, phone: str) -> bool:
        return bool(self._c.execute(sa.select(opt_outs.c.opted_out).where(
            opt_outs.c.phone == phone)).scalar())


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
        self._wake_scheduler = False

    def wake_scheduler(self) -> None:
        """Ask the scheduler to look again when this commits (a message is due now)."""
        self._wake_scheduler = True

    def commit(self) -> None:
        if self._wake_scheduler and self.connection.dialect.name == "postgresql":
            self.connection.execute(sa.select(sa.func.pg_notify(DUE_CHANNEL, "")))
        super().commit()
