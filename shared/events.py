"""CloudEvents 1.0 in structured JSON mode, the envelope of every message on `clinic.events`.

Built and parsed with the `cloudevents` SDK (pinned exactly in pyproject), which validates the
required attributes; on top of it we require what the contract promises every consumer:
`time`, `subject` and a JSON object as `data`. Anything else is an `InvalidEvent`, which the
consumer dead-letters instead of retrying.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from shared.clock import Clock

CONTENT_TYPE = "application/cloudevents+json"
_FORMAT = JSONFormat()


class InvalidEvent(ValueError):
    """The bytes are not an event this system can act on; retrying will not change that."""


@dataclass(frozen=True)
class Event:
    type: str
    source: str
    subject: str
    data: dict[str, Any]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: datetime = field(default_factory=lambda: datetime.now(UTC))


def new_event(source: str, type: str, subject: Any, data: dict[str, Any], clock: Clock) -> Event:
    return Event(type=type, source=source, subject=str(subject), data=data, time=clock.now())


def encode(event: Event) -> bytes:
    cloud_event = CloudEvent(
        {
            "specversion": "1.0",
            "id": event.id,
            "source": event.source,
            "type": event.type,
            "subject": event.subject,
            "time": event.time.astimezone(UTC),
            "datacontenttype": "application/json",
        },
        event.data,
    )
    return _FORMAT.write(cloud_event)


_REQUIRED = ("specversion", "id", "source", "type", "time", "subject")


def decode(body: bytes | str) -> Event:
    try:
        raw = json.loads(body)
    except (ValueError, TypeError, RecursionError) as error:   # RecursionError: nested deep
        raise InvalidEvent(f"not JSON: {type(error).__name__}: {error}") from error
    if not isinstance(raw, dict):
        raise InvalidEvent("not a JSON object")
    # Checked before the SDK, which would invent a fresh `id` or `time` for a message that has
    # none: an invented id would defeat every idempotent consumer downstream.
    missing = [name for name in _REQUIRED if not raw.get(name)]
    if missing:
        raise InvalidEvent(f"missing attribute(s): {', '.join(missing)}")
    try:
        cloud_event = _FORMAT.read(CloudEvent, body)
    except (BaseCloudEventException, ValueError, TypeError, KeyError) as error:
        raise InvalidEvent(f"not a CloudEvents 1.0 JSON event: {error}") from error
    attributes = cloud_event.get_attributes()
    data = cloud_event.get_data()
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError as error:
            raise InvalidEvent("data is not JSON") from error
    if not isinstance(data, dict):
        raise InvalidEvent("data must be a JSON object")
    time = attributes["time"]
    if not isinstance(time, datetime) or time.tzinfo is None:
        raise InvalidEvent("time must be an RFC 3339 timestamp with an offset")
    try:
        time = time.astimezone(UTC)
    except OverflowError as error:                # "0001-01-01T00:00:00+05:00"
        raise InvalidEvent("time is outside the calendar in UTC") from error
    return Event(
        id=attributes["id"],
        source=attributes["source"],
        type=attributes["type"],
        subject=str(attributes["subject"]),
        time=time,
        data=data,
    )
