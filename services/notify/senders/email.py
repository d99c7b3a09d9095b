"""Email over SMTP: a text part and, when given, an HTML alternative."""
from __future__ import annotations

import re
import smtplib
import ssl
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from .result import PermanentSendError, SendResult, TransientSendError


def message_id_header(message_id: str | None, sender: str) -> str:
    """A Message-ID header from our own message id, so a retry carries the same one.

    Receivers and mail stores drop a second copy with a Message-ID they have seen, which is
    the only de-duplication SMTP offers when a connection breaks after the data was sent.
    """
    domain = sender.rpartition("@")[2] or "clinic.invalid"
    if message_id is None:
        return make_msgid(domain=domain)
    value = message_id.strip().strip("<>")
    if "@" not in value:
        value = f"{value}@{domain}"
    return f"<{value}>"


_ADDRESS = re.compile(r"<?[^\s<>@]+@[^\s<>]+>?")


def _refusal(code: int, reply: bytes | str, stage: str) -> PermanentSendError | TransientSendError:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    # Servers quote the recipient ("550 5.1.1 <patient@...>"); the reason goes to the message
    # log that staff read and to logs, which carry no addresses.
    text = _ADDRESS.sub("<recipient>", text)
    message = f"SMTP {stage} refused: {code} {text}".strip()
    if 400 <= code < 500:
        # A 4xx reply is the server asking us to come back later (greylisting, a full queue);
        # nothing was accepted, so the retry cannot duplicate.
        return TransientSendError(message, code=code, maybe_sent=False)
    return PermanentSendError(message, code=code)


class SmtpEmail:
    def __init__(
        self,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        sender: str = "clinic@example.org",
        timeout: float = 10.0,
    ):
        if not host:
            raise ValueError("SmtpEmail needs a host")
        self.host = host
        self.port = int(port)
        self.username = username
        self.password = password
        self.starttls = starttls
        self.sender = sender
        self.timeout = timeout

    def compose(
        self, to: str, subject: str, text: str, html: str | None, message_id: str | None = None
    ) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = message_id_header(message_id, self.sender)
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
        return message

    def send_email(
        self, to: str, subject: str, text: str, html: str | None, message_id: str | None = None,
        before_final_dot: Callable[[], None] | None = None,
    ) -> SendResult:
        """Sends one message on its own connection.

        `before_final_dot` is called after the whole message has been transmitted and before
        the end-of-data line that makes the server take it: until then a broken connection
        delivers nothing. The notifier records that point, so after a crash it knows whether
        a retry could duplicate the email (SMTP has no way to ask afterwards).
        """
        message = self.compose(to, subject, text, html, message_id)
        try:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        except smtplib.SMTPConnectError as error:
            raise _refusal(error.smtp_code, error.smtp_error, "connection") from error
        except OSError as error:
            raise TransientSendError(
                f"SMTP server unreachable: {type(error).__name__}", maybe_sent=False
            ) from error
        try:
            self._deliver(smtp, message, before_final_dot)
        finally:
            smtp.close()
        return SendResult(provider_id=message["Message-ID"], status="sent")

    def _deliver(self, smtp: smtplib.SMTP, message: EmailMessage,
                 before_final_dot: Callable[[], None] | None) -> None:
        stage = "session"
        try:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                stage = "login"
                smtp.login(self.username, self.password or "")
            stage = "envelope"
            _envelope(smtp, self.sender, str(message["To"]))
            stage = "message"
            _transmit(smtp, message)
            if before_final_dot is not None:
                before_final_dot()
            stage = "end of data"
            smtp.send(b".\r\n")
            code, reply = smtp.getreply()
            if code != 250:
                raise smtplib.SMTPDataError(code, reply)
        except smtplib.SMTPRecipientsRefused as error:
            code, reply = next(iter(error.recipients.values()))
            raise _refusal(code, reply, "recipient") from error
        except smtplib.SMTPResponseException as error:
            raise _refusal(error.smtp_code, error.smtp_error, stage) from error
        except smtplib.SMTPNotSupportedError as error:
            # STARTTLS or AUTH not offered, or an address the server cannot carry: settings.
            raise PermanentSendError(f"SMTP {stage}: {error}") from error
        except ssl.SSLCertVerificationError as error:
            raise PermanentSendError(f"SMTP {stage}: certificate not trusted") from error
        except UnicodeEncodeError as error:
            # An address with letters beyond ASCII ("josé@example.org"), which smtplib cannot
            # put in a plain envelope: it would fail the same way on every try.
            raise PermanentSendError(
                f"SMTP {stage}: the address is not plain ASCII (it needs SMTPUTF8)") from error
        except (smtplib.SMTPException, OSError) as error:
            # Broken after the end-of-data line: the server may have taken the message before
            # the connection dropped. Before it, nothing was delivered.
            raise TransientSendError(
                f"SMTP connection lost during {stage}: {type(error).__name__}",
                maybe_sent=stage == "end of data",
            ) from error
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass  # the message was accepted; a failed goodbye changes nothing

    def close(self) -> None:
        """Each message opens its own connection; nothing is held between sends."""

    def __enter__(self) -> SmtpEmail:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _envelope(smtp: smtplib.SMTP, sender: str, to: str) -> None:
    smtp.ehlo_or_helo_if_needed()
    code, reply = smtp.mail(sender)
    if code != 250:
        smtp.rset()
        raise smtplib.SMTPSenderRefused(code, reply, sender)
    code, reply = smtp.rcpt(to)
    if code not in (250, 251):
        smtp.rset()
        raise smtplib.SMTPRecipientsRefused({to: (code, reply)})


_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")


def _transmit(smtp: smtplib.SMTP, message: EmailMessage) -> None:
    """DATA as smtplib sends it (CRLF line ends, leading dots doubled), without the end-of-data
    line: the caller sends that once it has recorded the point of no return."""
    code, reply = smtp.docmd("DATA")
    if code != 354:
        raise smtplib.SMTPDataError(code, reply)
    payload = _LEADING_DOT.sub(b"..", _LINE_ENDS.sub(b"\r\n", message.as_bytes()))
    if not payload.endswith(b"\r\n"):
        payload += b"\r\n"
    smtp.send(payload)
