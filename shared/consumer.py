"""The consuming side: one quorum queue per service, one handler per event type.

A handler gets a decoded `Event` and commits its effects together with its
`processed_events` mark; the message is acked only after that. What goes wrong is sorted:
- not a valid CloudEvent: parked at once in the service's dead-letter queue with the reason
  (`x-clinic-error`), never retried;
- the database away: retried in place with backoff, the message held, nothing parked;
- the handler raising: requeued; on the last allowed delivery parked with the reason. The
  queue's own `x-delivery-limit` is the backstop for a message that kills the worker, which
  RabbitMQ then parks with `x-death` reason `delivery_limit`.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import sqlalchemy as sa
from kombu import Connection, Producer
from kombu.mixins import ConsumerMixin

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


def is_infrastructure_error(error: BaseException) -> bool:
    """The database is unreachable or the transaction lost a race: retrying will help."""
    return isinstance(error, sa.exc.OperationalError) or (
        isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated
    )


class EventConsumer(ConsumerMixin):
    def __init__(self, url: str, service: str, handlers: Mapping[str, Handler],
                 prefetch: int = 50, stop: threading.Event | None = None):
        self.connection = Connection(
            url, heartbeat=30, transport_options={"confirm_publish": True}
        )
        self.service = service
        self.handlers = dict(handlers)
        self.prefetch = prefetch
        self.stop = stop or threading.Event()
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
        declare_topology(self._current_connection, self.service, sorted(self.handlers))
        return [
            Consumer(
                queues=[service_queue(self.service, sorted(self.handlers))],
                on_message=self.on_message,
                prefetch_count=self.prefetch,
                no_ack=False,
            )
        ]

    def on_message(self, message) -> None:
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        try:
            event = decode(body)
        except InvalidEvent as error:
            self.park(message, body, f"invalid event: {error}")
            return
        handler = self.handlers.get(event.type)
        if handler is None:
            log.info("event.ignored", type=event.type, event_id=event.id)
            message.ack()
            return
        try:
            self._handle(handler, event)
        except Exception as error:
            attempt = self._attempt(message, event)
            reason = f"handler failed on delivery {attempt}: {type(error).__name__}: {error}"
            log.warning("event.failed", type=event.type, event_id=event.id, attempt=attempt,
                        error=type(error).__name__)
            if attempt >= DELIVERY_LIMIT:
                self.park(message, body, reason[:1000])
                self._local_attempts.pop(event.id, None)
            else:
                message.requeue()
            return
        self._local_attempts.pop(event.id, None)
        message.ack()

    def _handle(self, handler: Handler, event: Event) -> None:
        delay = 0.5
        while True:
            try:
                handler(event)
                return
            except Exception as error:
                if not is_infrastructure_error(error) or self.stop.is_set():
                    raise
                log.warning("event.retrying", type=event.type, event_id=event.id,
                            error=type(error).__name__, retry_in=delay)
                self.stop.wait(delay)
                if self._current_connection is not None:
                    self._current_connection.heartbeat_check()
                delay = min(delay * 2, 15.0)

    def _attempt(self, message, event: Event) -> int:
        """Which delivery this is: RabbitMQ's quorum queues count returns in x-delivery-count;
        the in-process transport does not, so count locally there."""
        count = (message.headers or {}).get("x-delivery-count")
        if count is not None:
            return int(count) + 1
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
