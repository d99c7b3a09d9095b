"""create_app(config): booking's Flask app. Nothing is built at import time."""
from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import Flask

from services.booking.api import api, webhooks
from services.booking.db import BookingUnitOfWork, shared_tables
from shared.clock import Clock, SystemClock
from shared.config import Config
from shared.db import make_engine
from shared.web import create_service_app


@dataclass(frozen=True)
class BookingContext:
    """What booking's views, handlers and worker need, built once per process."""

    config: Config
    engine: sa.Engine
    clock: Clock

    @property
    def tz(self) -> ZoneInfo:
        return self.config.tz

    def uow(self) -> BookingUnitOfWork:
        return BookingUnitOfWork(self.engine, self.clock)


def bootstrap(config: Config, engine: sa.Engine | None = None,
              clock: Clock | None = None) -> BookingContext:
    return BookingContext(config, engine or make_engine(config.database_url("booking")),
                          clock or SystemClock())


def create_app(config: Config, context: BookingContext | None = None) -> Flask:
    context = context or bootstrap(config)
    app, smorest = create_service_app("booking", config, context.engine, shared_tables)
    app.extensions["clinic"] = context
    smorest.register_blueprint(api)
    app.register_blueprint(webhooks)
    return app
