"""Malformed messages on booking's queue are parked with their reason; good ones flow past."""
from __future__ import annotations

import json
import subprocess
from urllib.parse import unquote, urlparse

import pika
import pytest

from tests.e2e.stack import reply_event, wait_until

ALICE_PHONE = "+447400123456"  # a patient of `clinic seed-demo`, with an appointment ahead


def _poison() -> list[bytes]:
    valid = reply_event("+447400999999", "confirm")
    missing_id = {k: v for k, v in valid.items() if k != "id"}
    return [
        b"YES please, see you then",                                     # not JSON
        json.dumps({"phone": "+447400999999", "intent": "confirm"}).encode(),  # not an event
        json.dumps(missing_id).encode(),                                 # no id to dedupe on
        json.dumps({**valid, "specversion": "0.3"}).encode(),            # wrong specversion
        b"\x00\xff\xfe\x80\x81binary\x9f garbage",                        # not even UTF-8
    ]


def _queue_depth(amqp_url: str, queue: str) -> int:
    """Ready plus unacknowledged, as the broker counts them."""
    vhost = unquote(urlparse(amqp_url).path[1:])
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "--no-table-headers",
         "name", "messages"], capture_output=True, text=True, check=True, timeout=60).stdout
    depths = dict(line.split("\t") for line in listing.strip().splitlines())
    return int(depths[queue])


def _has_consumer(channel_of, queue: str) -> bool:
    channel = channel_of()
    try:
        return channel.queue_declare(queue, passive=True).method.consumer_count > 0
    except pika.exceptions.ChannelClosedByBroker:
        return False  # not declared yet
    finally:
        if channel.is_open:
            channel.close()


@pytest.mark.slow
def test_poison_messages_are_parked_with_their_reason_and_the_rest_are_processed(
        booking, amqp_url):
    booking.clinic.worker()
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        wait_until(lambda: _has_consumer(connection.channel, "clinic.booking"), timeout=20,
                   what="the worker to consume clinic.booking")
        alice = booking.api.session.get(f"{booking.api.base_url}/patients",
                                        params={"phone": ALICE_PHONE}, timeout=10).json()[0]
        good = [reply_event(ALICE_PHONE, "confirm", alice["id"])] + [
            reply_event(f"+44740099{n:04d}", "confirm" if n % 2 else "other")
            for n in range(99)]
        poison = _poison()
        # A well-formed event booking's handler cannot apply: retried, then parked too.
        unusable = json.dumps(reply_event(ALICE_PHONE, "cancel", "not-a-uuid")).encode()
        bodies = [json.dumps(event).encode() for event in good]
        for index, body in enumerate([*poison, unusable]):
            bodies.insert(index * 17 + 7, body)
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("clinic.events", "notify.reply.received", body,
                                  pika.BasicProperties(delivery_mode=2))

        processed = lambda: booking.query(  # noqa: E731
            "SELECT event_id FROM processed_events WHERE consumer = 'booking.patient_reply'")
        wait_until(lambda: len(processed()) >= 100, timeout=30, what="100 replies processed")
        assert {row[0] for row in processed()} == {event["id"] for event in good}

        parked = []

        def drain_parked():
            method, properties, body = channel.basic_get("clinic.booking.dead", auto_ack=True)
            if method is not None:
                parked.append((properties, body))
            return len(parked) == len(poison) + 1
        wait_until(drain_parked, timeout=30, what="six parked messages", interval=0.01)
        assert sorted(body for _, body in parked) == sorted([*poison, unusable])
        for properties, body in parked:
            headers = properties.headers or {}
            reason = headers.get("x-clinic-error", "")
            assert headers.get("x-clinic-queue") == "clinic.booking"
            if body == unusable:
                assert reason.startswith("handler failed on delivery 5: ValueError"), reason
            else:
                assert reason.startswith("invalid event:"), reason

        wait_until(lambda: _queue_depth(amqp_url, "clinic.booking") == 0, timeout=20,
                   what="clinic.booking to be empty", interval=0.3)
        # we took all six (the broker refreshes each quorum queue's count on its own timer)
        wait_until(lambda: _queue_depth(amqp_url, "clinic.booking.dead") == 0, timeout=20,
                   what="clinic.booking.dead to be empty", interval=0.3)

        appointments = booking.query(
            "SELECT a.status, a.confirmed FROM appointments a "
            "JOIN patients p ON p.id = a.patient_id WHERE p.phone = %s", ALICE_PHONE)
        assert appointments == [("booked", True)], "Alice's YES confirmed her next appointment"
        announced = [row for row in booking.outbox() if row[1] == "booking.appointment.confirmed"]
        assert len(announced) == 1
    finally:
        connection.close()
