"""Running a service's background side: its outbox relay and its consumer, as threads of one
process, stopped together on SIGTERM/SIGINT."""
from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable, Mapping

import sqlalchemy as sa

from shared.clock import Clock
from shared.consumer import EventConsumer
from shared.db import SharedTables
from shared.housekeeping import Housekeeping
from shared.logging import get_logger
from shared.messaging import Publisher
from shared.outbox import OutboxRelay

log = get_logger("worker")


def bind(handlers: Mapping[str, Callable], context) -> dict[str, Callable]:
    """Give every handler its dependencies once, so the consumer only passes the event."""
    return {event_type: functools.partial(handler, context=context)
            for event_type, handler in handlers.items()}


def background_threads(service: str, amqp_url: str, engine: sa.Engine, tables: SharedTables,
                       clock: Clock, handlers: Mapping[str, Callable], stop: threading.Event,
                       extra: list[Callable[[threading.Event], None]] = (),
                       topology: Mapping[str, list[str]] | None = None,
                       batch_handlers: Mapping[str, Callable] | None = None,
                       ) -> list[threading.Thread]:
    """`topology`: every service's consumed event types, declared by the relay before it
    publishes (see `Publisher`)."""
    relay = OutboxRelay(engine, tables.outbox, Publisher(amqp_url, topology=topology), clock,
                        service)
    history = Housekeeping(engine, tables, clock, service)
    loops: list[tuple[str, Callable]] = [("relay", lambda: relay.run(stop)),
                                         ("housekeeping", lambda: history.run(stop))]
    if handlers:
        consumer = EventConsumer(amqp_url, service, handlers, stop=stop,
                                 batch_handlers=batch_handlers)
        loops.append(("consumer", consumer.run))
    loops += [(getattr(loop, "__name__", "loop"), functools.partial(loop, stop)) for loop in extra]
    return [threading.Thread(target=_guarded(service, name, target, stop),
                             name=f"{service}-{name}", daemon=True) for name, target in loops]


def _guarded(service: str, name: str, target: Callable, stop: threading.Event) -> Callable:
    """A loop that dies unexpectedly takes the process down with it (so the supervisor
    restarts it) rather than leaving a half-working worker."""

    def run():
        try:
            target()
        except BaseException:
            log.exception("worker.loop_crashed", service=service, loop=name)
            threading.current_thread().crashed = True
            stop.set()
    return run


def run_until_stopped(threads: list[threading.Thread], stop: threading.Event) -> bool:
    """Until SIGTERM/SIGINT or a loop's crash; whether a loop crashed, so that the process
    can exit non-zero and a supervisor that restarts only failures (systemd's on-failure)
    restarts it."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    for thread in threads:
        thread.start()
    while not stop.wait(0.5):
        pass
    for thread in threads:
        thread.join(timeout=10)
    return any(getattr(thread, "crashed", False) for thread in threads)
