"""create_app(config): notify's Flask app. Nothing is built at import time."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import Flask
from prometheus_client.core import GaugeMetricFamily

from services.notify.api import api, webhooks
from services.notify.db import NotifyUnitOfWork, message_gauges, shared_tables
from services.notify.model import QuietHours, parse_offsets, parse_quiet_hours
from services.notify.senders import EmailSender, SmsSender, build_email_sender, build_sms_sender
from services.notify.texts import MessageTexts
from shared.clock import Clock, SystemClock
from shared.config import Config
from shared.db import make_engine
from shared.web import create_service_app


@dataclass(frozen=True)
class NotifyContext:
    """What notify's views, handlers and scheduler need, built once per process."""

    config: Config
    engine: sa.Engine
    clock: Clock
    sms: SmsSender
    email: EmailSender
    texts: MessageTexts = field(repr=False)
    offsets: list[timedelta] = field(default_factory=list)
    quiet: QuietHours | None = None

    @property
    def tz(self) -> ZoneInfo:
        return self.config.tz

    def uow(self) -> NotifyUnitOfWork:
        return NotifyUnitOfWork(self.engine, self.clock)


def bootstrap(config: Config, engine: sa.Engine | None = None, clock: Clock | None = None,
              sms: SmsSender | None = None, email: EmailSender | None = None) -> NotifyContext:
    """Settings that cannot work (a bad REMINDER_OFFSETS, Twilio without credentials) stop the
    process here, at start-up, rather than at the first message."""
    return NotifyContext(
        config=config,
        engine=engine or make_engine(config.database_url("notify")),
        clock=clock or SystemClock(),
        sms=sms or build_sms_sender(config),
        email=email or build_email_sender(config),
        texts=MessageTexts(config.clinic_name, config.clinic_phone, config.clinic_address,
                           config.tz),
        offsets=parse_offsets(config.reminder_offsets),
        quiet=parse_quiet_hours(config.quiet_hours),
    )


def _message_metrics(connection, context: NotifyContext):
    gauges = message_gauges(connection, context.clock.now())
    by_status = GaugeMetricFamily("clinic_messages", "Patient messages waiting or in flight",
                                  labels=["status"])
    for name, value in gauges.items():
        if name.startswith("status:"):
            by_status.add_metric([name.removeprefix("status:")], value)
    yield by_status
    yield GaugeMetricFamily("clinic_messages_overdue_seconds",
                            "How late the oldest due message not yet sent is",
                            value=gauges["overdue_seconds"])


def create_app(config: Config, context: NotifyContext | None = None) -> Flask:
    context = context or bootstrap(config)
    app, smorest = create_service_app("notify", config, context.engine, shared_tables,
                                      extra_metrics=lambda c: _message_metrics(c, context))
    app.extensions["clinic"] = context
    smorest.register_blueprint(api)
    app.register_blueprint(webhooks)
    return app
