"""The senders against real local servers: the twilio SDK talks HTTP to FakeTwilio, smtplib talks
SMTP to aiosmtpd. Nothing of ours is patched; failures are produced by the servers."""
from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
from twilio.request_validator import RequestValidator

from services.notify.senders import (
    BaseUrlHttpClient,
    ConsoleEmail,
    ConsoleSms,
    PermanentSendError,
    SmtpEmail,
    TransientSendError,
    TwilioSms,
    build_email_sender,
    build_sms_sender,
)
from shared.config import Config
from tests.fakes.smtp import FakeSmtp, free_port
from tests.fakes.twilio_api import FakeTwilio, sms_segments

CLINIC = "+441632960001"                # the account's one SMS number
CLINIC_PHONE = "+441632960000"          # the clinic's own line: not a Twilio number
PATIENT = "+447700900001"
OTHER_PATIENT = "+447700900002"
INVALID = "+447700900666"
UNSUBSCRIBED = "+447700900777"
LANDLINE = "+441632960999"
CALLBACK = "https://notify.clinic.example/webhooks/twilio/status"
MESSAGING_SERVICE = "MG" + "0" * 32


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def twilio():
    with FakeTwilio(
        invalid_numbers={INVALID}, unsubscribed={UNSUBSCRIBED}, landlines={LANDLINE},
        from_numbers={CLINIC},
    ) as fake:
        yield fake


@pytest.fixture
def twilio_sms(twilio):
    with TwilioSms(
        twilio.account_sid, twilio.auth_token, from_number=CLINIC,
        api_base_url=twilio.base_url, timeout=5,
    ) as sms:
        yield sms


@pytest.fixture
def smtp():
    with FakeSmtp() as server:
        yield server


# --- one contract, every SMS backend ---------------------------------------------------------

@pytest.fixture(params=["console", "twilio"])
def sms_backend(request):
    """(sender, what went out): each entry has to, body and status_callback."""
    if request.param == "console":
        with ConsoleSms() as sms:
            yield sms, lambda: list(sms.sent)
        return
    twilio = request.getfixturevalue("twilio")
    yield request.getfixturevalue("twilio_sms"), lambda: twilio.messages


class TestSmsSenderContract:
    def test_a_sent_message_has_a_provider_id_and_a_status(self, sms_backend):
        sms, _ = sms_backend
        result = sms.send_sms(PATIENT, "Your appointment is confirmed.", CALLBACK)
        assert result.provider_id and result.provider_id.startswith("SM")
        assert len(result.provider_id) == 34
        assert result.status in {"queued", "sent"}

    def test_what_went_out_is_to_body_and_status_callback(self, sms_backend):
        sms, sent = sms_backend
        sms.send_sms(PATIENT, "Reply YES to confirm, NO to cancel.", CALLBACK, "msg-1")
        [message] = sent()
        assert message["to"] == PATIENT
        assert message["body"] == "Reply YES to confirm, NO to cancel."
        assert message["status_callback"] == CALLBACK

    def test_find_sent_finds_the_message_to_that_number(self, sms_backend):
        sms, _ = sms_backend
        before = now() - timedelta(seconds=1)
        result = sms.send_sms(PATIENT, "Reminder: tomorrow 10:00.", CALLBACK)
        assert sms.find_sent(PATIENT, before) == result.provider_id
        assert sms.find_sent(PATIENT, before, body="Reminder: tomorrow 10:00.") == (
            result.provider_id
        )

    def test_find_sent_ignores_other_numbers_bodies_and_earlier_messages(self, sms_backend):
        sms, _ = sms_backend
        before = now() - timedelta(seconds=1)
        sms.send_sms(PATIENT, "Reminder: tomorrow 10:00.", CALLBACK)
        assert sms.find_sent(OTHER_PATIENT, before) is None
        assert sms.find_sent(PATIENT, before, body="Something else") is None
        assert sms.find_sent(PATIENT, now() + timedelta(minutes=1)) is None

    def test_find_sent_refuses_a_naive_time(self, sms_backend):
        sms, _ = sms_backend
        with pytest.raises(ValueError):
            sms.find_sent(PATIENT, datetime(2026, 10, 24, 12, 0))


# --- Twilio through the real SDK ---------------------------------------------------------------

class TestTwilioSms:
    def test_the_request_reaches_twilio_with_basic_auth_and_form_fields(self, twilio, twilio_sms):
        twilio_sms.send_sms(PATIENT, "Hello", CALLBACK)
        [request] = twilio.requests
        assert request["method"] == "POST"
        assert request["path"] == twilio.messages_path
        assert request["authorised"] is True
        assert request["form"] == {
            "To": PATIENT, "From": CLINIC, "Body": "Hello", "StatusCallback": CALLBACK,
        }

    def test_the_created_message_looks_like_twilios(self, twilio, twilio_sms):
        result = twilio_sms.send_sms(PATIENT, "Hello", None)
        message = twilio.message(result.provider_id)
        assert message["status"] == result.status == "queued"
        assert message["from"] == CLINIC and message["direction"] == "outbound-api"
        assert message["num_segments"] == "1" and message["date_sent"] is None
        assert parsedate_to_datetime(message["date_created"]) <= now()
        assert message["status_callback"] is None
        assert "StatusCallback" not in twilio.requests[0]["form"]

    def test_a_messaging_service_is_sent_instead_of_a_from_number(self, twilio):
        with TwilioSms(
            twilio.account_sid, twilio.auth_token, messaging_service_sid=MESSAGING_SERVICE,
            api_base_url=twilio.base_url,
        ) as sms:
            result = sms.send_sms(PATIENT, "Hello", CALLBACK)
        form = twilio.requests[0]["form"]
        assert form["MessagingServiceSid"] == MESSAGING_SERVICE and "From" not in form
        assert result.status == "accepted"

    def test_wrong_credentials_are_refused_and_not_retried(self, twilio):
        with TwilioSms(
            twilio.account_sid, "wrong-token", from_number=CLINIC, api_base_url=twilio.base_url
        ) as sms, pytest.raises(PermanentSendError) as refused:
            sms.send_sms(PATIENT, "Hello", CALLBACK)
        assert refused.value.http_status == 401 and refused.value.code == 20003
        assert twilio.requests[0]["authorised"] is False
        assert twilio.messages == []

    def test_429_is_transient_with_retry_after_and_certainly_not_sent(self, twilio, twilio_sms):
        twilio.fail_next(1, status=429, retry_after=7)
        with pytest.raises(TransientSendError) as limited:
            twilio_sms.send_sms(PATIENT, "Hello", CALLBACK)
        assert limited.value.http_status == 429 and limited.value.code == 20429
        assert limited.value.retry_after == 7
        assert limited.value.maybe_sent is False
        assert twilio.messages == []
        # the fault is used up: the retry goes through
        assert twilio_sms.send_sms(PATIENT, "Hello", CALLBACK).status == "queued"
        assert twilio.sms_count(PATIENT) == 1

    def test_429_without_retry_after_leaves_the_wait_to_us(self, twilio, twilio_sms):
        twilio.fail_next(1, status=429)
        with pytest.raises(TransientSendError) as limited:
            twilio_sms.send_sms(PATIENT, "Hello", CALLBACK)
        assert limited.value.retry_after is None

    @pytest.mark.parametrize("status", [500, 503])
    def test_server_errors_are_transient(self, twilio, twilio_sms, status):
        twilio.fail_next(2, status=status)
        for _ in range(2):
            with pytest.raises(TransientSendError) as failed:
                twilio_sms.send_sms(PATIENT, "Hello", CALLBACK)
            assert failed.value.http_status == status
            assert failed.value.maybe_sent is True  # a 5xx may hide an accepted message
        assert twilio_sms.send_sms(PATIENT, "Hello", CALLBACK).provider_id

    @pytest.mark.parametrize(
        "to, code",
        [(INVALID, 21211), ("07700 900001", 21211), (UNSUBSCRIBED, 21610), (LANDLINE, 21614),
         ("", 21604)],
    )
    def test_refusals_are_permanent_with_twilios_code(self, twilio, twilio_sms, to, code):
        with pytest.raises(PermanentSendError) as refused:
            twilio_sms.send_sms(to, "Hello", CALLBACK)
        assert refused.value.code == code and refused.value.http_status == 400
        if to:
            assert to not in str(refused.value)  # error texts end up in logs: no numbers
        assert twilio.messages == []

    def test_a_from_number_that_is_not_the_accounts_is_refused_for_good(self, twilio):
        with TwilioSms(
            twilio.account_sid, twilio.auth_token, from_number=CLINIC_PHONE,
            api_base_url=twilio.base_url,
        ) as sms, pytest.raises(PermanentSendError) as refused:
            sms.send_sms(PATIENT, "Hello", CALLBACK)
        assert refused.value.code == 21606 and refused.value.http_status == 400
        assert twilio.messages == []

    def test_a_slow_answer_times_out_as_maybe_sent_and_find_sent_recovers_it(self, twilio):
        twilio.delay = 1.0
        started = now()
        with TwilioSms(
            twilio.account_sid, twilio.auth_token, from_number=CLINIC,
            api_base_url=twilio.base_url, timeout=0.2,
        ) as sms:
            with pytest.raises(TransientSendError) as timed_out:
                sms.send_sms(PATIENT, "Reminder", CALLBACK)
            assert timed_out.value.maybe_sent is True
            twilio.delay = 0
            [accepted] = twilio.messages  # Twilio took it; only the answer was lost
            assert sms.find_sent(PATIENT, started, body="Reminder") == accepted["sid"]

    def test_an_unreachable_twilio_is_transient_and_certainly_not_sent(self):
        with TwilioSms(
            "AC" + "1" * 32, "token", from_number=CLINIC,
            api_base_url=f"http://127.0.0.1:{free_port()}", timeout=2,
        ) as sms, pytest.raises(TransientSendError) as unreachable:
            sms.send_sms(PATIENT, "Hello", CALLBACK)
        assert unreachable.value.maybe_sent is False

    def test_find_sent_asks_twilios_message_list_by_to_and_date_sent(self, twilio, twilio_sms):
        started = now()
        sid = twilio_sms.send_sms(PATIENT, "Reminder", CALLBACK).provider_id
        twilio.set_status(sid, "delivered")
        assert twilio_sms.find_sent(PATIENT, started) == sid
        lists = [r["query"] for r in twilio.requests if r["method"] == "GET"]
        assert {"To": PATIENT, "DateSent>": started.date().isoformat(), "PageSize": "50"} in lists

    def test_find_sent_sees_a_message_still_queued(self, twilio, twilio_sms):
        # date_sent is null until Twilio hands the message on, so DateSent filters miss it
        started = now()
        sid = twilio_sms.send_sms(PATIENT, "Reminder", CALLBACK).provider_id
        assert twilio.message(sid)["date_sent"] is None
        assert twilio_sms.find_sent(PATIENT, started) == sid

    def test_find_sent_failing_at_twilio_is_transient(self, twilio, twilio_sms):
        twilio.fail_next(1, status=503, on="list")
        with pytest.raises(TransientSendError) as failed:
            twilio_sms.find_sent(PATIENT, now())
        assert failed.value.maybe_sent is False

    def test_the_sdk_follows_the_fakes_pages_through_the_base_url(self, twilio, twilio_sms):
        sids = {twilio_sms.send_sms(PATIENT, f"Message {n}", None).provider_id for n in range(5)}
        listed = twilio_sms.client.messages.list(to=PATIENT, page_size=2)
        assert {message.sid for message in listed} == sids
        assert sum(r["method"] == "GET" for r in twilio.requests) == 3


class TestBaseUrlHttpClient:
    def test_rewrites_scheme_and_host_and_keeps_path_and_query(self):
        client = BaseUrlHttpClient("http://127.0.0.1:8099")
        url = "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json?To=%2B44"
        assert client.rewrite(url) == (
            "http://127.0.0.1:8099/2010-04-01/Accounts/AC1/Messages.json?To=%2B44"
        )
        client.close()

    def test_a_base_url_with_a_path_prefixes_it(self):
        client = BaseUrlHttpClient("https://proxy.example/twilio/")
        assert client.rewrite("https://api.twilio.com/2010-04-01/x.json") == (
            "https://proxy.example/twilio/2010-04-01/x.json"
        )
        client.close()

    def test_without_a_base_url_twilio_is_used(self):
        client = BaseUrlHttpClient(None)
        assert client.rewrite("https://api.twilio.com/a?b=c") == "https://api.twilio.com/a?b=c"
        client.close()

    def test_a_base_url_that_is_not_http_is_refused(self):
        with pytest.raises(ValueError):
            BaseUrlHttpClient("127.0.0.1:8099")

    def test_a_proxy_set_in_the_environment_at_start_is_used(self, monkeypatch,
                                                             webhook_receiver):
        """Proxy settings are read once, when the client is made (requests would scan the
        environment on every send): a proxy set then carries every later request."""
        host, port = webhook_receiver.server_address[:2]
        monkeypatch.setenv("HTTP_PROXY", f"http://{host}:{port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        client = BaseUrlHttpClient("http://twilio.invalid:8099")
        monkeypatch.delenv("HTTP_PROXY")
        try:
            response = client.request("POST", "https://api.twilio.com/2010-04-01/x.json",
                                      data={"To": "+447400123456"})
        finally:
            client.close()
        assert response.status_code == 204
        [(path, form, _)] = webhook_receiver.received
        assert path == "http://twilio.invalid:8099/2010-04-01/x.json"   # proxy's absolute form
        assert form == {"To": "+447400123456"}

    def test_no_proxy_for_the_api_host_goes_direct(self, monkeypatch, twilio):
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")      # nothing listens there
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        sms = TwilioSms(twilio.account_sid, twilio.auth_token, from_number=CLINIC,
                        api_base_url=twilio.base_url, timeout=3)
        try:
            assert sms.send_sms(PATIENT, "Hello", None).provider_id.startswith("SM")
        finally:
            sms.close()


# --- the fake's webhooks, for notify's tests ----------------------------------------------------

class _Capture(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers["Content-Length"])
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        self.server.received.append((self.path, form, dict(self.headers)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format, *args):
        pass


@pytest.fixture
def webhook_receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class TestFakeTwilioWebhooks:
    def test_status_callback_is_signed_as_twilio_signs_it(self, twilio, twilio_sms,
                                                           webhook_receiver):
        host, port = webhook_receiver.server_address[:2]
        url = f"http://{host}:{port}/webhooks/twilio/status"
        sid = twilio_sms.send_sms(PATIENT, "Hello", url).provider_id
        assert twilio.send_status_callback(sid, "delivered") == 204
        [(path, form, headers)] = webhook_receiver.received
        assert path == "/webhooks/twilio/status"
        assert form["MessageSid"] == sid and form["MessageStatus"] == "delivered"
        assert RequestValidator(twilio.auth_token).validate(
            url, form, headers["X-Twilio-Signature"]
        )
        assert twilio.message(sid)["status"] == "delivered"
        assert twilio.message(sid)["date_sent"] is not None

    def test_inbound_sms_request_is_signed_for_the_given_url(self, twilio):
        url = "https://notify.clinic.example/webhooks/twilio/sms"
        _, form, headers = twilio.inbound_sms_request(PATIENT, "YES", url)
        assert form["Body"] == "YES" and form["From"] == PATIENT
        assert RequestValidator(twilio.auth_token).validate(
            url, form, headers["X-Twilio-Signature"]
        )

    def test_segments_are_counted_as_twilio_bills_them(self):
        assert sms_segments("a" * 160) == 1
        assert sms_segments("a" * 161) == 2
        assert sms_segments("€" * 80) == 1  # GSM-7 extension: two septets each
        assert sms_segments("\u2019" * 71) == 2  # a curly quote forces UCS-2


# --- email ----------------------------------------------------------------------------------

@pytest.fixture(params=["console", "smtp"])
def email_backend(request):
    """(sender, what went out): each entry has to, subject, text, html and message_id."""
    if request.param == "console":
        with ConsoleEmail(sender="appointments@clinic.example") as email:
            yield email, lambda: list(email.sent)
        return
    smtp = request.getfixturevalue("smtp")

    def sent():
        return [
            {
                "to": str(m["To"]),
                "subject": str(m["Subject"]),
                "text": m.get_body(("plain",)).get_content(),
                "html": (m.get_body(("html",)).get_content() if m.get_body(("html",)) else None),
                "message_id": str(m["Message-ID"]),
            }
            for m in smtp.messages
        ]

    yield SmtpEmail(smtp.host, smtp.port, sender="appointments@clinic.example"), sent


class TestEmailSenderContract:
    def test_what_went_out_has_text_html_and_a_message_id_from_ours(self, email_backend):
        email, sent = email_backend
        result = email.send_email(
            "p@example.org", "Your appointment", "See you at 10:00.", "<p>See you at 10:00.</p>",
            message_id="3f2c1d9e-msg",
        )
        assert result.provider_id == "<3f2c1d9e-msg@clinic.example>"
        assert result.status == "sent"
        [message] = sent()
        assert message["to"] == "p@example.org" and message["subject"] == "Your appointment"
        assert message["text"].strip() == "See you at 10:00."
        assert message["html"].strip() == "<p>See you at 10:00.</p>"
        assert message["message_id"] == "<3f2c1d9e-msg@clinic.example>"

    def test_a_retry_carries_the_same_message_id(self, email_backend):
        email, sent = email_backend
        for _ in range(2):
            email.send_email("p@example.org", "Reminder", "Text", None, message_id="m-1@x.org")
        assert {m["message_id"] for m in sent()} == {"<m-1@x.org>"}


class TestSmtpEmail:
    def test_the_message_is_multipart_alternative_with_headers(self, smtp):
        sender = SmtpEmail(smtp.host, smtp.port, sender="appointments@clinic.example")
        sender.send_email("p@example.org", "Café £20 – booked", "Plain £", "<b>Rich £</b>", "id-7")
        [message] = smtp.messages
        assert message.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
        assert message["From"] == "appointments@clinic.example"
        assert message["Subject"] == "Café £20 – booked"
        assert message["Message-ID"] == "<id-7@clinic.example>"
        assert parsedate_to_datetime(message["Date"]).tzinfo is not None
        assert message.get_body(("plain",)).get_content().strip() == "Plain £"
        [envelope] = smtp.envelopes
        assert envelope["mail_from"] == "appointments@clinic.example"
        assert envelope["rcpt_tos"] == ["p@example.org"]

    def test_without_html_the_message_is_plain_text(self, smtp):
        SmtpEmail(smtp.host, smtp.port).send_email("p@example.org", "Hi", "Only text", None)
        [message] = smtp.messages
        assert message.get_content_type() == "text/plain"
        assert message["Message-ID"].endswith("@example.org>")

    def test_a_rejected_recipient_is_permanent(self, smtp):
        smtp.reject("gone@example.org")
        with pytest.raises(PermanentSendError) as refused:
            SmtpEmail(smtp.host, smtp.port).send_email("gone@example.org", "Hi", "Text", None)
        assert refused.value.code == 550
        assert smtp.messages == []

    def test_a_deferred_recipient_is_transient_and_not_sent(self, smtp):
        smtp.reject("busy@example.org", code=450)
        with pytest.raises(TransientSendError) as deferred:
            SmtpEmail(smtp.host, smtp.port).send_email("busy@example.org", "Hi", "Text", None)
        assert deferred.value.code == 450 and deferred.value.maybe_sent is False

    def test_a_4xx_at_end_of_data_is_transient_then_the_retry_goes(self, smtp):
        smtp.fail_next(1, code=451)
        email = SmtpEmail(smtp.host, smtp.port)
        with pytest.raises(TransientSendError):
            email.send_email("p@example.org", "Hi", "Text", None, "m-2")
        email.send_email("p@example.org", "Hi", "Text", None, "m-2")
        assert len(smtp.messages) == 1

    def test_an_unreachable_server_is_transient_and_not_sent(self):
        email = SmtpEmail("127.0.0.1", free_port(), timeout=2)
        with pytest.raises(TransientSendError) as unreachable:
            email.send_email("p@example.org", "Hi", "Text", None)
        assert unreachable.value.maybe_sent is False

    def test_login_is_used_when_configured(self):
        with FakeSmtp(credentials=("clinic", "s3cret")) as smtp:
            SmtpEmail(smtp.host, smtp.port, username="clinic", password="s3cret").send_email(
                "p@example.org", "Hi", "Text", None
            )
            assert smtp.envelopes[0]["login"] == "clinic"
            with pytest.raises(PermanentSendError) as refused:
                SmtpEmail(smtp.host, smtp.port, username="clinic", password="wrong").send_email(
                    "p@example.org", "Hi", "Text", None
                )
            assert refused.value.code == 535
            with pytest.raises(PermanentSendError) as anonymous:
                SmtpEmail(smtp.host, smtp.port).send_email("p@example.org", "Hi", "Text", None)
            assert anonymous.value.code == 530
            assert len(smtp.messages) == 1


# --- console sinks ------------------------------------------------------------------------------

class TestConsoleSenders:
    def test_console_sms_prints_one_line_without_the_body_or_the_number(self, capsys):
        sms = ConsoleSms()
        result = sms.send_sms(PATIENT, "Your pain score question", CALLBACK, "key-1")
        line = capsys.readouterr().out
        assert line.count("\n") == 1 and result.provider_id in line
        assert "pain" not in line and PATIENT not in line
        assert sms.sent[0]["idempotency_key"] == "key-1"

    def test_console_email_prints_one_line_without_subject_or_body(self, capsys):
        email = ConsoleEmail()
        result = email.send_email("p@example.org", "Consent form", "Your answers", "<p>x</p>")
        line = capsys.readouterr().out
        assert line.count("\n") == 1 and result.provider_id in line
        assert "Consent" not in line and "answers" not in line and "p@example.org" not in line
        assert email.sent[0]["subject"] == "Consent form"


# --- built from configuration ---------------------------------------------------------------------

class TestBuiltFromConfig:
    def test_the_embedded_default_is_console(self):
        assert isinstance(build_sms_sender(Config()), ConsoleSms)
        assert isinstance(build_email_sender(Config()), ConsoleEmail)

    def test_twilio_backend_honours_the_api_base_url(self, twilio):
        config = Config(
            sms_backend="twilio", twilio_account_sid=twilio.account_sid,
            twilio_auth_token=twilio.auth_token, twilio_from_number=CLINIC,
            twilio_api_base_url=twilio.base_url,
        )
        with build_sms_sender(config) as sms:
            sms.send_sms(PATIENT, "Hello", CALLBACK)
        assert twilio.sms_count(PATIENT) == 1

    @pytest.mark.parametrize(
        "sender, form",
        [({"twilio_from_number": CLINIC}, {"From": CLINIC}),
         ({"twilio_messaging_service_sid": MESSAGING_SERVICE},
          {"MessagingServiceSid": MESSAGING_SERVICE})],
        ids=["TWILIO_FROM_NUMBER", "TWILIO_MESSAGING_SERVICE_SID"],
    )
    def test_twilio_backend_sends_as_the_configured_sender(self, twilio, sender, form):
        """The one sender set, and nothing else: not the clinic's own line, and no `From`
        beside a messaging service (the service picks the number from its pool)."""
        config = Config(
            sms_backend="twilio", twilio_account_sid=twilio.account_sid,
            twilio_auth_token=twilio.auth_token, twilio_api_base_url=twilio.base_url,
            clinic_phone=CLINIC_PHONE, **sender,
        )
        with build_sms_sender(config) as sms:
            sms.send_sms(PATIENT, "Hello", CALLBACK)
        [request] = twilio.requests
        assert request["form"] == {"To": PATIENT, "Body": "Hello", "StatusCallback": CALLBACK,
                                   **form}
        assert twilio.sms_count(PATIENT) == 1

    def test_smtp_backend_sends_from_email_from(self, smtp):
        config = Config(email_backend="smtp", smtp_host=smtp.host, smtp_port=smtp.port,
                        email_from="appointments@clinic.example")
        build_email_sender(config).send_email("p@example.org", "Hi", "Text", None)
        assert smtp.messages[0]["From"] == "appointments@clinic.example"

    @pytest.mark.parametrize(
        "changes, missing",
        [({"sms_backend": "twilio"}, "TWILIO_ACCOUNT_SID"),
         ({"sms_backend": "twilio", "twilio_account_sid": "AC1", "twilio_auth_token": "t"},
          "TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID"),
         ({"sms_backend": "carrier-pigeon"}, "SMS_BACKEND"),
         ({"email_backend": "smtp"}, "SMTP_HOST"),
         ({"email_backend": "fax"}, "EMAIL_BACKEND")],
    )
    def test_incomplete_settings_fail_at_start_up(self, changes, missing):
        config = Config(**changes)
        with pytest.raises(ValueError, match=missing):
            build = build_sms_sender if "sms_backend" in changes else build_email_sender
            build(config)
