"""The embedded defaults: record what would be sent and print one line per message.

The printed line carries ids and sizes only, never the body: output goes to the same logs as
everything else, and logs must not hold what the clinic tells a patient.
"""
from __future__ import annotations

import hashlib
import sys
import threading
import uuid
from collections.abc import Callable, Collection
from datetime import datetime
from typing import TextIO

from shared.clock import Clock, SystemClock

from .email import message_id_header
from .result import SendResult


def _masked(address: str) -> str:
    """Enough of a number or address to tell two apart on a developer's screen."""
    if "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:1]}***@{domain}"
    return f"***{address[-3:]}"


class _Recorder:
    def __init__(self, stream: TextIO | None, clock: Clock | None):
        self._stream = stream
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self.sent: list[dict] = []

    def _record(self, entry: dict, line: str) -> None:
        with self._lock:
            self.sent.append(entry)
        # sys.stdout is looked up per message so a redirected or captured stdout is honoured.
        print(line, file=self._stream or sys.stdout, flush=True)

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ConsoleSms(_Recorder):
    def __init__(self, stream: TextIO | None = None, clock: Clock | None = None):
        super().__init__(stream, clock)

    def send_sms(
        self,
        to: str,
        body: str,
        status_callback: str | None,
        idempotency_key: str | None = None,
    ) -> SendResult:
        # Shaped like a Twilio sid so the message log reads the same in development.
        sid = f"SM{uuid.uuid4().hex}"
        entry = {
            "provider_id": sid,
            "to": to,
            "body": body,
            "status_callback": status_callback,
            "idempotency_key": idempotency_key,
            "sent_at": self._clock.now(),
        }
        self._record(entry, f"[console sms] {sid} to {_masked(to)} ({len(body)} chars)")
        return SendResult(provider_id=sid, status="sent")

    def find_sent(self, to: str, sent_after: datetime, body: str | None = None,
                  passing_over: Collection[str] = (), text_sha256: str | None = None
                  ) -> str | None:
        if sent_after.tzinfo is None:
            raise ValueError("find_sent needs an aware datetime")
        with self._lock:
            for entry in self.sent:
                if (
                    entry["to"] == to
                    and entry["provider_id"] not in passing_over
                    and entry["sent_at"] >= sent_after
                    and (body is None or entry["body"] == body)
                    and (text_sha256 is None or hashlib.sha256(
                        entry["body"].encode()).hexdigest() == text_sha256)
                ):
                    return entry["provider_id"]
        return None


class ConsoleEmail(_Recorder):
    def __init__(
        self,
        stream: TextIO | None = None,
        clock: Clock | None = None,
        sender: str = "clinic@example.org",
    ):
        super().__init__(stream, clock)
        self.sender = sender

    def send_email(
        self, to: str, subject: str, text: str, html: str | None, message_id: str | None = None,
        before_final_dot: Callable[[], None] | None = None,
    ) -> SendResult:
        header = message_id_header(message_id, self.sender)
        if before_final_dot is not None:
            before_final_dot()
        entry = {
            "provider_id": header,
            "to": to,
            "from": self.sender,
            "subject": subject,
            "text": text,
            "html": html,
            "message_id": header,
            "sent_at": self._clock.now(),
        }
        self._record(entry, f"[console email] {header} to {_masked(to)}")
        return SendResult(provider_id=header, status="sent")
