"""Alembic, driven from code: each service keeps its revisions in `services/<svc>/migrations`,
and `clinic db upgrade` runs them on that service's own database."""
from __future__ import annotations

from importlib import import_module
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig


def alembic_config(service: str, connection: sa.Connection | None = None) -> AlembicConfig:
    package = import_module(f"services.{service}")
    location = Path(package.__file__).parent / "migrations"
    config = AlembicConfig()
    config.set_main_option("script_location", str(location))
    config.attributes["service"] = service
    config.attributes["connection"] = connection
    return config


def upgrade(engine: sa.Engine, service: str, revision: str = "head") -> None:
    with engine.begin() as connection:
        command.upgrade(alembic_config(service, connection), revision)


def run_migrations(context, metadata: sa.MetaData) -> None:
    """The body of every service's `migrations/env.py`."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through `clinic db upgrade`")
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite",
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
