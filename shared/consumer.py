"""The consuming side: one quorum queue per service, one handler per event type.

A handler gets a decoded `Event` and commits its effects together with its
`processed_events` mark; the message is acked only after that. What goes wrong is sorted:
- not a valid CloudEvent: parked at once in the service's dead-letter queue with the reason
  (`x-clinic-error`), never retried;
- the database away: retried in place with backoff, the message held, nothing parked;
- the handler raising: requeued; on the last allowed delivery parked with the reason. The
  queue's own `x-delivery-limit` is the backstop for a message that kills the worker, which
  RabbitMQ then parks with `x-death` reason `delivery_limit`.

A service may also register a batch handler for a type: consecutive events of that type that
have already arrived (up to the prefetch) are then handled in one transaction, and acked
after it commits. A burst (the relay catching up after an outage, a busy morning) then costs
a few statements per batch instead of a transaction per event. A batch handler is
all-or-nothing: if it raises, or declines with `OneByOne`, its events are handled one at a
time by the ordinary handler, with the ordinary retries and parking.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from kombu import Connection, Producer
from kombu.mixins import ConsumerMixin

from shared.db import describe_error
from shared.events import Event, InvalidEvent, decode
from shared.logging import get_logger
from shared.messaging import (
    DELIVERY_LIMIT,
    dead_letter_exchange,
    declare_topology,
    queue_name,
    service_queue,
)

log = get_logger("consumer")

Handler = Callable[[Event], None]
BatchHandler = Callable[[list[Event]], None]

# How long a consumer holding undelivered-to-handler messages waits for one more before it
# handles what it has: a burst fills a batch, a lone booking is barely delayed.
BATCH_WAIT_SECONDS = 0.005
# How long an event of a type this worker has no handler for is held before it is handed back.
UNHANDLED_PAUSE_SECONDS = 1.0


class Arrived(NamedTuple):
    """A message this service handles, with its body and the event decoded from it."""
    message: Any
    body: bytes
    event: Event


class Stopping(Exception):
    """The worker is stopping while the database is away: the event was not handled, and
    that is no fault of the event's."""


class OneByOne(Exception):
    """Raised by a batch handler that cannot treat these events as one set (for example, two
    of them about one appointment): the consumer then hands them over one at a time."""


def is_infrastructure_error(error: BaseException) -> bool:
    """The database is unreachable or the transaction lost a race: retrying will help."""
    return isinstance(error, sa.exc.OperationalError) or (
        isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated
    )


class EventConsumer(ConsumerMixin):
    def __init__(self, url: str, service: str, handlers: Mapping[str, Handler],
                 prefetch: int = 50, stop: threading.Event | None = None,
                 batch_handlers: Mapping[str, BatchHandler] | None = None,
                 heartbeat: float = 30):
        self.connection = Connection(
            url, heartbeat=heartbeat, transport_options={"confirm_publish": True}
        )
        self._heartbeat = heartbeat
        self.service = service
        self.handlers = dict(handlers)
        self.batch_handlers = dict(batch_handlers or {})
        self.prefetch = prefetch
        self._arrived: list = []  # messages received, not yet handled (batching only)
        self.stop = stop or threading.Event()
        # memory:// keeps no delivery count: counted here. Not on RabbitMQ, where an entry
        # for a message another worker then handled would never be dropped.
        self._counts_locally = url.startswith("memory")
        self._local_attempts: dict[str, int] = {}
        self._current_connection: Connection | None = None

    @property
    def should_stop(self) -> bool:  # ConsumerMixin's loop reads this
        return self.stop.is_set()

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        if value:
            self.stop.set()

    def get_consumers(self, Consumer, channel):
        self._current_connection = channel.connection.client
        self._arrived = []  # from a lost channel: RabbitMQ redelivers them
        declare_topology(self._current_connection, self.service, sorted(self.handlers))
        return [
            Consumer(
                queues=[service_queue(self.service, sorted(self.handlers))],
                on_message=self.on_message,
                prefetch_count=self.prefetch,
                no_ack=False,
            )
        ]

    def consume(self, limit=None, timeout=None, safety_interval=1, **kwargs):
        """ConsumerMixin's loop, except that while messages wait to be handled it waits only
        `BATCH_WAIT_SECONDS` for another before handling them."""
        with self.consumer_context(**kwargs) as (connection, _channel, _consumers):
            while not self.should_stop:
                try:
                    connection.drain_events(
                        timeout=BATCH_WAIT_SECONDS if self._arrived else safety_interval)
                except TimeoutError:
                    connection.heartbeat_check()
                    if self._arrived:
                        self._handle_arrived()
                except OSError:
                    if not self.should_stop:
                        raise
                yield

    def on_message(self, message) -> None:
        if not self.batch_handlers:
            self._take(message)
            return
        self._arrived.append(message)
        if len(self._arrived) >= self.prefetch:
            self._handle_arrived()

    def _handle_arrived(self) -> None:
        """Runs of one batch-handled type together, everything else one at a time, in the
        order the messages arrived."""
        arrived, self._arrived = self._arrived, []
        run: list[Arrived] = []
        for message in arrived:
            taken = self._decoded(message)
            if taken is None:
                continue
            if run and taken.event.type != run[0].event.type:
                self._handle_run(run)
                run = []
            run.append(taken)
        if run:
            self._handle_run(run)

    def _handle_run(self, run: list[Arrived]) -> None:
        event_type = run[0].event.type
        batch = self.batch_handlers.get(event_type)
        if batch is not None and len(run) > 1:
            try:
                batch([taken.event for taken in run])
            except OneByOne:
                pass
            except Exception as error:
                log.warning("batch.failed", type=event_type, size=len(run),
                            error=type(error).__name__)
            else:
                for taken in run:
                    taken.message.ack()
                return
        for taken in run:
            if self.stop.is_set():
                return      # the rest go back to the queue as the channel closes, unspent
            self._handle_one(*taken)

    def on_decode_error(self, message, exc) -> None:
        """kombu could not read the message (a compression it does not know, a body that is
        not what its headers say): parked with the reason, like any unreadable event. kombu's
        own handler acks it, lost, after logging the raw body, which can carry a patient's
        phone number or email."""
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        self.park(message, body, f"invalid event: undecodable by kombu ({type(exc).__name__})")

    def _decoded(self, message) -> Arrived | None:
        """The message as `Arrived` if this service handles its event; anything else is parked
        or handed back here."""
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        try:
            event = decode(body)
        except InvalidEvent as error:
            self.park(message, body, f"invalid event: {error}")
            return None
        except Exception as error:   # a body no decoder foresaw: parked, never a dead worker
            self.park(message, body, f"invalid event: undecodable ({type(error).__name__})")
            return None
        if event.type not in self.handlers:
            # Bound to this queue by some version's handlers: mid-deploy, a newer worker's.
            # Handed back, after a pause that gives a worker that knows it its turn (handed
            # back at once, it came straight back here), and parked at the delivery limit with
            # the reason: never acked unhandled, as an event acked here is lost for good.
            self._wait_alive(UNHANDLED_PAUSE_SECONDS)
            self._retry_or_park(message, body, event, lambda attempt: (
                f"no handler for {event.type} in this worker's version (delivery {attempt})"))
            return None
        return Arrived(message, body, event)

    def _take(self, message) -> None:
        taken = self._decoded(message)
        if taken is not None:
            self._handle_one(*taken)

    def _handle_one(self, message, body: bytes, event: Event) -> None:
        handler = self.handlers[event.type]
        try:
            self._handle(handler, event)
        except Stopping:
            # Not acked, requeued or parked: the closing channel hands it back (RabbitMQ may
            # count that return), and a database outage during a shutdown parks nothing.
            return
        except Exception as error:
            log.warning("event.failed", type=event.type, event_id=event.id,
                        error=type(error).__name__)
            detail = describe_error(error)
            self._retry_or_park(message, body, event, lambda attempt: (
                f"handler failed on delivery {attempt}: {detail}"))
            return
        self._local_attempts.pop(event.id, None)
        message.ack()

    def _retry_or_park(self, message, body: bytes, event: Event,
                       reason: Callable[[int], str]) -> None:
        """Requeued for another delivery; parked on the last one allowed, with the reason."""
        attempt = self._attempt(message, event)
        if attempt >= DELIVERY_LIMIT:
            self.park(message, body, reason(attempt)[:1000])
            self._local_attempts.pop(event.id, None)
        else:
            log.info("event.requeued", type=event.type, event_id=event.id, attempt=attempt)
            message.requeue()

    def _handle(self, handler: Handler, event: Event) -> None:
        delay = 0.5
        while True:
            try:
                handler(event)
                return
            except Exception as error:
                if not is_infrastructure_error(error):
                    raise
                if self.stop.is_set():
                    raise Stopping from error
                log.warning("event.retrying", type=event.type, event_id=event.id,
                            error=type(error).__name__, retry_in=delay)
                self._wait_alive(delay)
                delay = min(delay * 2, 15.0)

    def _wait_alive(self, seconds: float) -> None:
        """Wait, sending the broker a heartbeat at least every half interval meanwhile."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and (left := deadline - time.monotonic()) > 0:
            self.stop.wait(min(left, self._heartbeat / 2))
            self._still_here()

    def _still_here(self) -> None:
        """While a handler waits for the database, a heartbeat frame keeps the broker from
        closing the connection. Only sent, not checked: nothing is read from the socket
        meanwhile (reading would deliver the next messages inside this one's retry), so a
        check would count the broker's unread heartbeats as missed and drop the connection
        after two intervals, and the message would count as a failed delivery and, after a
        few minutes of outage, be parked. A connection really lost shows at the ack."""
        client = self._current_connection
        send = getattr(getattr(client, "connection", None), "send_heartbeat", None)
        if send is None:                    # memory://, or not connected
            return
        try:
            send()
        except Exception as error:
            log.warning("broker.heartbeat_failed", error=type(error).__name__)

    def _attempt(self, message, event: Event) -> int:
        """Which delivery this is: RabbitMQ's quorum queues count returns in x-delivery-count;
        the in-process transport does not, so count locally there."""
        count = (message.headers or {}).get("x-delivery-count")
        if count is not None:
            return int(count) + 1
        if not self._counts_locally:        # RabbitMQ's first delivery carries no count
            return 1
        self._local_attempts[event.id] = self._local_attempts.get(event.id, 0) + 1
        return self._local_attempts[event.id]

    def park(self, message, body: bytes, reason: str) -> None:
        """Move a message to the service's dead-letter queue with its reason, then ack it.

        Published (with a confirm on RabbitMQ) before the ack, so a crash in between leaves a
        duplicate in the dead-letter queue, never a lost message.
        """
        headers = dict(message.headers or {})
        headers.update({
            "x-clinic-error": reason,
            "x-clinic-queue": queue_name(self.service),
            "x-clinic-parked-at": datetime.now(UTC).isoformat(),
        })
        channel = self._current_connection.channel()
        try:
            Producer(channel).publish(
                body, exchange=dead_letter_exchange, routing_key=self.service,
                headers=headers, content_type=message.content_type or "application/octet-stream",
                content_encoding=message.content_encoding or "binary", delivery_mode=2,
                serializer=None,
            )
        finally:
            channel.close()
        log.warning("event.parked", queue=queue_name(self.service), reason=reason[:200],
                    message_id=message.properties.get("message_id"))
        message.ack()
