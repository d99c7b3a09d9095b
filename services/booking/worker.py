"""Booking's background side: the outbox relay and the consumer of replies and form events."""
from __future__ import annotations

import threading

from services.booking.app import BookingContext
from services.booking.db import shared_tables
from services.booking.handlers import HANDLERS
from services.topology import consumed_events
from shared.worker import background_threads, bind


def threads(context: BookingContext, stop: threading.Event) -> list[threading.Thread]:
    return background_threads("booking", context.config.amqp_url, context.engine,
                              shared_tables, context.clock, bind(HANDLERS, context), stop,
                              topology=consumed_events())
