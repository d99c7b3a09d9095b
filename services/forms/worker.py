"""forms's background side: its outbox relay and consumers."""
from __future__ import annotations

import threading

from services.forms.db import shared_tables
from services.forms.handlers import HANDLERS
from services.topology import consumed_events
from shared.worker import background_threads, bind


def threads(context, stop: threading.Event) -> list[threading.Thread]:
    return background_threads("forms", context.config.amqp_url, context.engine, shared_tables,
                              context.clock, bind(HANDLERS, context), stop,
                              topology=consumed_events())
