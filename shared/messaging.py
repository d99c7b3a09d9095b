"""The broker side: topology declared idempotently at start-up, and a batch publisher.

On RabbitMQ (kombu's py-amqp transport) the publisher puts the channel in confirm mode once
and pipelines a whole batch before waiting for the broker's acks, instead of one round trip
per message: the batch's frames are encoded by py-amqp's own frame writer into one buffer and
sent with one write. On `memory://` (the embedded default) there is nothing to confirm.
"""
from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import amqp
from amqp import spec
from amqp.method_framing import frame_writer
from amqp.serialization import dumps
from kombu import Connection, Exchange, Queue, binding

EXCHANGE = "clinic.events"
DEAD_LETTER_EXCHANGE = "clinic.dead-letter"
DELIVERY_LIMIT = 5
CONTENT_TYPE = "application/cloudevents+json"

events_exchange = Exchange(EXCHANGE, type="topic", durable=True)
dead_letter_exchange = Exchange(DEAD_LETTER_EXCHANGE, type="direct", durable=True)


def queue_name(service: str) -> str:
    return f"clinic.{service}"


def dead_letter_queue_name(service: str) -> str:
    return f"clinic.{service}.dead"


def service_queue(service: str, routing_keys: list[str]) -> Queue:
    """The service's quorum queue: durable, bounded redeliveries, then parked with `x-death`.

    `at-least-once` dead-lettering keeps a parked message until the dead-letter queue has it,
    and RabbitMQ requires `reject-publish` overflow for it. No priorities, exclusivity,
    auto-delete or global QoS: quorum queues refuse them.
    """
    return Queue(
        queue_name(service),
        bindings=[binding(events_exchange, routing_key=key) for key in routing_keys],
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": service,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


def dead_letter_queue(service: str) -> Queue:
    return Queue(
        dead_letter_queue_name(service),
        exchange=dead_letter_exchange,
        routing_key=service,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


def declare_topology(connection: Connection, service: str | None = None,
                     routing_keys: list[str] | None = None) -> None:
    """Declare the exchange and, for a consuming service, its queue and parking queue.

    Safe to run on every start: declaring what exists with the same arguments is a no-op.
    """
    channel = connection.channel()
    try:
        events_exchange(channel).declare()
        if service:
            dead_letter_exchange(channel).declare()
            dead_letter_queue(service)(channel).declare()
            service_queue(service, routing_keys or [])(channel).declare()
    finally:
        channel.close()


@dataclass(frozen=True)
class OutgoingMessage:
    routing_key: str
    body: bytes
    message_id: str
    headers: dict | None = None


class InFlight(NamedTuple):
    """A sent batch: the channel it went out on and its last delivery tag."""
    channel: int
    last_tag: int


class PublishFailed(Exception):
    """The broker refused (nacked) or did not confirm a batch; nothing in it counts as sent."""


class _FrameBuffer:
    """Stands in for py-amqp's transport while a batch is encoded: its frames, in order."""

    def __init__(self):
        self.frames = bytearray()

    def write(self, frame) -> None:
        self.frames += frame  # a copy: py-amqp hands over a view of a buffer it reuses


_FRAME_END = b"\xce"
# content-type, content-encoding, headers, delivery-mode, message-id (AMQP 0-9-1 basic class)
_PUBLISH_PROPERTY_FLAGS = 0x8000 | 0x4000 | 0x2000 | 0x1000 | 0x0080


def _shortstr(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError("an AMQP short string holds at most 255 bytes")
    return bytes((len(raw),)) + raw


class _PublishFrames:
    """The frames `basic_publish` sends for a persistent event without headers, byte for byte
    as py-amqp's `frame_writer` encodes them (tests/unit/core compares the two).

    Every such event carries the same properties but its id, so they are encoded once per
    connection, and the method frame once per routing key: py-amqp's generic encoding of
    each message was a third of the relay's time.
    """

    def __init__(self, channel_id: int, frame_max: int):
        self._channel = channel_id
        self._chunk = frame_max - 8
        self._properties = (struct.pack(">H", _PUBLISH_PROPERTY_FLAGS) + _shortstr(CONTENT_TYPE)
                            + _shortstr("utf-8") + struct.pack(">I", 0) + b"\x02")
        self._methods: dict[str, bytes] = {}

    def add(self, out: bytearray, routing_key: str, body: bytes, message_id: str) -> None:
        method = self._methods.get(routing_key)
        if method is None:              # a handful of event types
            payload = struct.pack(">HH", *spec.Basic.Publish) + dumps(
                "Bssbb", (0, EXCHANGE, routing_key, False, False))
            method = self._frame(1, payload)
            self._methods[routing_key] = method
        out += method
        out += self._frame(2, struct.pack(">HHQ", spec.Basic.Publish[0], 0, len(body))
                           + self._properties + _shortstr(message_id))
        for start in range(0, len(body), self._chunk):
            out += self._frame(3, body[start:start + self._chunk])

    def _frame(self, kind: int, payload: bytes) -> bytes:
        return struct.pack(">BHI", kind, self._channel, len(payload)) + payload + _FRAME_END


class Publisher:
    """Publishes batches to `clinic.events`; returns only when every message is confirmed.

    `topology` ({service: routing keys it consumes}) is declared on every connect, before the
    first publish: an event routed to no queue is confirmed and dropped by RabbitMQ, so the
    consumers' queues must exist before any event goes out, whichever worker starts first.
    """

    def __init__(self, url: str, confirm_timeout: float = 30.0,
                 topology: Mapping[str, Sequence[str]] | None = None):
        self._url = url
        self._topology = dict(topology or {})
        self._confirm_timeout = confirm_timeout
        self._connection: Connection | None = None
        self._channel = None
        self._next_tag = 0
        self._confirmed_up_to = 0
        self._nacked = False
        self._acked: set[int] = set()
        self._batch: _FrameBuffer | None = None
        self._encode = None
        self._frames: _PublishFrames | None = None
        self._channel_number = 0        # which channel this is, since the publisher was made
        self._publish_arguments: dict[str, bytes] = {}

    @property
    def confirms(self) -> bool:
        return not self._url.startswith("memory")

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:  # closing a dead connection may raise; it is gone either way
                pass
        self._connection = self._channel = None

    def _open(self) -> None:
        if self._connection is not None and self._connection.connected:
            return
        self.close()
        self._connection = Connection(self._url, heartbeat=0, connect_timeout=5)
        self._connection.ensure_connection(max_retries=1)
        declare_topology(self._connection)
        for service, routing_keys in self._topology.items():
            if routing_keys:
                declare_topology(self._connection, service, list(routing_keys))
        self._channel = self._connection.channel()
        if self.confirms:
            self._batch = _FrameBuffer()
            self._encode = frame_writer(self._connection.connection, self._batch)
            self._frames = _PublishFrames(self._channel.channel_id,
                                          self._connection.connection.frame_max)
            self._channel.confirm_select()
            self._channel.events["basic_ack"].add(self._on_ack)
            self._channel.events["basic_nack"].add(self._on_nack)
            self._next_tag = self._confirmed_up_to = 0
            self._acked = set()
            self._nacked = False
        self._channel_number += 1

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        # Tags are sequential per channel; acks may arrive out of order only when not
        # `multiple`, so track a contiguous watermark plus stragglers.
        if multiple:
            self._confirmed_up_to = max(self._confirmed_up_to, delivery_tag)
            self._acked = {t for t in self._acked if t > self._confirmed_up_to}
        else:
            self._acked.add(delivery_tag)
        while self._confirmed_up_to + 1 in self._acked:
            self._confirmed_up_to += 1
            self._acked.discard(self._confirmed_up_to)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._nacked = True

    def publish(self, messages: list[OutgoingMessage]) -> None:
        """Send a batch and return once the broker has confirmed all of it."""
        if messages:
            self.confirmed(self.send(messages))

    def send(self, messages: list[OutgoingMessage]) -> InFlight:
        """Write a batch without waiting for its confirms: pass the answer to `confirmed`.
        Batches sent one after another on one channel reach the queues in that order."""
        self._open()
        if not self.confirms:
            producer = self._connection.Producer(channel=self._channel)
            for message in messages:
                producer.publish(
                    message.body, exchange=events_exchange, routing_key=message.routing_key,
                    content_type=CONTENT_TYPE, content_encoding="utf-8",
                    message_id=message.message_id, headers=message.headers or {},
                    delivery_mode=2,
                )
            return InFlight(self._channel_number, 0)
        self._send_batch(messages)
        self._next_tag += len(messages)
        return InFlight(self._channel_number, self._next_tag)

    def confirmed(self, sent: InFlight) -> None:
        """Wait until the broker has confirmed every message up to `sent`. PublishFailed if
        it did not in time, nacked any message since the channel opened (the caller sends
        the unconfirmed batches again: at least once; a nack of a later batch fails this
        one too, which only adds duplicates), or the channel they went out on is gone (its
        confirms went with it)."""
        if not self.confirms:
            return
        if sent.channel != self._channel_number or self._connection is None:
            raise PublishFailed("the channel closed before the batch was confirmed")
        while self._confirmed_up_to < sent.last_tag and not self._nacked:
            try:
                self._connection.drain_events(timeout=self._confirm_timeout)
            except TimeoutError as error:
                self.close()
                raise PublishFailed("broker did not confirm the batch in time") from error
        if self._nacked:
            self.close()
            raise PublishFailed("broker nacked a message of the batch")

    def _send_batch(self, messages: list[OutgoingMessage]) -> None:
        """The frames `channel.basic_publish` would send, written with one syscall instead of
        one per message, and without its poll of the socket before every message.

        Flow control still holds: when RabbitMQ blocks a publishing connection (memory or disk
        alarm) it stops reading from it, so the write waits in TCP until it is unblocked, as
        every publish did before; the `connection.blocked` notice itself is still announced
        and read, with the confirms, by `drain_events` in `confirmed`.
        """
        channel_id = self._channel.channel_id
        try:
            self._encode_all(channel_id, messages)
            self._connection.connection.transport.write(bytes(self._batch.frames))
        finally:    # a batch that failed half-encoded must not lead the next one
            self._batch.frames.clear()

    def _encode_all(self, channel_id: int, messages: list[OutgoingMessage]) -> None:
        for message in messages:
            if not message.headers:
                self._frames.add(self._batch.frames, message.routing_key, message.body,
                                 message.message_id)
                continue
            arguments = self._publish_arguments.get(message.routing_key)
            if arguments is None:  # a handful of event types: encoded once each
                arguments = dumps("Bssbb", (0, EXCHANGE, message.routing_key, False, False))
                self._publish_arguments[message.routing_key] = arguments
            self._encode(
                1, channel_id, spec.Basic.Publish, arguments,
                amqp.Message(
                    message.body, content_type=CONTENT_TYPE, content_encoding="utf-8",
                    delivery_mode=2, message_id=message.message_id,
                    application_headers=message.headers,
                ),
            )
