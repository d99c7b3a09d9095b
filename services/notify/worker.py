"""notify's background side: its outbox relay and consumers."""
from __future__ import annotations

import threading

from services.notify.db import shared_tables
from services.notify.handlers import HANDLERS
from shared.worker import background_threads, bind


def threads(context, stop: threading.Event) -> list[threading.Thread]:
    return background_threads("notify", context.config.amqp_url, context.engine, shared_tables,
                              context.clock, bind(HANDLERS, context), stop)
