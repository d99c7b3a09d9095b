"""SMS through Twilio's Messages API with the real `twilio` SDK.

The SDK has no base-URL setting (TWILIO_EDGE / TWILIO_REGION only rename Twilio's own hosts), so
TWILIO_API_BASE_URL is honoured by an HTTP client that rewrites every request's scheme and host.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import requests
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client
from urllib3.exceptions import NewConnectionError

from .result import PermanentSendError, SendResult, TransientSendError

_log = logging.getLogger(__name__)


class BaseUrlHttpClient(TwilioHttpClient):
    """Sends the SDK's requests (https://api.twilio.com/...) to `base_url`, keeping path and query.

    A base URL with a path (https://proxy.example/twilio) prefixes it. Without a base URL the
    requests go to Twilio unchanged. The last response of each thread is kept so a 429's
    Retry-After header, which the SDK's exception drops, can still be read.
    """

    def __init__(self, base_url: str | None = None, timeout: float = 10.0, **kwargs):
        super().__init__(timeout=timeout, logger=_log, **kwargs)
        if base_url:
            parts = urlsplit(base_url)
            if parts.scheme not in {"http", "https"} or not parts.netloc:
                raise ValueError(f"TWILIO_API_BASE_URL must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/") if base_url else None
        self._local = threading.local()
        self._read_environment_once()

    def _read_environment_once(self) -> None:
        """requests reads proxy and CA-bundle settings from os.environ on every request (a
        scan of the whole environment, several times a send's own cost in Python); they are
        read once here instead, for the one host this client talks to (honouring NO_PROXY),
        and the session stops looking. A process's environment does not change under it.
        The one host: `base_url`, or api.twilio.com (the client is built with
        `environment={}`, so TWILIO_EDGE / TWILIO_REGION never rename it)."""
        if self.session is None:
            return
        target = self.base_url or "https://api.twilio.com"
        settings = self.session.merge_environment_settings(target, {}, None, None, None)
        self.proxy = {**settings["proxies"], **self.proxy}
        self.session.verify = settings["verify"]
        self.session.trust_env = False

    def rewrite(self, url: str) -> str:
        if self.base_url is None:
            return url
        base, target = urlsplit(self.base_url), urlsplit(url)
        path = base.path.rstrip("/") + target.path
        return urlunsplit((base.scheme, base.netloc, path, target.query, target.fragment))

    def request(
        self,
        method: str,
        url: str,
        params=None,
        data=None,
        headers=None,
        auth=None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        self._local.response = None
        response = super().request(
            method,
            self.rewrite(url),
            params=params,
            data=data,
            headers=headers,
            auth=auth,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )
        self._local.response = response
        return response

    def last_response_headers(self) -> Mapping[str, str]:
        response = getattr(self._local, "response", None)
        return (response.headers or {}) if response is not None else {}

    # The SDK logs query strings (patients' phone numbers) at INFO; ours keep method and path.
    def log_request(self, kwargs) -> None:
        _log.debug("twilio request %s %s", kwargs["method"], urlsplit(kwargs["url"]).path)

    def log_response(self, status_code: int, response) -> None:
        _log.debug("twilio response %s", status_code)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After") if headers else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _never_reached(error: requests.RequestException) -> bool:
    """True when the request cannot have reached Twilio, so a retry cannot duplicate it."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(error, requests.exceptions.ConnectionError):
        reason = getattr(error.args[0], "reason", None) if error.args else None
        return isinstance(reason, NewConnectionError)
    return False


def _status_and_code(error: TwilioException) -> tuple[int | None, int | None]:
    """HTTP status and Twilio error code of an SDK exception.

    Creates raise TwilioRestException (or the RFC 9457 TwilioServiceException) with both;
    a list page that fails raises a bare TwilioException carrying the response.
    """
    status = getattr(error, "status", None)
    if status is not None:
        return int(status), getattr(error, "code", None)
    response = next((arg for arg in error.args if isinstance(arg, Response)), None)
    if response is None:
        return None, None
    try:
        code = json.loads(response.text).get("code")
    except (ValueError, AttributeError):
        code = None
    return response.status_code, code


TWILIO_REFUSALS = {
    21211: "invalid 'To' number",
    21408: "no permission to send to that region",
    21610: "recipient unsubscribed (replied STOP)",
    21612: "cannot route to that number",
    21614: "'To' is not a mobile number",
    20003: "authentication failed (check TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN)",
}


class TwilioSms:
    # RFC 2822 dates carry whole seconds; a little more covers clock skew between us and Twilio.
    CLOCK_SKEW = timedelta(seconds=5)
    RECENT = 50

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        api_base_url: str | None = None,
        timeout: float = 10.0,
    ):
        if not account_sid or not auth_token:
            raise ValueError("TwilioSms needs an account SID and an auth token")
        if not from_number and not messaging_service_sid:
            raise ValueError("TwilioSms needs a from number or a messaging service SID")
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        self.http_client = BaseUrlHttpClient(api_base_url, timeout=timeout)
        # environment={}: configuration is read once into Config, never from os.environ here.
        self.client = Client(
            account_sid, auth_token, http_client=self.http_client, environment={}
        )

    def send_sms(
        self,
        to: str,
        body: str,
        status_callback: str | None,
        idempotency_key: str | None = None,
    ) -> SendResult:
        """Creates the message at Twilio.

        Twilio's Messages API takes no idempotency key; `idempotency_key` is accepted for the
        common sender interface. Exactly-once rests on `find_sent` before any repeat attempt
        after an outcome that may have reached Twilio (`TransientSendError.maybe_sent`).
        """
        sender = (
            {"messaging_service_sid": self.messaging_service_sid}
            if self.messaging_service_sid
            else {"from_": self.from_number}
        )
        if status_callback:
            sender["status_callback"] = status_callback
        try:
            message = self.client.messages.create(to=to, body=body, **sender)
        except TwilioException as error:
            raise self._classify(error, creating=True) from error
        except requests.RequestException as error:
            raise TransientSendError(
                f"Twilio unreachable: {type(error).__name__}",
                maybe_sent=not _never_reached(error),
            ) from error
        return SendResult(provider_id=message.sid, status=str(message.status or "unknown"))

    def find_sent(self, to: str, sent_after: datetime, body: str | None = None,
                  passing_over: Collection[str] = (), text_sha256: str | None = None
                  ) -> str | None:
        """The sid of a message to `to` (with this body, or a body of this SHA-256, when
        given) created since `sent_after`, but none of `passing_over`: sids recorded for other
        messages, since two patients sharing a phone can be sent the very same text at the
        same moment (check-ins).

        Crash recovery: a message left `sending` may have reached Twilio. Twilio's DateSent
        filter works on whole GMT days and skips messages still queued (date_sent is null until
        Twilio hands them on), so the recent messages to that number are read as well, and both
        are matched on date_created.
        """
        if sent_after.tzinfo is None:
            raise ValueError("find_sent needs an aware datetime")
        since = sent_after.astimezone(UTC).replace(microsecond=0) - self.CLOCK_SKEW
        try:
            found = self.client.messages.list(
                to=to, date_sent_after=since.date().isoformat(), limit=self.RECENT
            )
            found += self.client.messages.list(to=to, limit=self.RECENT)
        except TwilioException as error:
            raise self._classify(error, creating=False) from error
        except requests.RequestException as error:
            raise TransientSendError(
                f"Twilio unreachable: {type(error).__name__}", maybe_sent=False
            ) from error
        matches = {
            message.sid: message.date_created
            for message in found
            if message.to == to and message.sid not in passing_over
            and (body is None or message.body == body)
            and (text_sha256 is None
                 or hashlib.sha256((message.body or "").encode()).hexdigest() == text_sha256)
            and isinstance(message.date_created, datetime)
            and message.date_created >= since
        }
        return min(matches, key=lambda sid: (matches[sid], sid)) if matches else None

    def _classify(
        self, error: TwilioException, creating: bool
    ) -> PermanentSendError | TransientSendError:
        status, code = _status_and_code(error)
        if status is None:
            # Raised by the SDK before any request (missing credentials...): settings, not load.
            return PermanentSendError(f"Twilio client error: {type(error).__name__}")
        if status == 429:
            # Twilio: a 429 was never processed, so it is always safe to retry.
            return TransientSendError(
                "Twilio rate limit (429)",
                code=code,
                http_status=status,
                retry_after=_retry_after(self.http_client.last_response_headers()),
                maybe_sent=False,
            )
        if status >= 500:
            return TransientSendError(
                f"Twilio server error ({status})",
                code=code,
                http_status=status,
                retry_after=_retry_after(self.http_client.last_response_headers()),
                maybe_sent=creating,
            )
        # Twilio's own text quotes the patient's number; ours names the code only.
        reason = TWILIO_REFUSALS.get(code, "refused")
        return PermanentSendError(
            f"Twilio {reason} (HTTP {status}, error {code})", code=code, http_status=status
        )

    def close(self) -> None:
        self.http_client.close()

    def __enter__(self) -> TwilioSms:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
