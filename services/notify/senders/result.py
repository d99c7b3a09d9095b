"""What a send returns, and the two ways it can fail: the notifier retries one and not the other."""
from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class SendResult:
    provider_id: str | None
    status: str


class PermanentSendError(Exception):
    """The provider refused this message for good (invalid number, unsubscribed, not a mobile).

    Retrying sends nothing; the message is failed with `code` kept, and may fall back to email.
    """

    def __init__(self, message: str, code: int | None = None, http_status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status


class TransientSendError(Exception):
    """The provider could not take the message now (429, 5xx, timeout, connection): retry later.

    `retry_after` is the provider's own wait in seconds when it gave one. `maybe_sent` is False
    only when the request certainly never reached the provider (connection refused, connect
    timeout, 429 which Twilio documents as never processed). When it is True the provider may
    have accepted the message, so a retry must first ask it (`find_sent`), or send a duplicate.
    """

    def __init__(
        self,
        message: str,
        code: int | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
        maybe_sent: bool = True,
    ):
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status
        self.retry_after = retry_after
        self.maybe_sent = maybe_sent


class SmsSender(Protocol):
    def send_sms(
        self, to: str, body: str, status_callback: str | None, idempotency_key: str | None = None
    ) -> SendResult: ...

    def find_sent(self, to: str, sent_after: datetime, body: str | None = None,
                  passing_over: Collection[str] = (), text_sha256: str | None = None
                  ) -> str | None: ...

    def close(self) -> None: ...


class EmailSender(Protocol):
    def send_email(
        self, to: str, subject: str, text: str, html: str | None, message_id: str | None = None,
        before_final_dot: Callable[[], None] | None = None,
    ) -> SendResult: ...

    def close(self) -> None: ...
