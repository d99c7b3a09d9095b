"""The relay's own encoding of a publish is byte for byte what py-amqp's `frame_writer` sends
for the same message, whatever the body's size relative to the frame size (one body frame,
several, none) and whatever the id; so RabbitMQ, and every consumer, sees the same thing."""
from __future__ import annotations

from types import SimpleNamespace

import amqp
import pytest
from amqp import spec
from amqp.method_framing import frame_writer
from amqp.serialization import dumps
from hypothesis import given
from hypothesis import strategies as st

from shared.messaging import CONTENT_TYPE, EXCHANGE, _FrameBuffer, _PublishFrames

FRAME_MAX = 4096


def py_amqp_frames(channel: int, routing_key: str, body: bytes, message_id: str) -> bytes:
    out = _FrameBuffer()
    write = frame_writer(SimpleNamespace(frame_max=FRAME_MAX, bytes_sent=0), out)
    write(1, channel, spec.Basic.Publish,
          dumps("Bssbb", (0, EXCHANGE, routing_key, False, False)),
          amqp.Message(body, content_type=CONTENT_TYPE, content_encoding="utf-8",
                       delivery_mode=2, message_id=message_id, application_headers={}))
    return bytes(out.frames)


def ours(channel: int, routing_key: str, body: bytes, message_id: str) -> bytes:
    out = bytearray()
    _PublishFrames(channel, FRAME_MAX).add(out, routing_key, body, message_id)
    return bytes(out)


@pytest.mark.parametrize("size", [0, 1, 800, FRAME_MAX - 200, FRAME_MAX - 8, FRAME_MAX,
                                  3 * (FRAME_MAX - 8), 3 * (FRAME_MAX - 8) + 1])
def test_the_frames_are_py_amqps_at_every_body_size(size):
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert ours(1, "booking.appointment.booked", body, "evt-1") == py_amqp_frames(
        1, "booking.appointment.booked", body, "evt-1")


@given(channel=st.integers(1, 65535), routing_key=st.from_regex(r"[a-z.]{1,60}", fullmatch=True),
       body=st.binary(max_size=3 * FRAME_MAX), message_id=st.text(max_size=60))
def test_the_frames_are_py_amqps_for_any_message(channel, routing_key, body, message_id):
    assert ours(channel, routing_key, body, message_id) == py_amqp_frames(
        channel, routing_key, body, message_id)


def test_one_encoder_serves_many_messages_and_routing_keys():
    frames = _PublishFrames(1, FRAME_MAX)
    out = bytearray()
    sent = [("booking.appointment.booked", b'{"a":1}', "e1"),
            ("booking.appointment.cancelled", b'{"b":2}', "e2"),
            ("booking.appointment.booked", b'{"c":3}', "e3")]
    for routing_key, body, message_id in sent:
        frames.add(out, routing_key, body, message_id)
    assert bytes(out) == b"".join(py_amqp_frames(1, *message) for message in sent)


def test_an_id_too_long_for_a_short_string_is_refused():
    with pytest.raises(ValueError):
        ours(1, "booking.appointment.booked", b"{}", "x" * 256)
