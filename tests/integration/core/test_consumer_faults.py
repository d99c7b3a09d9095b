"""What the consumer does with a message it cannot handle, against the real broker: nothing
is acked unhandled (lost), nothing personal reaches the log, and a shutdown during a
database outage parks nothing."""
from __future__ import annotations

import logging
import threading
import time

import pika
import sqlalchemy as sa
from kombu import Connection

from shared.clock import SystemClock
from shared.consumer import EventConsumer
from shared.events import encode, new_event
from shared.messaging import dead_letter_queue_name, declare_topology, queue_name

CLOCK = SystemClock()
HAPPENED, NEWER = "test.thing.happened", "test.thing.added_later"
PHONE = "+447400123456"


def _publish(amqp_url: str, routing_key: str, body: bytes, headers: dict | None = None,
             bound: tuple[str, ...] = (HAPPENED,)) -> None:
    """Through pika, an independent client, with confirms, after the queue is declared with
    the bindings `bound` (as a worker of the version handling them would declare it)."""
    with Connection(amqp_url) as connection:
        declare_topology(connection, "test", sorted(bound))
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish("clinic.events", routing_key, body,
                          pika.BasicProperties(delivery_mode=2, headers=headers))
    connection.close()


def _depths(amqp_url: str) -> tuple[int, int]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        return tuple(channel.queue_declare(name, passive=True).method.message_count
                     for name in (queue_name("test"), dead_letter_queue_name("test")))
    finally:
        connection.close()


def _parked_reasons(amqp_url: str) -> list[str]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    reasons = []
    try:
        channel = connection.channel()
        while True:
            method, properties, _body = channel.basic_get(dead_letter_queue_name("test"))
            if method is None:
                return reasons
            reasons.append((properties.headers or {}).get("x-clinic-error", ""))
    finally:
        connection.close()


def _run(consumer: EventConsumer, until, timeout: float = 30.0) -> None:
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        time.sleep(0.05)
    consumer.stop.set()
    thread.join(timeout=15)
    assert not thread.is_alive()
    assert until()


def test_an_event_of_a_type_bound_by_a_newer_version_is_parked_not_lost(amqp_url):
    """Mid-deploy: a newer worker bound the queue to a type this one has no handler for.
    Handed back for a worker that knows it; at the delivery limit, parked with the reason."""
    event = new_event("/test", NEWER, "a1", {"n": 1}, CLOCK)
    _publish(amqp_url, NEWER, encode(event), bound=(HAPPENED, NEWER))
    consumer = EventConsumer(amqp_url, "test", {HAPPENED: lambda e: None})

    _run(consumer, lambda: _depths(amqp_url) == (0, 1))

    [reason] = _parked_reasons(amqp_url)
    assert reason.startswith(f"no handler for {NEWER}"), reason


def test_mid_deploy_an_event_of_a_new_type_reaches_the_worker_that_knows_it(amqp_url):
    """An old and a new worker on one queue: the old one hands the new type back, and the new
    one handles it, rather than the old one taking it back again until it is parked."""
    events = [new_event("/test", NEWER, f"a{n}", {"n": n}, CLOCK) for n in range(12)]
    for event in events:
        _publish(amqp_url, NEWER, encode(event), bound=(HAPPENED, NEWER))
    handled = []
    old = EventConsumer(amqp_url, "test", {HAPPENED: lambda e: None}, prefetch=6)
    new = EventConsumer(amqp_url, "test", {HAPPENED: lambda e: None, NEWER: handled.append},
                        prefetch=6)
    threads = [threading.Thread(target=c.run, daemon=True) for c in (old, new)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while len(handled) < len(events) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        old.stop.set()
        new.stop.set()
        for thread in threads:
            thread.join(timeout=15)
    assert sorted(e.id for e in handled) == sorted(e.id for e in events)
    assert _depths(amqp_url) == (0, 0)


def test_a_message_kombu_cannot_decode_is_parked_and_its_body_never_logged(amqp_url,
                                                                           caplog):
    """A compression header kombu does not know: parked with the reason, and the body (which
    carries the patient's phone) not written to any log."""
    event = new_event("/test", HAPPENED, "a1", {"contact": {"phone": PHONE}}, CLOCK)
    _publish(amqp_url, HAPPENED, encode(event), headers={"compression": "application/x-nope"})
    handled = []
    consumer = EventConsumer(amqp_url, "test", {HAPPENED: handled.append})

    with caplog.at_level(logging.DEBUG):
        _run(consumer, lambda: _depths(amqp_url) == (0, 1))

    assert handled == []
    [reason] = _parked_reasons(amqp_url)
    assert reason.startswith("invalid event: undecodable"), reason
    assert PHONE not in caplog.text


def test_stopping_during_a_database_outage_parks_nothing(amqp_url):
    """A message on its last allowed delivery meets a database outage as the worker stops:
    the handler never failed on its own, so the message goes back to the queue, not to the
    dead letters as "handler failed"."""
    event = new_event("/test", HAPPENED, "a1", {"n": 1}, CLOCK)
    _publish(amqp_url, HAPPENED, encode(event))
    deliveries = []
    consumer = EventConsumer(amqp_url, "test", {})

    def handler(_event):
        deliveries.append(1)
        if len(deliveries) < 5:
            raise ValueError("a bug, fixed in the next release")
        consumer.stop.set()         # SIGTERM arrives while the database is away
        raise sa.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("database away"))

    consumer.handlers = {HAPPENED: handler}
    _run(consumer, lambda: len(deliveries) >= 5)

    assert not [r for r in _parked_reasons(amqp_url) if r.startswith("handler failed")]
    deadline = time.monotonic() + 10
    while _depths(amqp_url) != (1, 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _depths(amqp_url) == (1, 0)      # back in the queue, for the next worker
