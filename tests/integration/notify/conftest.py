"""A notifier on a fresh PostgreSQL database, talking to FakeTwilio over HTTP and to aiosmtpd
over SMTP, with a clock the test moves. Events are handed to the registered handlers exactly as
the consumer hands them, and the scheduler is driven a round at a time."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from services.notify.app import bootstrap, create_app
from services.notify.db import claim_due, messages, shared_tables
from services.notify.handlers import HANDLERS
from services.notify.scheduler import Scheduler
from services.notify.senders import SmtpEmail, TwilioSms
from shared.clock import FixedClock
from shared.config import Config
from shared.db import make_engine
from shared.events import Event, decode
from shared.migrations import upgrade
from shared.web import create_token, new_token
from tests.fakes.smtp import FakeSmtp
from tests.fakes.twilio_api import FakeTwilio

CLINIC_NUMBER = "+441632960001"
PHONE = "+447400123456"
EMAIL = "patient@example.org"
PUBLIC_NOTIFY = "https://notify.clinic.example"


@dataclass
class Notifier:
    context: object
    clock: FixedClock
    twilio: FakeTwilio
    smtp: FakeSmtp
    engine: sa.Engine
    token: str
    schedulers: list = field(default_factory=list)

    def handle(self, event: Event) -> None:
        HANDLERS[event.type](event, context=self.context)

    def scheduler(self, **kwargs) -> Scheduler:
        return Scheduler(self.context, **kwargs)

    def claim(self, scheduler: Scheduler, channel: str | None = None) -> list:
        """What `scheduler` claims now, committed: a worker that will be stopped, killed or
        raced at the point the test chooses."""
        with self.context.uow() as uow:
            claimed = claim_due(uow.connection, uow.clock.now(), 10, scheduler.lease,
                                scheduler.token, channel=channel)
            uow.commit()
        return claimed

    def dispatch(self) -> int:
        if not self.schedulers:
            self.schedulers.append(self.scheduler())
        return self.schedulers[0].dispatch_due()

    def rows(self, **where) -> list:
        query = sa.select(messages).order_by(messages.c.due_at, messages.c.kind)
        for name, value in where.items():
            query = query.where(messages.c[name] == value)
        with self.engine.connect() as connection:
            return connection.execute(query).all()

    def published(self, event_type: str | None = None) -> list[Event]:
        with self.engine.connect() as connection:
            bodies = connection.execute(sa.select(shared_tables.outbox.c.body)
                                        .order_by(shared_tables.outbox.c.id)).scalars().all()
        events = [decode(body) for body in bodies]
        return [e for e in events if event_type is None or e.type == event_type]

    def sms_to(self, phone: str = PHONE) -> list[dict]:
        return [m for m in self.twilio.messages if m["to"] == phone]

    def app(self):
        return create_app(self.context.config, self.context)


def notifier_config(**changes) -> Config:
    return Config(
        clinic_name="Riverside Clinic", clinic_phone="01632 960000",
        clinic_address="12 Riverside Walk, Bristol BS1 4SB",
        public_base_url_notify=PUBLIC_NOTIFY, sms_backend="twilio",
        twilio_account_sid="AC" + "1" * 32, twilio_auth_token="secret-token",
        twilio_from_number=CLINIC_NUMBER, sms_max_per_second=1000.0, email_backend="smtp",
        smtp_host="127.0.0.1", email_from="appointments@clinic.example",
        reminder_offsets="48h,2h", quiet_hours="21:00-08:00", testing=True,
    ).with_(**changes)


@pytest.fixture
def notifier_settings():
    """Overridden by a test module to change the configuration."""
    return {}


@pytest.fixture
def notifier(postgres_url, notifier_settings):
    clock = FixedClock("2026-11-26T09:00:00+00:00")
    engine = make_engine(postgres_url)
    upgrade(engine, "notify")
    config = notifier_config(database_urls={"notify": postgres_url}, **notifier_settings)
    # Only the account's number may send, as at Twilio: a text from any other is refused.
    with FakeTwilio(config.twilio_account_sid, config.twilio_auth_token, clock=clock,
                    invalid_numbers={"+447400999999"},
                    from_numbers={CLINIC_NUMBER}) as twilio, FakeSmtp() as smtp:
        sms = TwilioSms(config.twilio_account_sid, config.twilio_auth_token,
                        from_number=CLINIC_NUMBER, api_base_url=twilio.base_url, timeout=3)
        email = SmtpEmail(host=smtp.host, port=smtp.port, sender=config.email_from)
        context = bootstrap(config, engine=engine, clock=clock, sms=sms, email=email)
        token = new_token()
        create_token(engine, shared_tables, "reception-desk", "reception", token, clock.now())
        yield Notifier(context, clock, twilio, smtp, engine, token)
        sms.close()
    engine.dispose()


def contact(phone: str | None = PHONE, email: str | None = EMAIL, sms: bool = True,
            email_ok: bool = True) -> dict:
    return {"phone": phone, "email": email, "sms": sms, "email_ok": email_ok}


def appointment_event(kind: str, appointment_id: str, starts_at: datetime, at: datetime,
                      patient_id: str = "p-1", **extra) -> Event:
    """A `booking.appointment.*` event shaped as booking publishes it (docs/architecture.md)."""
    data = {
        "appointment_id": appointment_id, "patient_id": patient_id,
        "clinician_id": "c-1", "clinician_name": "Dr Amira Shah",
        "treatment": {"code": "TPI", "name": "Trigger point injection",
                      "requires_consent": True},
        "starts_at": starts_at.isoformat(), "ends_at": (starts_at + timedelta(minutes=30))
        .isoformat(), "status": kind, "contact": extra.pop("contact", contact()), **extra,
    }
    return Event(type=f"booking.appointment.{kind}", source="/booking",
                 subject=appointment_id, data=data, time=at, id=str(uuid.uuid4()))


def new_id() -> str:
    return str(uuid.uuid4())


def context_of(row) -> dict:
    return json.loads(row.context)
