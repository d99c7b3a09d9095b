"""notify's tables and unit of work."""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shared.clock import Clock
from shared.db import UnitOfWork, add_shared_tables, outbox_channel

metadata = sa.MetaData()
shared_tables = add_shared_tables(metadata)


class NotifyUnitOfWork(UnitOfWork):
    def __init__(self, engine: sa.Engine, clock: Clock):
        super().__init__(engine, shared_tables, clock, outbox_channel("notify"))

    def _open(self, connection: Connection) -> None:
        pass
