"""notify's background side: its outbox relay, its consumer and its scheduler."""
from __future__ import annotations

import threading

from services.notify.db import shared_tables
from services.notify.handlers import BATCH_HANDLERS, HANDLERS
from services.notify.scheduler import Scheduler
from services.topology import consumed_events
from shared.worker import background_threads, bind


def threads(context, stop: threading.Event) -> list[threading.Thread]:
    scheduler = Scheduler(context)
    return background_threads("notify", context.config.amqp_url, context.engine, shared_tables,
                              context.clock, bind(HANDLERS, context), stop,
                              extra=[scheduler.run], topology=consumed_events(),
                              batch_handlers=bind(BATCH_HANDLERS, context))
