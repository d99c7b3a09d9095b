"""Notifier ingest: booked events consumed from `clinic.notify` and scheduled (each a
transaction storing the confirmation and reminders with its processed-event mark), against
pika consuming and acking the same messages from an identical quorum queue.

N `booking.appointment.booked` events (booking's shape, about 800 bytes) are published once to
`clinic.events`, which routes a copy to each queue (setup, not timed). Then pika drains its
copy; then the real `EventConsumer` with notify's `HANDLERS` (bound to a context built by
`bootstrap`) drains `clinic.notify`, timed until `processed_events` holds N rows. Both use the
consumer's prefetch (50) and ack one message at a time, from this process.
"""
from __future__ import annotations

import threading
import time

import pika
import psycopg
import sqlalchemy as sa
from kombu import Connection, Queue

from bench import notify_stack as stack
from bench.infra import checkpoint, postgres_databases, rabbitmq_vhost
from bench.relay import WINDOW, WindowedPublisher, booked_events
from bench.report import Goal, Row
from bench.settings import Settings
from services.notify.app import bootstrap
from services.notify.handlers import BATCH_HANDLERS, HANDLERS
from shared.consumer import EventConsumer
from shared.events import encode
from shared.messaging import declare_topology, queue_name, service_queue
from shared.worker import bind

EVENTS = 2000
PREFETCH = 50
RAW_QUEUE = "clinic.bench-raw"
COMMIT, ROLLBACK = object(), object()     # where a captured transaction ended


def _declare_queues(amqp_url: str) -> None:
    """clinic.notify as the worker declares it, and a twin with the same arguments and
    bindings for the pika baseline."""
    keys = sorted(HANDLERS)
    with Connection(amqp_url) as connection:
        declare_topology(connection, "notify", keys)
        notify = service_queue("notify", keys)
        twin = Queue(RAW_QUEUE, bindings=notify.bindings, durable=True,
                     queue_arguments=notify.queue_arguments)
        channel = connection.channel()
        try:
            twin(channel).declare()
        finally:
            channel.close()


def _depths(amqp_url: str) -> tuple[int, int]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        return tuple(channel.queue_declare(name, passive=True).method.message_count
                     for name in (queue_name("notify"), RAW_QUEUE))
    finally:
        connection.close()


def raw_consume(amqp_url: str, count: int) -> float:
    """pika BlockingConnection, basic_consume with prefetch, one basic_ack per message;
    messages per second from connecting to the last ack."""
    started = time.perf_counter()
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    acked = 0
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=PREFETCH)

        def on_message(ch, method, _properties, _body) -> None:
            nonlocal acked
            ch.basic_ack(method.delivery_tag)
            acked += 1

        channel.basic_consume(RAW_QUEUE, on_message)
        deadline = time.monotonic() + 120
        while acked < count:
            connection.process_data_events(time_limit=0.1)
            if time.monotonic() > deadline:
                raise RuntimeError(f"pika consumed {acked} of {count}")
        return acked / (time.perf_counter() - started)
    finally:
        connection.close()


def notifier_consume(env: dict, url: str, count: int, statements: list | None = None
                     ) -> float:
    """The real consumer and handlers; events per second from connecting until
    `processed_events` holds `count` rows. `statements`, if given, receives what the handlers
    sent PostgreSQL: (SQL, parameters) as the driver got them, and COMMIT or ROLLBACK where
    a transaction ended so."""
    context = bootstrap(stack.config(env))
    if statements is not None:
        _record_statements(context.engine, statements)
    stop = threading.Event()
    consumer = EventConsumer(env["AMQP_URL"], "notify", bind(HANDLERS, context),
                             prefetch=PREFETCH, stop=stop,
                             batch_handlers=bind(BATCH_HANDLERS, context))
    started = time.perf_counter()
    thread = threading.Thread(target=consumer.run, name="bench-notify-consumer")
    thread.start()
    try:
        stack.wait_until(lambda: stack.query(url, "SELECT count(*) FROM processed_events")[0][0]
                         >= count, 300, f"{count} events processed", interval=0.05)
        seconds = time.perf_counter() - started
    finally:
        stop.set()
        thread.join(timeout=30)
        context.engine.dispose()
    return count / seconds


def _record_statements(engine, statements: list) -> None:
    @sa.event.listens_for(engine, "before_cursor_execute")
    def _statement(_connection, _cursor, sql, parameters, _context, _executemany):
        statements.append((sql, parameters))

    @sa.event.listens_for(engine, "commit")
    def _commit(_connection):
        statements.append(COMMIT)

    @sa.event.listens_for(engine, "rollback")
    def _rollback(_connection):
        statements.append(ROLLBACK)


def replay(statements: list, count: int) -> float:
    """The notifier's own statements for `count` events, run again on a new notify database
    straight from psycopg (prepared, one connection, committed where the handlers committed)
    with no consumer in front: what this machine's PostgreSQL takes to store them as this
    notifier does (a transaction per batch of up to 50 events, on one connection), with no
    Python work in front of it."""
    with postgres_databases("notify") as urls:
        url = urls["notify"]
        stack.migrate(url)
        checkpoint()
        with psycopg.connect(stack.libpq(url)) as connection:
            cursor = connection.cursor()
            started = time.perf_counter()
            for statement in statements:
                if statement is COMMIT:
                    connection.commit()
                elif statement is ROLLBACK:
                    connection.rollback()
                else:
                    cursor.execute(*statement, prepare=True)
            connection.commit()
            return count / (time.perf_counter() - started)


def measure(settings: Settings) -> list[Row]:
    workdir = settings.workdir / "notify_ingest"
    workdir.mkdir(parents=True, exist_ok=True)
    events = booked_events(EVENTS)
    messages = [(e.type, encode(e), e.id) for e in events]
    with postgres_databases("notify") as urls, rabbitmq_vhost() as amqp_url, \
            stack.TimedTwilio() as twilio, stack.logs_to(workdir / "consumer.log"):
        url = urls["notify"]
        stack.migrate(url)
        env = stack.environment(urls, amqp_url, workdir, twilio)
        _declare_queues(amqp_url)
        published, _ = WindowedPublisher(amqp_url, messages, WINDOW).run()
        stack.wait_until(lambda: _depths(amqp_url) == (EVENTS, EVENTS), 60,
                         f"{EVENTS} events in both queues", interval=0.2)
        checkpoint()
        raw = raw_consume(amqp_url, EVENTS)
        statements: list = []
        ingest = notifier_consume(env, url, EVENTS, statements)
        scheduled = stack.query(url, "SELECT count(*) FROM messages")[0][0]
    database_alone = replay(statements, EVENTS)

    return [
        Row("notify_ingest_vs_raw_consume", ingest, "events/s", raw, Goal("ratio", ">=", 0.5),
            note=f"{EVENTS} booked events consumed by EventConsumer with notify's handlers "
                 f"({scheduled} messages scheduled); baseline: pika consume + ack of the same "
                 f"messages from an identical quorum queue, prefetch {PREFETCH} both"),
        Row("notify_ingest_database_alone", database_alone, "events/s", raw,
            note="the statements the notifier ran for those events, replayed straight from "
                 "psycopg on a new database with no consumer in front (same transactions, one "
                 "connection): PostgreSQL's share of the ingest on this machine; baseline: "
                 "the same pika consume + ack"),
    ]
