"""Alembic environment for forms: run through `clinic db upgrade forms`."""
from alembic import context

from services.forms.db import metadata
from shared.migrations import run_migrations

run_migrations(context, metadata)
