"""Alembic environment for booking: run through `clinic db upgrade booking`."""
from alembic import context

from services.booking.db import metadata
from shared.migrations import run_migrations

run_migrations(context, metadata)
