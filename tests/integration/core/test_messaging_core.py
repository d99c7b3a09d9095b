"""The messaging core against the real broker and databases: outbox, relay, consumer, parking."""
from __future__ import annotations

import threading
import time

import pika
import pytest
import sqlalchemy as sa

from shared.clock import SystemClock
from shared.consumer import EventConsumer
from shared.db import (
    UnitOfWork,
    add_shared_tables,
    make_engine,
    outbox_channel,
    outbox_insert_for_each,
    outbox_parameters,
)
from shared.events import decode, new_event
from shared.messaging import (
    OutgoingMessage,
    Publisher,
    PublishFailed,
    dead_letter_queue_name,
    declare_topology,
    queue_name,
)
from shared.outbox import OutboxRelay

CLOCK = SystemClock()


@pytest.fixture
def store(database_url):
    metadata = sa.MetaData()
    tables = add_shared_tables(metadata)
    effects = sa.Table("effects", metadata, sa.Column("event_id", sa.String(64)),
                       sa.Column("n", sa.Integer))
    engine = make_engine(database_url)
    metadata.create_all(engine)
    yield engine, tables, effects
    engine.dispose()


def _write_events(engine, tables, count, subject="a1"):
    events = [new_event("/test", "test.thing.happened", subject, {"n": n}, CLOCK)
              for n in range(count)]
    for event in events:
        with UnitOfWork(engine, tables, CLOCK, outbox_channel("test")) as uow:
            uow.outbox.add(event)
            uow.commit()
    return events


def _pika_channel(amqp_url):
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    return connection, connection.channel()


def _wait_for_consumer(amqp_url, service="test", timeout=20.0):
    """Until the consumer thread has declared its queue and consumes from it: an event
    published before then would find nothing bound to take it."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    deadline = time.monotonic() + timeout
    try:
        while True:
            channel = connection.channel()
            try:
                if channel.queue_declare(queue_name(service), passive=True
                                         ).method.consumer_count:
                    return
            except pika.exceptions.ChannelClosedByBroker:
                pass                                # not declared yet
            else:
                channel.close()
            assert time.monotonic() < deadline, "the consumer never started consuming"
            time.sleep(0.05)
    finally:
        connection.close()


def _drain(channel, queue, expected, timeout=20.0):
    bodies, deadline = [], time.monotonic() + timeout
    while len(bodies) < expected and time.monotonic() < deadline:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        bodies.append((properties, body))
    return bodies


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_relay_publishes_in_commit_order_and_marks_rows(store, amqp_url):
    engine, tables, _ = store
    connection, channel = _pika_channel(amqp_url)
    channel.exchange_declare("clinic.events", "topic", durable=True)
    channel.queue_declare("watch", exclusive=True)
    channel.queue_bind("watch", "clinic.events", "#")
    events = _write_events(engine, tables, 1200)
    relay = OutboxRelay(engine, tables.outbox, Publisher(amqp_url), CLOCK, "test")
    assert relay.leadership.acquire()
    assert relay.publish_pending(batches=2) == 1000     # two batches, pipelined
    assert relay.publish_pending() == 200
    assert relay.publish_pending() == 0
    received = _drain(channel, "watch", 1200)
    assert [decode(body).id for _, body in received] == [e.id for e in events]
    assert all(p.content_type == "application/cloudevents+json" for p, _ in received)
    with engine.connect() as conn:
        pending = conn.execute(sa.select(sa.func.count()).where(
            tables.outbox.c.published_at.is_(None))).scalar()
    assert pending == 0
    relay.close()
    connection.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_row_committed_behind_a_batch_in_flight_still_goes_before_later_events(store,
                                                                                 amqp_url):
    """Outbox ids are given out at insert, not at commit. Appointment A's first event takes
    the lowest id but commits only while the batch after it is in flight; A's second event
    is written after that. A must still be announced first then second."""
    engine, tables, _ = store
    connection, channel = _pika_channel(amqp_url)
    channel.exchange_declare("clinic.events", "topic", durable=True)
    channel.queue_declare("watch", exclusive=True)
    channel.queue_bind("watch", "clinic.events", "#")
    slow = UnitOfWork(engine, tables, CLOCK, outbox_channel("test")).__enter__()
    first = new_event("/test", "test.thing.happened", "appointment-a", {"n": "first"}, CLOCK)
    slow.outbox.add(first)                      # the lowest id, not yet committed
    others = _write_events(engine, tables, 6, subject="others")
    later = []

    class CommitsWhileTheFirstBatchIsInFlight(Publisher):
        def send(self, messages):
            sent = super().send(messages)
            if not later:
                slow.commit()
                slow.__exit__(None, None, None)
                later.extend(_write_events(engine, tables, 1, subject="appointment-a"))
            return sent

    relay = OutboxRelay(engine, tables.outbox, CommitsWhileTheFirstBatchIsInFlight(amqp_url),
                        CLOCK, "test", batch_size=3)
    assert relay.leadership.acquire()
    assert relay.publish_pending() == 8
    order = [decode(body).id for _, body in _drain(channel, "watch", 8)]
    assert sorted(order) == sorted([first.id, later[0].id] + [e.id for e in others])
    assert order.index(first.id) < order.index(later[0].id)
    relay.close()
    connection.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_event_the_broker_refuses_is_never_marked_published(store, amqp_url):
    """A full queue that rejects publishes makes RabbitMQ nack them. With batches in flight
    the relay must mark nothing the broker did not take, and send the rest again later.
    (Quorum queues enforce the length loosely: a message or two beyond it may be taken.)"""
    engine, tables, _ = store
    connection, channel = _pika_channel(amqp_url)
    channel.exchange_declare("clinic.events", "topic", durable=True)
    channel.queue_declare("full", durable=True, arguments={
        "x-queue-type": "quorum", "x-max-length": 1, "x-overflow": "reject-publish"})
    channel.queue_bind("full", "clinic.events", "#")
    events = _write_events(engine, tables, 6)
    relay = OutboxRelay(engine, tables.outbox, Publisher(amqp_url), CLOCK, "test",
                        batch_size=1)
    assert relay.leadership.acquire()

    def published() -> set[str]:
        with engine.connect() as conn:
            return set(conn.execute(sa.select(tables.outbox.c.event_id).where(
                tables.outbox.c.published_at.is_not(None))).scalars())

    with pytest.raises(PublishFailed):
        relay.publish_pending()
    taken = channel.queue_declare("full", passive=True).method.message_count
    queued = {decode(body).id for _, body in _drain(channel, "full", taken)}
    assert len(queued) < len(events)            # the broker refused some
    assert published() <= queued                # and none of those is marked
    channel.queue_delete("full")
    unmarked = len(events) - len(published())
    assert relay.publish_pending() == unmarked
    assert published() == {event.id for event in events}
    relay.close()
    connection.close()


def test_a_batch_whose_channel_closed_before_its_confirm_is_not_confirmed(amqp_url):
    """Two batches in flight: if the channel goes (a broker restart) before the first is
    confirmed, a later channel's confirms must not count for it, however the tags line up."""
    publisher = Publisher(amqp_url)
    message = OutgoingMessage("test.thing.happened", b"{}", "evt-1")
    first = publisher.send([message])
    publisher.close()
    second = publisher.send([message])        # a new channel: its tags start again at 1
    assert second.last_tag == first.last_tag
    with pytest.raises(PublishFailed):
        publisher.confirmed(first)
    publisher.confirmed(second)
    publisher.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_only_one_relay_leads_and_a_standby_takes_over(store, amqp_url):
    engine, tables, _ = store
    first = OutboxRelay(engine, tables.outbox, Publisher(amqp_url), CLOCK, "test")
    second = OutboxRelay(engine, tables.outbox, Publisher(amqp_url), CLOCK, "test")
    assert first.leadership.acquire()
    assert not second.leadership.acquire()
    first.close()  # as when the leader's process dies and its connection drops
    assert second.leadership.acquire()
    second.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_leaders_session_notices_a_dead_peer_in_seconds_not_hours(store, amqp_url):
    """A leader whose host dies without closing its socket must not hold the lock for the
    two hours of TCP's default keepalive: the server is asked to probe this session after
    10 s idle."""
    engine, tables, _ = store
    relay = OutboxRelay(engine, tables.outbox, Publisher(amqp_url), CLOCK, "test")
    try:
        assert relay.leadership.acquire()
        session = relay.leadership._connection
        settings = {name: session.execute(f"SHOW {name}").fetchone()[0] for name in (
            "tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count",
            "tcp_user_timeout")}
        assert settings == {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5",
                            "tcp_keepalives_count": "3", "tcp_user_timeout": "30000"}
    finally:
        relay.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_leader_whose_lock_session_ended_stops_leading_without_waiting_for_work(store,
                                                                                  amqp_url):
    """A busy relay goes from batch to batch without idling: it must still notice, between
    batches, that the server ended its lock's session (and a standby took over)."""
    engine, _, _ = store
    first = OutboxRelay(engine, store[1].outbox, Publisher(amqp_url), CLOCK, "test")
    second = OutboxRelay(engine, store[1].outbox, Publisher(amqp_url), CLOCK, "test")
    assert first.leadership.acquire()
    with engine.begin() as connection:
        ended = connection.execute(sa.text(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_locks WHERE locktype = 'advisory'"
            " AND granted AND database = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())")).scalars().all()
    assert ended == [True]
    assert second.leadership.acquire()
    assert not first.leadership.acquire()
    first.close()
    second.close()


def _run_consumer(amqp_url, handlers, service="test"):
    stop = threading.Event()
    consumer = EventConsumer(amqp_url, service, handlers, stop=stop)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    return stop, thread


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_handler_waiting_out_a_database_outage_keeps_its_delivery(store, amqp_url):
    """The database away for five heartbeat intervals (2 s here, 30 s in production): the
    handler retries in place, the broker connection stays up, and the event is applied once
    on its first delivery, neither counted as failed nor parked."""
    engine, tables, effects = store
    apply = _idempotent_handler(engine, tables, effects)
    back_at = time.monotonic() + 10
    deliveries = []

    def handler(event):
        deliveries.append(event.id)
        if time.monotonic() < back_at:
            raise sa.exc.OperationalError("SELECT 1", {}, Exception("the server is away"))
        apply(event)
    declare_probe = Publisher(amqp_url)
    declare_probe._open()
    declare_topology(declare_probe._connection, "test", ["test.thing.happened"])
    declare_probe.close()
    connection, channel = _pika_channel(amqp_url)
    from shared.events import encode
    event = new_event("/test", "test.thing.happened", "s", {"n": 1}, CLOCK)
    channel.basic_publish("clinic.events", "test.thing.happened", encode(event),
                          pika.BasicProperties(delivery_mode=2))
    counts = []

    class Observed(EventConsumer):       # notes each delivery's count as RabbitMQ gives it
        def _handle_one(self, message, body, event):
            counts.append((message.headers or {}).get("x-delivery-count", 0))
            super()._handle_one(message, body, event)
    stop = threading.Event()
    consumer = Observed(amqp_url, "test", {"test.thing.happened": handler}, stop=stop,
                        heartbeat=2)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        assert _wait_for(lambda: _count(engine, effects) == 1, timeout=30)
        assert set(deliveries) == {event.id}
        assert counts == [0]                 # one delivery, never returned as failed
        assert _drain(channel, dead_letter_queue_name("test"), 1, timeout=1) == []
    finally:
        stop.set()
        thread.join(10)
        connection.close()


def _idempotent_handler(engine, tables, effects):
    def handle(event):
        with UnitOfWork(engine, tables, CLOCK, outbox_channel("test")) as uow:
            if not uow.processed.add("test.effects", event.id):
                return
            uow.connection.execute(effects.insert().values(event_id=event.id,
                                                          n=event.data["n"]))
            uow.commit()
    return handle


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_consumer_applies_each_event_once_even_when_redelivered(store, amqp_url):
    engine, tables, effects = store
    handler = _idempotent_handler(engine, tables, effects)
    stop, thread = _run_consumer(amqp_url, {"test.thing.happened": handler})
    events = _write_events(engine, tables, 20)
    publisher = Publisher(amqp_url)
    relay = OutboxRelay(engine, tables.outbox, publisher, CLOCK, "test")
    _wait_for_consumer(amqp_url)
    relay.publish_pending()
    # Publish the very same rows again, as a relay would after dying before marking them.
    with engine.begin() as conn:
        conn.execute(tables.outbox.update().values(published_at=None))
    relay.publish_pending()
    count = lambda: _count(engine, effects)  # noqa: E731
    assert _wait_for(lambda: count() == 20)
    time.sleep(0.5)
    assert count() == 20
    with engine.connect() as conn:
        seen = {row.event_id for row in conn.execute(sa.select(effects.c.event_id))}
    assert seen == {e.id for e in events}
    stop.set()
    thread.join(10)
    relay.close()


def _count(engine, table):
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_poison_messages_are_parked_with_their_reason_and_do_not_block(store, amqp_url):
    engine, tables, effects = store
    handler = _idempotent_handler(engine, tables, effects)
    connection, channel = _pika_channel(amqp_url)
    declare_probe = Publisher(amqp_url)
    declare_probe._open()
    declare_topology(declare_probe._connection, "test", ["test.thing.happened"])
    declare_probe.close()
    good = [new_event("/test", "test.thing.happened", "s", {"n": n}, CLOCK) for n in range(100)]
    from shared.events import encode
    poison = [b"not json", b"{}", b'{"specversion":"1.0","id":"x","source":"/t",'
              b'"type":"test.thing.happened"}', b"\xff\xfe", b"[1,2,3]",
              b"[" * 100_000 + b"]" * 100_000,     # deeper than the JSON decoder recurses
              b'{"specversion":"1.0","id":"y","source":"/t","type":"test.thing.happened",'
              b'"subject":"s","time":"0001-01-01T00:00:00+05:00","data":{}}']
    bodies = [encode(e) for e in good]
    for index, body in enumerate(poison):
        bodies.insert(index * 20 + 3, body)
    for body in bodies:
        channel.basic_publish("clinic.events", "test.thing.happened", body,
                              pika.BasicProperties(delivery_mode=2))
    stop, thread = _run_consumer(amqp_url, {"test.thing.happened": handler})
    assert _wait_for(lambda: _count(engine, effects) == 100)
    parked = _drain(channel, dead_letter_queue_name("test"), len(poison))
    assert sorted(body for _, body in parked) == sorted(poison)
    assert thread.is_alive()                    # no body brings the consumer down
    for properties, _ in parked:
        assert properties.headers["x-clinic-error"].startswith("invalid event:")
        assert properties.headers["x-clinic-queue"] == queue_name("test")
    stop.set()
    thread.join(10)
    connection.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_handler_that_keeps_failing_is_parked_after_the_delivery_limit(store, amqp_url):
    engine, tables, effects = store
    attempts = []

    def broken(event):
        attempts.append(event.id)
        raise RuntimeError("template missing")

    connection, channel = _pika_channel(amqp_url)
    stop, thread = _run_consumer(amqp_url, {"test.thing.happened": broken})
    _wait_for_consumer(amqp_url)
    event = new_event("/test", "test.thing.happened", "s", {"n": 1}, CLOCK)
    from shared.events import encode
    channel.basic_publish("clinic.events", "test.thing.happened", encode(event),
                          pika.BasicProperties(delivery_mode=2))
    parked = _drain(channel, dead_letter_queue_name("test"), 1)
    assert len(parked) == 1
    assert "RuntimeError: template missing" in parked[0][0].headers["x-clinic-error"]
    assert len(attempts) == 5
    stop.set()
    thread.join(10)
    connection.close()


def test_an_event_published_before_its_consumer_ever_started_waits_in_its_queue(amqp_url):
    """Every worker's publisher declares the whole clinic's queues first: RabbitMQ would
    confirm and drop an event that reaches the exchange before its consumer's queue exists."""
    from services.topology import consumed_events
    from shared.events import encode

    topology = consumed_events()
    event = new_event("/booking", "booking.appointment.booked", "a1", {"n": 1}, CLOCK)
    publisher = Publisher(amqp_url, topology=topology)
    publisher.publish([OutgoingMessage(event.type, encode(event), event.id)])
    publisher.close()
    connection, channel = _pika_channel(amqp_url)
    waiting = channel.queue_declare(queue_name("notify"), passive=True).method.message_count
    assert "booking.appointment.booked" in topology["notify"] and waiting == 1
    _, _, body = channel.basic_get(queue_name("notify"), auto_ack=True)
    assert decode(body).id == event.id
    connection.close()


class CountsBatches(Publisher):
    def __init__(self, url):
        super().__init__(url)
        self.batches = []

    def send(self, messages):
        self.batches.append(len(messages))
        return super().send(messages)


def _run_relay(relay):
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), kwargs={"idle_wait": 0.2})
    thread.start()
    return stop, thread


class CountsLooks(OutboxRelay):
    """A relay that counts its looks at the outbox, for a test to know it has looked once and
    found nothing (is waiting for work) before it writes what only a later look can find."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.looks = 0

    def publish_pending(self, batches=8):
        try:
            return super().publish_pending(batches)
        finally:
            self.looks += 1


def _leading(engine) -> bool:
    """Whether some session holds an advisory lock in this test's database: the relay's
    leadership, seen from outside (its own connection belongs to the relay's thread)."""
    with engine.connect() as connection:
        return connection.execute(sa.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )).scalar_one() == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_trickle_of_events_during_the_linger_goes_out_as_one_batch(store, amqp_url):
    """Lingering after a batch, the relay sends what was committed meanwhile as one batch, not
    one batch (four round trips) per wake-up. 24 events committed one by one, each waking the
    relay, right behind one that went at once: two batches, 1 then 24. (The linger is long
    beside two dozen commits, so every one lands inside it on any machine; should one not,
    the check that nothing went during the writes says so rather than passing.)"""
    engine, tables, _ = store
    publisher = CountsBatches(amqp_url)
    relay = OutboxRelay(engine, tables.outbox, publisher, CLOCK, "test", linger=3.0)
    stop, thread = _run_relay(relay)
    try:
        _write_events(engine, tables, 1)
        assert _wait_for(lambda: publisher.batches == [1], timeout=10), publisher.batches
        trickle = []
        for _ in range(24):
            trickle += _write_events(engine, tables, 1)
        assert publisher.batches == [1], "a wake-up during the linger sent a batch"
        assert _wait_for(lambda: sum(publisher.batches) == 1 + len(trickle), timeout=20), (
            publisher.batches)
    finally:
        stop.set()
        thread.join(10)
    assert publisher.batches == [1, len(trickle)]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_event_committed_without_a_wake_up_goes_at_the_next_poll(store, amqp_url):
    """`notify.message.sent` is stored without `pg_notify` (`announce=False`): the relay,
    told of nothing, still finds it when it looks again (every `idle_wait`). The event is
    written only once the relay leads and has looked and found nothing, so only a later look
    can find it."""
    engine, tables, _ = store
    publisher = CountsBatches(amqp_url)
    relay = CountsLooks(engine, tables.outbox, publisher, CLOCK, "test")
    stop, thread = _run_relay(relay)
    try:
        assert _wait_for(lambda: _leading(engine)), "the relay never took the lead"
        assert _wait_for(lambda: relay.looks >= 1), "the relay never looked at the outbox"
        assert publisher.batches == []
        event = new_event("/test", "test.thing.happened", "a1", {"n": 1}, CLOCK)
        source = sa.select(sa.literal(1).label("one")).cte("source")
        with engine.begin() as connection:
            connection.execute(outbox_insert_for_each(tables.outbox, source, announce=False),
                               outbox_parameters(event, CLOCK, None))
        assert _wait_for(lambda: publisher.batches == [1], timeout=10), publisher.batches
    finally:
        stop.set()
        thread.join(10)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_event_after_a_quiet_spell_goes_at_once_and_one_right_behind_it_lingers(
        store, amqp_url):
    """Lingering only follows a batch: the first event goes at once even with a 30 s linger;
    the next, right behind it, waits for the linger (or for the relay to stop)."""
    engine, tables, _ = store
    publisher = CountsBatches(amqp_url)
    relay = OutboxRelay(engine, tables.outbox, publisher, CLOCK, "test", linger=30.0)
    stop, thread = _run_relay(relay)
    try:
        _write_events(engine, tables, 1)
        assert _wait_for(lambda: publisher.batches == [1], timeout=10), publisher.batches
        _write_events(engine, tables, 1)
        time.sleep(1.0)
        assert publisher.batches == [1]
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()        # the stop ends the linger; nothing waits 30 s
