"""a message withdrawn while its send is unresolved

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 20:15:00

A cancellation, a new time or a STOP cannot stop a send already begun: the provider may have
it. When the provider's answer was unclear (a 5xx, a timeout, a crash), recovery asks it
later whether the message went; `withdrawn` says why the message must not then be sent after
all (docs/notifier.md, "Sending exactly once").
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("withdrawn", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("withdrawn")
