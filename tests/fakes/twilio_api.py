"""A local HTTP server that answers Twilio's Messages API the way Twilio documents it.

Real HTTP on 127.0.0.1, so the `twilio` SDK, its HTTP client and our base-URL rewrite are all
exercised; nothing in the code under test is patched.

    with FakeTwilio(unsubscribed={"+447700900123"}) as twilio:
        sms = TwilioSms(twilio.account_sid, twilio.auth_token, "+441632960001",
                        api_base_url=twilio.base_url)

Like Twilio, a created message is `queued` (`accepted` through a messaging service) with
`date_sent` null; `set_status` / `send_status_callback` move it on and set `date_sent`. The
list's DateSent filter therefore does not see a message still queued, as at Twilio.
"""
from __future__ import annotations

import base64
import hmac
import json
import math
import re
import secrets
import socket
import sys
import threading
import urllib.error
import urllib.request
from datetime import UTC, date, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from twilio.request_validator import RequestValidator

from shared.clock import Clock, SystemClock

API_VERSION = "2010-04-01"
E164 = re.compile(r"^\+[1-9]\d{6,14}$")

GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = set("^{}\\[~]|€\f")

ERRORS = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    20503: "Service Unavailable",
    21211: "The 'To' number is not a valid phone number.",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21606: "The 'From' phone number provided is not a valid message-capable Twilio phone number "
    "for this destination/account.",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
}


def sms_segments(body: str) -> int:
    """Segments Twilio bills for `body`: GSM-7 160 / 153 per part, else UCS-2 70 / 67."""
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in body):
        units = sum(2 if ch in GSM7_EXTENDED else 1 for ch in body)
        single, part = 160, 153
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, part = 70, 67
    if units <= single:
        return 1
    return math.ceil(units / part)


def _rfc2822(instant: datetime | None) -> str | None:
    return format_datetime(instant.replace(microsecond=0)) if instant else None


def _error_body(code: int, status: int) -> dict:
    return {
        "code": code,
        "message": ERRORS.get(code, "Error"),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _date_bound(value: str) -> tuple[datetime, bool]:
    """A DateSent filter value: YYYY-MM-DD (whole GMT day) or the SDK's YYYY-MM-DDTHH:MM:SSZ."""
    value = value.strip()
    if "T" in value:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC), False
    day = date.fromisoformat(value)
    return datetime(day.year, day.month, day.day, tzinfo=UTC), True


class _Fault:
    def __init__(self, status: int, retry_after: float | None, on: str):
        self.status, self.retry_after, self.on = status, retry_after, on


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # handler threads are joined on close, so nothing outlives a test
    block_on_close = True

    def __init__(self, fake: FakeTwilio):
        self.fake = fake
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request, client_address) -> None:
        # A client that timed out has gone before the (delayed) answer: expected, not news.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def cut_connections(self) -> None:
        with self.connections_lock:
            for connection in self.connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's pooled session expects
    server_version = "FakeTwilio/1.0"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def log_message(self, format, *args) -> None:
        pass  # the test output stays readable; `.requests` holds what arrived

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8"), keep_blank_values=True).items()}
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        fake = self.server.fake
        fake._entered()
        try:
            status, body, headers = fake._answer(
                method, url.path, query, form, self.headers.get("Authorization")
            )
            # A slow answer comes after the work is done: a client that times out on a create
            # has had its message accepted, the case crash recovery must not send twice.
            if fake.delay:
                fake._stopping.wait(fake.delay)
        finally:
            fake._left()
        payload = json.dumps(body).encode("utf-8") if body is not None else b""
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


class FakeTwilio:
    def __init__(
        self,
        account_sid: str | None = None,
        auth_token: str | None = None,
        *,
        invalid_numbers: set[str] | frozenset[str] = frozenset(),
        unsubscribed: set[str] | frozenset[str] = frozenset(),
        landlines: set[str] | frozenset[str] = frozenset(),
        from_numbers: set[str] | None = None,
        delay: float = 0.0,
        clock: Clock | None = None,
    ):
        self.account_sid = account_sid or f"AC{secrets.token_hex(16)}"
        self.auth_token = auth_token or secrets.token_hex(16)
        self.invalid_numbers = set(invalid_numbers)
        self.unsubscribed = set(unsubscribed)
        self.landlines = set(landlines)
        self.from_numbers = set(from_numbers) if from_numbers is not None else None
        self.delay = delay
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._messages: list[dict] = []
        self._requests: list[dict] = []
        self._faults: list[_Fault] = []
        self._in_flight = 0
        self.most_at_once = 0       # the most requests it was answering at one time
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeTwilio:
        self._stopping.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="fake-twilio", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.cut_connections()  # idle keep-alive connections would block the join
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeTwilio is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def messages_path(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Messages.json"

    # what arrived ------------------------------------------------------------------------
    @property
    def messages(self) -> list[dict]:
        """Every message created, oldest first, as Twilio's JSON plus `status_callback`."""
        with self._lock:
            return [self._recorded(message) for message in self._messages]

    @property
    def requests(self) -> list[dict]:
        """Every request: method, path, query, form, and whether its credentials were right."""
        with self._lock:
            return [dict(request) for request in self._requests]

    def sms_count(self, to: str) -> int:
        with self._lock:
            return sum(1 for message in self._messages if message["to"] == to)

    def message(self, sid: str) -> dict:
        with self._lock:
            return self._recorded(self._find(sid))

    # fault injection ---------------------------------------------------------------------
    def fail_next(
        self, n: int = 1, status: int = 500, retry_after: float | None = None, on: str = "create"
    ) -> None:
        """The next `n` requests answer `status` without processing them.

        `on`: "create" (POST Messages.json), "list" (GET Messages.json) or "any".
        """
        if on not in {"create", "list", "any"}:
            raise ValueError(f"on must be create, list or any, not {on!r}")
        with self._lock:
            self._faults.extend(_Fault(status, retry_after, on) for _ in range(n))

    # status changes and callbacks --------------------------------------------------------
    def set_status(self, sid: str, status: str, error_code: int | None = None) -> dict:
        now = self.clock.now()
        with self._lock:
            message = self._find(sid)
            message["status"] = status
            message["date_updated"] = _rfc2822(now)
            handed_on = status in {"sent", "delivered", "undelivered", "failed"}
            if handed_on and not message["date_sent"]:
                message["date_sent"] = _rfc2822(now)
                message["_date_sent"] = now
            if error_code is not None:
                message["error_code"] = error_code
            return self._recorded(message)

    def status_callback_request(
        self,
        sid: str,
        status: str,
        auth_token: str | None = None,
        url: str | None = None,
        error_code: int | None = None,
        idempotency_token: str | None = None,
    ) -> tuple[str, dict[str, str], dict[str, str]]:
        """(url, form, headers) of the status callback Twilio would POST, signed as Twilio does.

        For a Flask test client; `send_status_callback` posts it over HTTP instead.
        """
        message = self.set_status(sid, status, error_code)
        url = url or message["status_callback"]
        if not url:
            raise ValueError(f"message {sid} has no StatusCallback and no url was given")
        form = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "From": message["from"] or "",
            "MessageSid": sid,
            "MessageStatus": status,
            "SmsSid": sid,
            "SmsStatus": status,
            "To": message["to"],
        }
        if message["messaging_service_sid"]:
            form["MessagingServiceSid"] = message["messaging_service_sid"]
        if error_code is not None:
            form["ErrorCode"] = str(error_code)
        return url, form, self._webhook_headers(url, form, auth_token, idempotency_token)

    def send_status_callback(
        self,
        sid: str,
        status: str,
        auth_token: str | None = None,
        url: str | None = None,
        error_code: int | None = None,
        idempotency_token: str | None = None,
    ) -> int:
        """POSTs the signed status callback to `url` (default the message's StatusCallback)."""
        return _post(*self.status_callback_request(
            sid, status, auth_token, url, error_code, idempotency_token
        ))

    def inbound_sms_request(
        self, from_: str, body: str, url: str, to: str = "+441632960001",
        auth_token: str | None = None, idempotency_token: str | None = None,
    ) -> tuple[str, dict[str, str], dict[str, str]]:
        """(url, form, headers) of the webhook Twilio POSTs when a patient texts the clinic."""
        sid = f"SM{secrets.token_hex(16)}"
        form = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "Body": body,
            "From": from_,
            "MessageSid": sid,
            "NumMedia": "0",
            "NumSegments": str(sms_segments(body)),
            "SmsMessageSid": sid,
            "SmsSid": sid,
            "SmsStatus": "received",
            "To": to,
        }
        return url, form, self._webhook_headers(url, form, auth_token, idempotency_token)

    def send_inbound_sms(self, from_: str, body: str, url: str, **kwargs) -> int:
        return _post(*self.inbound_sms_request(from_, body, url, **kwargs))

    def _webhook_headers(
        self, url: str, form: dict, auth_token: str | None, idempotency_token: str | None
    ) -> dict[str, str]:
        validator = RequestValidator(auth_token or self.auth_token)
        return {
            "X-Twilio-Signature": validator.compute_signature(url, form),
            # Twilio repeats this header when it retries a webhook.
            "I-Twilio-Idempotency-Token": idempotency_token or secrets.token_hex(16),
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "TwilioProxy/1.1",
        }

    # the API -----------------------------------------------------------------------------
    def _find(self, sid: str) -> dict:
        for message in self._messages:
            if message["sid"] == sid:
                return message
        raise KeyError(sid)

    def _answer(
        self, method: str, path: str, query: dict, form: dict, authorization: str | None
    ) -> tuple[int, dict | None, dict[str, str]]:
        prefix = f"/{API_VERSION}/Accounts/"
        match = re.fullmatch(re.escape(prefix) + r"([^/]+)/Messages(?:/(SM[0-9a-f]{32}))?\.json",
                             path)
        authorised = self._authorised(authorization)
        with self._lock:
            self._requests.append({"method": method, "path": path, "query": query, "form": form,
                                   "authorised": authorised})
        if match is None:
            return 404, _error_body(20404, 404), {}
        operation = {("POST", False): "create", ("GET", False): "list",
                     ("GET", True): "fetch"}.get((method, match.group(2) is not None))
        if operation is None:
            return 405, _error_body(20004, 405), {}
        fault = self._take_fault(operation)
        if fault is not None:
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            return fault.status, _error_body(20000 + fault.status, fault.status), headers
        if not authorised:
            return 401, _error_body(20003, 401), {"WWW-Authenticate": 'Basic realm="Twilio API"'}
        if match.group(1) != self.account_sid:
            return 404, _error_body(20404, 404), {}
        if operation == "create":
            return self._create(form)
        if operation == "list":
            return 200, self._list(path, query), {}
        with self._lock:
            try:
                return 200, self._public(self._find(match.group(2))), {}
            except KeyError:
                return 404, _error_body(20404, 404), {}

    def _authorised(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user, self.account_sid) and hmac.compare_digest(
            password, self.auth_token
        )

    def _entered(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.most_at_once = max(self.most_at_once, self._in_flight)

    def _left(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _take_fault(self, operation: str) -> _Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.on in {operation, "any"}:
                    return self._faults.pop(index)
        return None

    def _refusal(self, form: dict) -> int | None:
        to, body = form.get("To", ""), form.get("Body", "")
        if not to:
            return 21604
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return 21603
        if not body and not form.get("MediaUrl") and not form.get("ContentSid"):
            return 21602
        if len(body) > 1600:
            return 21617
        if to in self.invalid_numbers or not E164.match(to):
            return 21211
        if form.get("From") and self.from_numbers is not None and form["From"] not in (
            self.from_numbers
        ):
            return 21606
        if to in self.landlines:
            return 21614
        if to in self.unsubscribed:
            return 21610
        return None

    def _create(self, form: dict) -> tuple[int, dict, dict]:
        code = self._refusal(form)
        if code is not None:
            return 400, _error_body(code, 400), {}
        now = self.clock.now()
        sid = f"SM{secrets.token_hex(16)}"
        body = form.get("Body", "")
        service = form.get("MessagingServiceSid") or None
        sender = form.get("From") or None
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json"
        message = {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": body,
            "date_created": _rfc2822(now),
            "date_sent": None,
            "date_updated": _rfc2822(now),
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sender,
            "messaging_service_sid": service,
            "num_media": "0",
            # Twilio: through a messaging service num_segments is 0 in the create response.
            "num_segments": "0" if service and not sender else str(sms_segments(body)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if service and not sender else "queued",
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
            "to": form["To"],
            "uri": uri,
            "status_callback": form.get("StatusCallback") or None,
            "_date_created": now,
            "_date_sent": None,
        }
        with self._lock:
            self._messages.append(message)
            return 201, self._public(message), {}

    @staticmethod
    def _recorded(message: dict) -> dict:
        return {k: v for k, v in message.items() if not k.startswith("_")}

    @staticmethod
    def _public(message: dict) -> dict:
        return {
            k: v for k, v in message.items() if not k.startswith("_") and k != "status_callback"
        }

    def _list(self, path: str, query: dict) -> dict:
        page_size = max(1, min(int(query.get("PageSize") or 50), 1000))
        page = max(0, int(query.get("Page") or 0))
        with self._lock:
            found = [m for m in self._messages if self._matches(m, query)]
        found.sort(key=lambda m: m["_date_created"], reverse=True)  # newest first, as Twilio
        rows = found[page * page_size:(page + 1) * page_size]
        filters = {k: v for k, v in query.items() if k not in {"Page", "PageSize", "PageToken"}}

        def page_uri(number: int) -> str:
            return f"{path}?{urlencode({**filters, 'PageSize': page_size, 'Page': number})}"

        more = (page + 1) * page_size < len(found)
        return {
            "end": page * page_size + max(len(rows) - 1, 0),
            "first_page_uri": page_uri(0),
            "messages": [self._public(m) for m in rows],
            "next_page_uri": page_uri(page + 1) if more else None,
            "page": page,
            "page_size": page_size,
            "previous_page_uri": page_uri(page - 1) if page else None,
            "start": page * page_size,
            "uri": page_uri(page),
        }

    @staticmethod
    def _matches(message: dict, query: dict) -> bool:
        if "To" in query and message["to"] != query["To"]:
            return False
        if "From" in query and message["from"] != query["From"]:
            return False
        sent = message["_date_sent"]
        for key in ("DateSent", "DateSent>", "DateSent<"):
            if key not in query:
                continue
            if sent is None:
                return False  # still queued: no date_sent to filter on
            bound, whole_day = _date_bound(query[key])
            if key == "DateSent" and not (whole_day and sent.date() == bound.date()):
                return False
            if key == "DateSent>" and sent < bound:
                return False
            if key == "DateSent<" and (
                sent.date() > bound.date() if whole_day else sent > bound
            ):
                return False
        return True


def _post(url: str, form: dict[str, str], headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=urlencode(form).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        with error:
            return error.code
