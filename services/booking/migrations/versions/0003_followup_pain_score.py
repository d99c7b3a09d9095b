"""a check-in's answer: the pain score the patient texted back

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 00:10:00

A check-in asks "how is your pain, 0-10?"; notify passes the patient's number on
(`notify.reply.received`, intent `score`, with the follow-up's id) and booking keeps it with
the follow-up, where reception sees it beside the appointment and decides on a review.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.db

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("followups") as table:
        table.add_column(sa.Column("pain_score", sa.SmallInteger, nullable=True))
        table.add_column(sa.Column("scored_at", shared.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("followups") as table:
        table.drop_column("scored_at")
        table.drop_column("pain_score")
