"""A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps what it receives.

    with FakeSmtp() as smtp:
        SmtpEmail(smtp.host, smtp.port).send_email(...)
        [message] = smtp.messages            # email.message.EmailMessage

aiosmtpd cannot listen on port 0 (its readiness check connects to the configured port), so a
free port is found by binding a socket first.
"""
from __future__ import annotations

import socket
import threading
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class _Handler:
    def __init__(self, fake: FakeSmtp):
        self.fake = fake

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.fake.credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        refusal = self.fake._refusal(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        failure = self.fake._take_failure()
        if failure is not None:
            return failure
        message = BytesParser(policy=policy.default).parsebytes(envelope.original_content)
        self.fake._store(message, envelope.mail_from, list(envelope.rcpt_tos), session)
        return "250 2.0.0 Message accepted for delivery"


class FakeSmtp:
    def __init__(self, host: str = "127.0.0.1", credentials: tuple[str, str] | None = None):
        """`credentials`: (username, password) the server checks; mail is refused without them.

        AUTH is offered on the plain connection (no TLS) for the test only; aiosmtpd warns when
        AUTH is *required* without TLS, so the requirement is enforced at MAIL instead.
        """
        self.host = host
        self.port = free_port(host)
        self.credentials = credentials
        self._lock = threading.Lock()
        self._messages: list[EmailMessage] = []
        self._envelopes: list[dict] = []
        self._refusals: dict[str, str] = {}
        self._failures: list[str] = []
        self._controller = Controller(
            _Handler(self),
            hostname=host,
            port=self.port,
            authenticator=self._authenticate if credentials else None,
            auth_require_tls=False,
        )
        self._running = False

    def start(self) -> FakeSmtp:
        self._controller.start()
        self._running = True
        return self

    def stop(self) -> None:
        if self._running:
            self._controller.stop()
            self._running = False

    def __enter__(self) -> FakeSmtp:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return list(self._messages)

    @property
    def envelopes(self) -> list[dict]:
        """mail_from, rcpt_tos and the login used, one per accepted message."""
        with self._lock:
            return [dict(envelope) for envelope in self._envelopes]

    def messages_to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if address.lower() in str(m["To"]).lower()]

    def reject(self, address: str, code: int = 550, text: str | None = None) -> None:
        """Answer RCPT TO for `address` with `code` (550 mailbox unavailable; 450 to defer)."""
        status = "5.1.1" if code >= 500 else "4.2.0"
        reply = text or f"{status} <{address}>: Recipient address rejected"
        with self._lock:
            self._refusals[address.lower()] = f"{code} {reply}"

    def fail_next(self, n: int = 1, code: int = 451, text: str = "4.3.0 Try again later") -> None:
        """The next `n` messages are refused at the end of DATA with `code`."""
        with self._lock:
            self._failures.extend([f"{code} {text}"] * n)

    def _refusal(self, address: str) -> str | None:
        with self._lock:
            return self._refusals.get(address.lower())

    def _take_failure(self) -> str | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def _store(self, message: EmailMessage, mail_from: str, rcpt_tos: list[str], session) -> None:
        login = session.auth_data.login.decode() if session.authenticated else None
        with self._lock:
            self._messages.append(message)
            self._envelopes.append({"mail_from": mail_from, "rcpt_tos": rcpt_tos, "login": login})

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        username, password = self.credentials
        ok = auth_data.login.decode() == username and auth_data.password.decode() == password
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)
