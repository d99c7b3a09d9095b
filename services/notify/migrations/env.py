"""Alembic environment for notify: run through `clinic db upgrade notify`."""
from alembic import context

from services.notify.db import metadata
from shared.migrations import run_migrations

run_migrations(context, metadata)
