"""Alembic, driven from code: each service keeps its revisions in `services/<svc>/migrations`,
and `clinic db upgrade` runs them on that service's own database."""
from __future__ import annotations

from importlib import import_module
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed


def alembic_config(service: str, connection: sa.Connection | None = None) -> AlembicConfig:
    package = import_module(f"services.{service}")
    location = Path(package.__file__).parent / "migrations"
    config = AlembicConfig()
    config.set_main_option("script_location", str(location))
    config.attributes["service"] = service
    config.attributes["connection"] = connection
    return config


def wait_for_database(engine: sa.Engine, seconds: float = 60.0) -> None:
    """Until the database accepts a connection, for up to `seconds`: a migration started with
    its database (compose, a fresh cluster) must not fail because the server was still
    initialising, which it reports as a refused connection."""
    def connect() -> None:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    Retrying(retry=retry_if_exception_type(sa.exc.OperationalError),
             stop=stop_after_delay(seconds), wait=wait_fixed(1), reraise=True)(connect)


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


class SchemaCheck:
    """Whether the service's database has this code's schema (its Alembic head) or a newer
    one: a rollout whose migration did not run, or ran an older image, must not serve (new
    code on the old tables fails request by request). A newer schema is fine: during a rolling
    update the old pods keep serving on the new, backward-compatible tables."""

    def __init__(self, service: str):
        scripts = ScriptDirectory.from_config(alembic_config(service))
        self._head = scripts.get_current_head()
        self._older = {revision.revision for revision in scripts.walk_revisions()} - {
            self._head}

    def __call__(self, connection: sa.Connection) -> bool:
        try:
            versions = set(connection.execute(
                sa.text("SELECT version_num FROM alembic_version")).scalars())
        except sa.exc.ProgrammingError:     # never migrated: no version table at all
            return False
        except sa.exc.OperationalError:
            if connection.dialect.name == "sqlite":    # SQLite: "no such table"
                return False
            raise
        return bool(versions) and not versions & self._older
