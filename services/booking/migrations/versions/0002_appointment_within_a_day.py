"""an appointment lasts at most a day

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 17:55:00

The day list finds a day's appointments on the `starts_at` index between a lower and an upper
bound only because no appointment can have started more than a day before the day it
overlaps; this makes that a guarantee of the database (docs/architecture.md, "Finding a
clinician's time"). PostgreSQL only: the embedded SQLite default keeps the unbounded read.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """One statement, which checks every existing row under the table's lock: a fraction of a
    second for a clinic's appointment book. (Adding it NOT VALID and validating in a second
    transaction would not block meanwhile, but `clinic db upgrade` runs all revisions in one
    transaction, which is worth more here than that.)"""
    if op.get_bind().dialect.name == "postgresql":
        op.create_check_constraint("appointment_within_a_day", "appointments",
                                   "ends_at - starts_at <= interval '24 hours'")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("appointment_within_a_day", "appointments", type_="check")
