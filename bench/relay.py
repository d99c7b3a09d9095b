"""Outbox relay throughput: committed outbox rows on PostgreSQL drained to RabbitMQ with
publisher confirms by `OutboxRelay.publish_pending`, against two pika baselines publishing the
same bodies to the same queue: one confirm per message (what a naive publisher does) and
asynchronous confirms with 1,000 messages in flight (about the best a Python client does).

The queue is a durable quorum queue bound to `clinic.events` with `#`, as the services' own
queues are quorum queues: a confirm then means the message is replicated and on disk.
"""
from __future__ import annotations

import time
import uuid
from collections import deque
from datetime import timedelta

import pika
import sqlalchemy as sa

from bench.infra import postgres_databases, rabbitmq_vhost
from bench.report import Goal, Row
from bench.settings import Settings
from shared.clock import SystemClock
from shared.db import UnitOfWork, add_shared_tables, make_engine, outbox_channel
from shared.events import encode, new_event
from shared.messaging import CONTENT_TYPE, EXCHANGE, Publisher
from shared.outbox import OutboxRelay

QUEUE = "clinic.bench"
WINDOW = 1000
CLOCK = SystemClock()


def booked_events(count: int) -> list:
    """Events shaped like booking's `booking.appointment.booked` (about 800 bytes each)."""
    now = CLOCK.now()
    events = []
    for n in range(count):
        appointment = uuid.uuid4()
        starts = now + timedelta(days=2, minutes=30 * n)
        events.append(new_event("/booking", "booking.appointment.booked", str(appointment), {
            "appointment_id": str(appointment), "patient_id": str(uuid.uuid4()),
            "clinician_id": str(uuid.uuid4()), "clinician_name": "Dr Amira Shah",
            "treatment": {"code": "TPI", "name": "Ultrasound-guided trigger point injection",
                          "requires_consent": True},
            "starts_at": starts.isoformat(),
            "ends_at": (starts + timedelta(minutes=30)).isoformat(),
            "status": "booked", "first_appointment": n % 3 == 0,
            "contact": {"phone": f"+4474001{n % 100000:05d}", "email": f"p{n}@example.org",
                        "sms": True, "email_ok": True},
        }, CLOCK))
    return events


def _write_outbox(engine: sa.Engine, tables, events) -> None:
    """Setup, not measured: every row in one unit of work, inserted as one bulk statement."""
    with UnitOfWork(engine, tables, CLOCK, outbox_channel("bench")) as uow:
        uow.connection.execute(tables.outbox.insert(), [
            {"event_id": e.id, "type": e.type, "subject": e.subject, "body": encode(e),
             "created_at": CLOCK.now()} for e in events
        ])
        uow.commit()


def _declare(amqp_url: str) -> tuple[pika.BlockingConnection, pika.adapters.blocking_connection
                                     .BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.exchange_declare(EXCHANGE, "topic", durable=True)
    channel.queue_declare(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(QUEUE, EXCHANGE, "#")
    return connection, channel


def _depth(channel) -> int:
    return channel.queue_declare(QUEUE, passive=True).method.message_count


def _settle(channel, expected: int, what: str) -> None:
    """Every confirmed message must be in the queue; then empty it for the next run."""
    deadline = time.monotonic() + 30
    while (depth := _depth(channel)) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    if depth != expected:
        raise RuntimeError(f"{what}: {expected} confirmed but {depth} in {QUEUE}")
    channel.queue_purge(QUEUE)


def relay_drain(engine, tables, amqp_url: str) -> tuple[int, float]:
    relay = OutboxRelay(engine, tables.outbox, Publisher(amqp_url), CLOCK, "bench")
    try:
        sent, started = 0, time.perf_counter()
        while batch := relay.publish_pending():
            sent += batch
        return sent, time.perf_counter() - started
    finally:
        relay.close()


def _properties(message_id: str) -> pika.BasicProperties:
    return pika.BasicProperties(content_type=CONTENT_TYPE, content_encoding="utf-8",
                                delivery_mode=2, message_id=message_id)


def confirm_each(amqp_url: str, messages, cap_seconds: float) -> tuple[int, float]:
    """pika BlockingConnection in confirm mode: each publish waits for its own ack."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        sent, started = 0, time.perf_counter()
        stop_at = started + cap_seconds
        for routing_key, body, message_id in messages:
            channel.basic_publish(EXCHANGE, routing_key, body, _properties(message_id))
            sent += 1
            if sent % 100 == 0 and time.perf_counter() > stop_at:
                break
        return sent, time.perf_counter() - started
    finally:
        _close(connection)


def _close(connection) -> None:
    if connection.is_open:
        connection.close()


class WindowedPublisher:
    """pika SelectConnection with asynchronous confirms, at most `window` unconfirmed."""

    def __init__(self, amqp_url: str, messages, window: int):
        self._parameters = pika.URLParameters(amqp_url)
        self._messages, self._window = messages, window
        self._next = 0
        self._unconfirmed: deque[int] = deque()
        self._confirmed = 0
        self.error: str | None = None
        self.started = self.finished = 0.0

    def run(self) -> tuple[int, float]:
        self._connection = pika.SelectConnection(
            self._parameters, on_open_callback=self._on_open,
            on_open_error_callback=self._on_failure, on_close_callback=self._on_closed)
        self._connection.ioloop.start()
        if self.error:
            raise RuntimeError(f"windowed pika publisher: {self.error}")
        return self._confirmed, self.finished - self.started

    def _on_failure(self, _connection, error) -> None:
        self.error = str(error)
        self._connection.ioloop.stop()

    def _on_closed(self, _connection, reason) -> None:
        if self._confirmed < len(self._messages) and not self.error:
            self.error = f"connection closed early: {reason}"
        self._connection.ioloop.stop()

    def _on_open(self, connection) -> None:
        connection.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel) -> None:
        self._channel = channel
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirming)

    def _on_confirming(self, _frame) -> None:
        self.started = time.perf_counter()
        self._publish_more()

    def _publish_more(self) -> None:
        while len(self._unconfirmed) < self._window and self._next < len(self._messages):
            routing_key, body, message_id = self._messages[self._next]
            self._channel.basic_publish(EXCHANGE, routing_key, body, _properties(message_id))
            self._next += 1
            self._unconfirmed.append(self._next)  # delivery tags count from 1 per channel

    def _on_confirm(self, frame) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            self.error = f"broker nacked delivery {method.delivery_tag}"
            self._connection.close()
            return
        if method.multiple:
            while self._unconfirmed and self._unconfirmed[0] <= method.delivery_tag:
                self._unconfirmed.popleft()
                self._confirmed += 1
        else:
            self._unconfirmed.remove(method.delivery_tag)
            self._confirmed += 1
        if self._confirmed == len(self._messages):
            self.finished = time.perf_counter()
            self._connection.close()
        else:
            self._publish_more()


def measure(settings: Settings) -> list[Row]:
    count = settings.outbox_events
    events = booked_events(count)
    messages = [(e.type, encode(e), e.id) for e in events]
    with postgres_databases("relay") as urls, rabbitmq_vhost() as amqp_url:
        engine = make_engine(urls["relay"])
        connection, channel = _declare(amqp_url)
        try:
            metadata = sa.MetaData()
            tables = add_shared_tables(metadata)
            metadata.create_all(engine)
            _write_outbox(engine, tables, events)

            sent, seconds = relay_drain(engine, tables, amqp_url)
            if sent != count:
                raise RuntimeError(f"relay published {sent} of {count}")
            _settle(channel, count, "outbox relay")
            relay_rate = sent / seconds

            sent, seconds = confirm_each(amqp_url, messages, settings.confirm_each_seconds)
            _settle(channel, sent, "pika, confirm per message")
            each_rate = sent / seconds

            sent, seconds = WindowedPublisher(amqp_url, messages, WINDOW).run()
            _settle(channel, sent, "pika, asynchronous confirms")
            windowed_rate = sent / seconds
        finally:
            _close(connection)
            engine.dispose()

    return [
        Row("outbox_relay_vs_confirm_each", relay_rate, "events/s", each_rate,
            Goal("ratio", ">=", 5),
            note=f"{count} rows drained; baseline: pika BlockingConnection, one confirm per "
                 "message"),
        Row("outbox_relay_vs_async_confirms", relay_rate, "events/s", windowed_rate,
            Goal("ratio", ">=", 0.5),
            note=f"baseline: pika SelectConnection, asynchronous confirms, {WINDOW} in flight"),
    ]
