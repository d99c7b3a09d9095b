"""create_app(config): forms's Flask app. Nothing is built at import time."""
from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import Flask

from services.forms.api import api
from services.forms.db import FormsUnitOfWork, shared_tables
from shared.clock import Clock, SystemClock
from shared.config import Config
from shared.db import make_engine
from shared.web import create_service_app


@dataclass(frozen=True)
class FormsContext:
    config: Config
    engine: sa.Engine
    clock: Clock

    @property
    def tz(self) -> ZoneInfo:
        return self.config.tz

    def uow(self) -> FormsUnitOfWork:
        return FormsUnitOfWork(self.engine, self.clock)


def bootstrap(config: Config, engine: sa.Engine | None = None,
              clock: Clock | None = None) -> FormsContext:
    return FormsContext(config, engine or make_engine(config.database_url("forms")),
                          clock or SystemClock())


def create_app(config: Config, context: FormsContext | None = None) -> Flask:
    context = context or bootstrap(config)
    app, smorest = create_service_app("forms", config, context.engine, shared_tables)
    app.extensions["clinic"] = context
    smorest.register_blueprint(api)
    return app
