"""The phone system's webhooks: a signed missed call from a patient becomes one
`booking.call.missed`, however the number is written and however often the phone system
retries; anything unsigned, forged, stale or malformed is refused with a 4xx, never a 500."""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import time

import pytest
from twilio.request_validator import RequestValidator

from services.booking.app import create_app

SECRET = "dev-phone-secret"            # Config's default PHONE_WEBHOOK_SECRET
NOW = "2026-10-19T08:00:00+00:00"


def call(**changes) -> bytes:
    return json.dumps({"event": "call.missed", "call_id": "call-1", "from": "07400 123456",
                       "to": "01632 960000", "at": NOW, **changes}).encode()


def signature(body: bytes, stamp: int | None = None, secret: str = SECRET) -> str:
    stamp = int(time.time()) if stamp is None else stamp
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def post(site, body: bytes, header: str, content_type: str = "application/json"):
    return site.client.post("/webhooks/phone", data=body, content_type=content_type,
                            headers={"X-Clinic-Signature": header})


def missed_calls(site) -> list[dict]:
    return [e for e in site.events() if e["type"] == "booking.call.missed"]


def test_a_missed_call_from_a_patients_number_written_nationally_finds_them_once(booking):
    body = call()
    first = post(booking, body, signature(body))
    again = post(booking, body, signature(body))          # the phone system retries
    assert (first.status_code, first.get_json()) == (200, {"status": "recorded"})
    assert (again.status_code, again.get_json()) == (200, {"status": "duplicate"})
    [event] = missed_calls(booking)
    assert event["data"]["patient_id"] == booking.patient_id
    assert event["data"]["contact"]["phone"] == "+447400123456"
    # notify's tests (test_policy.missed_call) build the event with exactly these fields
    assert set(event["data"]) == {"call_id", "patient_id", "at", "contact"}


def test_a_signed_body_is_read_whatever_its_content_type(booking):
    body = call()
    response = post(booking, body, signature(body), content_type="text/plain")
    assert response.status_code == 200
    assert len(missed_calls(booking)) == 1


def test_a_header_with_spaces_after_its_commas_is_read(booking):
    body = call()
    response = post(booking, body, signature(body).replace(",", ", "))
    assert response.status_code == 200


@pytest.mark.parametrize("header", [
    "t={now},v1=é",                                       # not even hex
    "t={now},v1=" + "0" * 64,                             # wrong
    "t=yesterday,v1=" + "0" * 64,
    "t={now}",
    "{stale}",                                            # signed six minutes ago
    "{other_secret}",
])
def test_a_forged_stale_or_broken_signature_is_refused_with_403(booking, header):
    body = call()
    now = int(time.time())
    header = header.format(now=now, stale=signature(body, now - 360),
                           other_secret=signature(body, secret="not-ours"))
    response = post(booking, body, header)
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"
    assert missed_calls(booking) == []


@pytest.mark.parametrize(("body", "status", "field"), [
    (b"{not json", 400, None),
    (b"[" * 100_000, 400, None),          # nested past the parser's depth: not a 500
    (call(at="0001-01-01T00:00:00+05:00"), 422, "at"),
    (call(event="call.dropped"), 422, "event"),
    (b"[1, 2]", 422, None),
])
def test_a_signed_but_malformed_call_is_a_clear_4xx_and_records_nothing(
        booking, body, status, field):
    response = post(booking, body, signature(body))
    assert response.status_code == status, response.get_json()
    if field:
        assert field in response.get_json()["error"]["fields"]
    assert missed_calls(booking) == []


def test_a_twilio_voice_callback_is_checked_against_the_url_it_called_query_included(booking):
    """Twilio signs the whole URL it was given, query string and all."""
    context = booking.app.extensions["clinic"]
    config = context.config.with_(twilio_auth_token="voice-token",
                                  public_base_url_booking="https://booking.clinic.example")
    client = create_app(config, dataclasses.replace(context, config=config)).test_client()
    form = {"CallSid": "CA1", "CallStatus": "no-answer", "From": "+447400123456",
            "To": "+441632960000"}
    url = "https://booking.clinic.example/webhooks/twilio/voice?site=wells"
    signed = RequestValidator("voice-token").compute_signature(url, form)
    response = client.post("/webhooks/twilio/voice?site=wells", data=form,
                           headers={"X-Twilio-Signature": signed})
    assert response.status_code == 200
    [event] = missed_calls(booking)
    assert event["data"]["patient_id"] == booking.patient_id
    forged = client.post("/webhooks/twilio/voice?site=wells", data={**form, "CallSid": "CA2"},
                         headers={"X-Twilio-Signature": signed})
    assert forged.status_code == 403
