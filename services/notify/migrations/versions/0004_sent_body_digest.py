"""the digest of the SMS text handed to the provider

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 00:45:00

Crash recovery looks for a send in doubt in Twilio's message list by its text. It rendered
the text again for that, so a deploy that changed a template (or a context) between the send
and the recovery made the sent text unrecognisable and the message went twice. The SHA-256
of the text is recorded when the send begins, and recovery matches on it (docs/notifier.md,
"Sending exactly once"). A digest, not the text: a text can name a treatment.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("sent_text_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("sent_text_sha256")
