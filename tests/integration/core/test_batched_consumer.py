"""The consumer's batches, against the real broker: events that have already arrived reach a
type's batch handler together, in the order they were published, and are acked only after it
returns; a batch that fails is handed over one event at a time, so one bad event is parked on
its own and the rest are handled once each."""
from __future__ import annotations

import socket
import threading
import time

import pika
import psycopg
import sqlalchemy as sa
from kombu import Connection

from shared.clock import SystemClock
from shared.consumer import EventConsumer, OneByOne
from shared.events import encode, new_event
from shared.messaging import dead_letter_queue_name, declare_topology, queue_name

CLOCK = SystemClock()
HAPPENED, OTHER = "test.thing.happened", "test.other.happened"


def _publish(amqp_url: str, bodies: list[tuple[str, bytes]]) -> None:
    """Through pika, an independent client, with confirms; after the queue is declared."""
    with Connection(amqp_url) as connection:
        declare_topology(connection, "test", sorted([HAPPENED, OTHER]))
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    for routing_key, body in bodies:
        channel.basic_publish("clinic.events", routing_key, body,
                              pika.BasicProperties(delivery_mode=2))
    connection.close()


def _depth(amqp_url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def _consume_until(amqp_url: str, handlers, batch_handlers, done, timeout: float = 30.0,
                   consumer: EventConsumer | None = None):
    stop = threading.Event()
    consumer = consumer or EventConsumer(amqp_url, "test", handlers, prefetch=20,
                                         batch_handlers=batch_handlers)
    consumer.stop = stop
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # anything handled twice would show by now
    stop.set()
    thread.join(timeout=10)
    assert done()


def _events(count: int, event_type: str = HAPPENED) -> list:
    return [new_event("/test", event_type, f"a{n}", {"n": n}, CLOCK) for n in range(count)]


def test_waiting_events_reach_the_batch_handler_together_in_order_and_are_acked(amqp_url):
    events = _events(90)
    _publish(amqp_url, [(e.type, encode(e)) for e in events])
    handled, sizes = [], []

    def many(batch):
        sizes.append(len(batch))
        handled.extend(e.id for e in batch)

    _consume_until(amqp_url, {HAPPENED: lambda e: handled.append(e.id)}, {HAPPENED: many},
                   lambda: len(handled) >= 90)

    assert handled == [e.id for e in events]  # each once, in the order published
    assert max(sizes) > 1 and max(sizes) <= 20  # together, never more than the prefetch
    assert _depth(amqp_url, queue_name("test")) == 0  # acked: nothing came back on close


def test_a_failing_batch_is_handled_one_event_at_a_time_and_only_the_bad_one_parked(amqp_url):
    good, other = _events(40), _events(3, OTHER)
    poison = new_event("/test", HAPPENED, "bad", {"n": -1}, CLOCK)
    bodies = [(e.type, encode(e)) for e in good[:15]]
    bodies += [(HAPPENED, b"not a cloud event"), (poison.type, encode(poison))]
    bodies += [(e.type, encode(e)) for e in other]
    bodies += [(e.type, encode(e)) for e in good[15:]]
    _publish(amqp_url, bodies)
    handled, tries = [], []

    def one(event):
        tries.append(event.id)
        if event.data["n"] < 0:
            raise ValueError("cannot handle this one")
        handled.append(event.id)

    def many(events):
        if any(e.data["n"] < 0 for e in events):
            raise ValueError("cannot handle this batch")
        if any(e.type == OTHER for e in events):
            raise OneByOne()
        handled.extend(e.id for e in events)

    _consume_until(amqp_url, {HAPPENED: one, OTHER: one}, {HAPPENED: many, OTHER: many},
                   lambda: len(handled) >= 43 and _depth(
                       amqp_url, dead_letter_queue_name("test")) == 2)

    assert sorted(handled) == sorted(e.id for e in good + other)  # each once
    assert tries.count(poison.id) == 5  # retried to the delivery limit, then parked
    parked = _parked(amqp_url)
    assert sorted(body for body, _ in parked) == sorted([b"not a cloud event", encode(poison)])
    reasons = sorted(headers["x-clinic-error"] for _, headers in parked)
    assert reasons[0].startswith("handler failed on delivery 5: ValueError")
    assert reasons[1].startswith("invalid event")
    assert _depth(amqp_url, queue_name("test")) == 0


def _parked(amqp_url: str) -> list[tuple[bytes, dict]]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel, parked = connection.channel(), []
    while True:
        method, properties, body = channel.basic_get(dead_letter_queue_name("test"),
                                                     auto_ack=True)
        if method is None:
            break
        parked.append((body, properties.headers))
    connection.close()
    return parked


def test_a_batch_is_acked_only_after_its_handler_returns(amqp_url):
    """The connection drops while the first batch is being handled: every event of it comes
    back and is handled again (its effects are idempotent), none is lost."""
    events = _events(60)
    _publish(amqp_url, [(e.type, encode(e)) for e in events])
    handled, batches = [], []

    def many(batch):
        batches.append([e.id for e in batch])
        handled.extend(e.id for e in batch)
        if len(batches) == 1:  # the socket dies before the batch can be acked
            consumer._current_connection.connection.transport.sock.shutdown(socket.SHUT_RDWR)

    consumer = EventConsumer(amqp_url, "test", {HAPPENED: lambda e: handled.append(e.id)},
                             prefetch=20, batch_handlers={HAPPENED: many})
    _consume_until(amqp_url, None, None, lambda: set(handled) == {e.id for e in events},
                   consumer=consumer)

    first = batches[0]
    assert len(first) > 1
    assert all(handled.count(i) == 2 for i in first)  # redelivered: it had not been acked
    assert sorted(set(handled)) == sorted(e.id for e in events)
    assert _depth(amqp_url, queue_name("test")) == 0


def test_a_database_error_is_parked_without_the_values_it_quotes(amqp_url):
    event = _events(1)[0]
    _publish(amqp_url, [(event.type, encode(event))])
    refused = psycopg.errors.UniqueViolation(
        'duplicate key value violates unique constraint "contacts_phone"\n'
        "DETAIL:  Key (phone)=(+447400123456) already exists.")

    def one(_event):
        raise sa.exc.IntegrityError("INSERT INTO contacts ...", None, refused)

    _consume_until(amqp_url, {HAPPENED: one}, {},
                   lambda: _depth(amqp_url, dead_letter_queue_name("test")) == 1)

    [(body, headers)] = _parked(amqp_url)
    assert body == encode(event)
    assert headers["x-clinic-error"] == (
        "handler failed on delivery 5: UniqueViolation (SQLSTATE 23505)")

