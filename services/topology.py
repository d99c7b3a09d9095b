"""Which service consumes which events: the broker topology of the whole clinic.

Each service's queue is bound to the event types in its `HANDLERS`. Every worker declares all
of them before its relay publishes, because RabbitMQ drops an event that reaches the exchange
before its consumer's queue exists: on a first deployment, booking's worker may well start
before notify's.
"""
from __future__ import annotations

from importlib import import_module

from shared.config import SERVICES


def consumed_events() -> dict[str, list[str]]:
    return {service: sorted(import_module(f"services.{service}.handlers").HANDLERS)
            for service in SERVICES}
