"""Twilio's webhooks into notify: signed as Twilio signs them (by FakeTwilio), posted to the app
on PostgreSQL. Replies reach booking as events; delivery reports move messages on, never back."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from twilio.request_validator import RequestValidator

from tests.integration.notify.conftest import (
    EMAIL,
    PHONE,
    PUBLIC_NOTIFY,
    appointment_event,
    contact,
    new_id,
)
from tests.integration.notify.test_notifier import STARTS, book

SMS_URL = f"{PUBLIC_NOTIFY}/webhooks/twilio/sms"
STATUS_URL = f"{PUBLIC_NOTIFY}/webhooks/twilio/status"


def post(client, request):
    url, form, headers = request
    return client.post(url.removeprefix(PUBLIC_NOTIFY), data=form, headers=headers)


@pytest.fixture
def client(notifier):
    return notifier.app().test_client()


def reply(notifier, client, body, phone=PHONE):
    return post(client, notifier.twilio.inbound_sms_request(phone, body, SMS_URL))


@pytest.mark.parametrize("body, intent, score", [
    ("YES", "confirm", None), ("c", "confirm", None), ("No.", "cancel", None),
    ("STOP", "opt_out", None), ("unstop", "opt_in", None), ("7", "score", 7),
    ("7/10", "score", 7), ("No problem, see you then", "other", None),
])
def test_a_reply_is_published_for_booking_with_its_intent(notifier, client, body, intent, score):
    book(notifier, patient_id="p-42")
    response = reply(notifier, client, body)
    assert response.status_code == 200
    assert response.mimetype == "text/xml" and b"<Response>" in response.data
    [event] = notifier.published("notify.reply.received")
    assert event.data["intent"] == intent and event.data["score"] == score
    assert event.data["patient_id"] == "p-42" and event.data["phone"] == PHONE
    assert set(event.data) == {"patient_id", "appointment_id", "phone", "intent", "score",
                               "message_sid", "followup_id"}


def test_a_reply_names_the_appointment_of_the_last_text_sent_to_that_number(notifier, client):
    """A mother and her son share a phone and both get a confirmation, the mother's last:
    her NO answers her text, so the reply names her appointment and her, although the son's
    contact is the one updated last (his booking event came after hers)."""
    mother, _ = book(notifier, patient_id="p-mother", starts_at=STARTS + timedelta(days=1),
                     contact=contact(email_ok=False))
    notifier.clock.advance(timedelta(minutes=1))
    son, _ = book(notifier, patient_id="p-son", contact=contact(email_ok=False))
    notifier.dispatch()                              # both confirmations
    assert [m["to"] for m in notifier.twilio.messages] == [PHONE, PHONE]
    with notifier.engine.begin() as connection:      # the mother's went out a minute later
        connection.exec_driver_sql(
            "UPDATE messages SET sent_at = sent_at + interval '1 minute' "
            "WHERE appointment_id = %(id)s", {"id": mother})
    reply(notifier, client, "NO")
    [event] = notifier.published("notify.reply.received")
    assert (event.data["appointment_id"], event.data["patient_id"]) == (mother, "p-mother")


def test_a_reply_answers_the_last_text_inviting_one_even_if_its_appointment_is_gone(
        notifier, client):
    """Tomorrow's confirmation invites a reply; next week's came later, and that appointment
    has been cancelled since; a form link for the week after came last but invites nothing:
    the NO names next week's appointment, which booking then leaves alone, rather than
    tomorrow's, which the patient did not answer."""
    from tests.integration.notify.test_notifier import form_event
    tomorrow, _ = book(notifier, patient_id="p-1", contact=contact(email_ok=False))
    notifier.dispatch()                              # tomorrow's confirmation
    notifier.clock.advance(timedelta(minutes=1))
    next_week, _ = book(notifier, patient_id="p-1", starts_at=STARTS + timedelta(days=7),
                        contact=contact(email_ok=False))
    notifier.dispatch()                              # next week's confirmation, the last one
    notifier.handle(appointment_event("cancelled", next_week, STARTS + timedelta(days=7),
                                      notifier.clock.now(), patient_id="p-1",
                                      contact=contact(email_ok=False)))
    notifier.clock.advance(timedelta(minutes=1))
    later, _ = book(notifier, patient_id="p-1", starts_at=STARTS + timedelta(days=14),
                    contact=contact(sms=False))     # its confirmation by email only
    notifier.handle(form_event(notifier, "sent", later, "f-1", url="https://f/x",
                               appointment_starts_at=(STARTS + timedelta(days=14)).isoformat()))
    notifier.dispatch()                              # the cancellation notice and the form link
    assert any("https://f/x" in m["body"] for m in notifier.sms_to())
    notifier.clock.advance(timedelta(minutes=1))
    reply(notifier, client, "NO")
    [event] = notifier.published("notify.reply.received")
    assert event.data["appointment_id"] == next_week != tomorrow


@pytest.mark.parametrize("body, intent, score, answers", [
    ("8", "score", 8, "check-in"), ("No", "cancel", None, "check-in"),
    ("YES", "confirm", None, "review")])
def test_a_reply_after_a_check_in_answers_the_check_in_not_a_later_confirmation(
        notifier, client, body, intent, score, answers):
    """The injection was attended and a review booked (its confirmation invited a YES or NO);
    then the check-in asked how the pain is. "8", or "No" (not improving), answers the
    check-in: it names the injection's appointment and the follow-up, never the review,
    which a "No" would otherwise cancel. A YES answers the last text asking for one: the
    review's confirmation (a check-in asks for no YES)."""
    injection, _ = book(notifier, patient_id="p-1", contact=contact(email_ok=False))
    notifier.handle(appointment_event("attended", injection, STARTS, notifier.clock.now(),
                                      contact=contact(email_ok=False)))
    review, _ = book(notifier, patient_id="p-1", starts_at=STARTS + timedelta(days=20),
                     contact=contact(email_ok=False))
    notifier.dispatch()                               # the review's confirmation
    notifier.clock.advance(timedelta(days=1))
    followup_id = _followup(notifier, notifier.clock.now(), email_ok=False,
                            appointment_id=injection)
    notifier.dispatch()                               # the check-in, the last text sent
    assert "how is your pain" in notifier.sms_to()[-1]["body"]
    notifier.clock.advance(timedelta(minutes=5))

    reply(notifier, client, body)

    [event] = notifier.published("notify.reply.received")
    assert (event.data["intent"], event.data["score"]) == (intent, score)
    expected = (injection, followup_id) if answers == "check-in" else (review, None)
    assert (event.data["appointment_id"], event.data["followup_id"]) == expected


def test_a_score_answers_the_last_check_in_even_after_a_later_confirmation(notifier, client):
    """The check-in came, then the review was booked and confirmed by text; the patient's
    "6" still answers the check-in, the only text that asked for a number."""
    injection, _ = book(notifier, patient_id="p-1", contact=contact(email_ok=False))
    notifier.handle(appointment_event("attended", injection, STARTS, notifier.clock.now(),
                                      contact=contact(email_ok=False)))
    followup_id = _followup(notifier, notifier.clock.now(), email_ok=False,
                            appointment_id=injection)
    notifier.dispatch()                               # the check-in
    notifier.clock.advance(timedelta(minutes=5))
    book(notifier, patient_id="p-1", starts_at=STARTS + timedelta(days=20),
         contact=contact(email_ok=False))
    notifier.dispatch()                               # the review's confirmation, last
    notifier.clock.advance(timedelta(minutes=5))

    reply(notifier, client, "6")

    [event] = notifier.published("notify.reply.received")
    assert (event.data["score"], event.data["followup_id"]) == (6, followup_id)


def test_a_reply_names_no_appointment_when_none_was_texted_about(notifier, client):
    """Booked, but nothing sent yet (or only emails): no appointment is named, and booking
    falls back to the patient's next one."""
    book(notifier, patient_id="p-42", contact=contact(sms=False))
    notifier.dispatch()                              # the email confirmation only
    reply(notifier, client, "NO")
    [event] = notifier.published("notify.reply.received")
    assert (event.data["appointment_id"], event.data["patient_id"]) == (None, "p-42")


def test_a_reply_from_an_unknown_number_still_reaches_booking_without_a_patient(notifier, client):
    reply(notifier, client, "YES", phone="+447400555555")
    [event] = notifier.published("notify.reply.received")
    assert event.data["patient_id"] is None and event.subject.startswith("SM")


def test_a_retried_webhook_is_applied_once(notifier, client):
    request = notifier.twilio.inbound_sms_request(PHONE, "YES", SMS_URL)
    assert post(client, request).status_code == 200
    assert post(client, request).status_code == 200
    assert len(notifier.published("notify.reply.received")) == 1


@pytest.mark.parametrize("tamper", ["signature", "body", "token"])
def test_an_unsigned_or_forged_webhook_is_refused(notifier, client, tamper):
    url, form, headers = notifier.twilio.inbound_sms_request(
        PHONE, "STOP", SMS_URL, auth_token="wrong" if tamper == "token" else None)
    if tamper == "signature":
        headers.pop("X-Twilio-Signature")
    if tamper == "body":
        form["Body"] = "YES"
    response = client.post("/webhooks/twilio/sms", data=form, headers=headers)
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"
    assert notifier.published("notify.reply.received") == []


def test_a_webhook_without_its_fields_is_a_clear_400(notifier, client):
    url, form, headers = notifier.twilio.inbound_sms_request(PHONE, "YES", SMS_URL)
    del form["MessageSid"], form["SmsSid"], form["SmsMessageSid"]
    form, headers = _resigned(notifier, url, form, headers)
    response = client.post("/webhooks/twilio/sms", data=form, headers=headers)
    assert response.status_code == 400
    assert "MessageSid" in response.get_json()["error"]["fields"]


def _resigned(notifier, url, form, headers):
    headers["X-Twilio-Signature"] = RequestValidator(
        notifier.twilio.auth_token).compute_signature(url, form)
    return form, headers


@pytest.mark.parametrize(("hook", "field", "value"), [
    ("sms", "From", "whatsapp:+447400123456"),
    ("sms", "MessageSid", "SM" + "a" * 70),
    ("status", "MessageSid", "SM" + "a" * 70),
    ("status", "MessageStatus", "delivered-but-with-a-much-longer-name"),
    ("status", "ErrorCode", "3" * 25),
])
def test_a_signed_webhook_with_an_overlong_field_is_a_clear_400(notifier, client, hook, field,
                                                                 value):
    """Values no column can hold are refused field by field, not failed as a 500."""
    if hook == "sms":
        url, form, headers = notifier.twilio.inbound_sms_request(PHONE, "STOP", SMS_URL)
    else:
        book(notifier, contact=contact(email_ok=False))
        notifier.dispatch()
        url, form, headers = notifier.twilio.status_callback_request(
            notifier.sms_to()[0]["sid"], "delivered", url=STATUS_URL)
    form[field] = value
    form, headers = _resigned(notifier, url, form, headers)
    response = client.post(url.removeprefix(PUBLIC_NOTIFY), data=form, headers=headers)
    assert response.status_code == 400, response.data
    assert field in response.get_json()["error"]["fields"]


def test_stop_holds_every_sms_until_start(notifier, client):
    appointment_id, _ = book(notifier, contact=contact(email_ok=False))
    notifier.dispatch()
    reply(notifier, client, "STOP")
    notifier.clock.set("2026-11-28T10:00:00+00:00")
    notifier.dispatch()
    [reminder, _] = notifier.rows(kind="reminder")
    assert reminder.status == "cancelled" and reminder.error == "opted out of SMS"
    assert len(notifier.sms_to()) == 1
    reply(notifier, client, "START")
    notifier.clock.set("2026-11-30T08:00:00+00:00")
    notifier.dispatch()
    assert len(notifier.sms_to()) == 2


def sent_sms(notifier, **contact_changes):
    appointment_id, _ = book(notifier, contact=contact(**contact_changes))
    notifier.dispatch()
    [row] = [r for r in notifier.rows(kind="confirmation") if r.channel == "sms"]
    return appointment_id, row


def report(notifier, client, sid, status, error_code=None):
    return post(client, notifier.twilio.status_callback_request(sid, status,
                                                                error_code=error_code))


def test_delivered_is_recorded_and_published(notifier, client):
    appointment_id, row = sent_sms(notifier)
    assert report(notifier, client, row.provider_id, "delivered").status_code == 204
    [after] = notifier.rows(id=row.id)
    assert after.status == "delivered" and after.delivered_at == notifier.clock.now()
    [event] = notifier.published("notify.message.delivered")
    assert event.subject == appointment_id and event.data["message_id"] == str(row.id)


def test_a_late_sent_report_does_not_undo_delivered(notifier, client):
    _, row = sent_sms(notifier)
    report(notifier, client, row.provider_id, "delivered")
    report(notifier, client, row.provider_id, "sent")
    [after] = notifier.rows(id=row.id)
    assert after.status == "delivered" and after.provider_status == "delivered"
    assert len(notifier.published("notify.message.delivered")) == 1


def test_a_repeated_report_counts_once(notifier, client):
    _, row = sent_sms(notifier)
    request = notifier.twilio.status_callback_request(row.provider_id, "delivered")
    post(client, request)
    post(client, request)
    assert len(notifier.published("notify.message.delivered")) == 1


def _sent_checkin(notifier):
    followup_id = new_id()
    from shared.events import Event
    notifier.handle(Event(type="booking.followup.scheduled", source="/booking",
                          subject=followup_id, time=notifier.clock.now(), data={
                              "followup_id": followup_id, "appointment_id": new_id(),
                              "patient_id": "p-1", "kind": "checkin",
                              "due_at": notifier.clock.now().isoformat(),
                              "treatment": {"code": "TPI", "name": "Trigger point injection"},
                              "contact": contact(email_ok=True)}))
    notifier.dispatch()
    [checkin] = notifier.rows(kind="checkin")
    assert checkin.status == "sent"
    return checkin


def test_an_undelivered_sms_fails_and_goes_by_email_when_it_had_no_email_twin(notifier, client):
    notifier.handle(appointment_event("booked", new_id(), STARTS, notifier.clock.now(),
                                      contact=contact(email_ok=True)))
    checkin = _sent_checkin(notifier)
    report(notifier, client, checkin.provider_id, "undelivered", error_code=30003)
    [after] = notifier.rows(id=checkin.id)
    assert after.status == "failed" and after.error_code == "30003"
    notifier.dispatch()
    [fallback] = notifier.rows(kind="sms_fallback")
    assert fallback.status == "sent" and fallback.fallback_of == checkin.id
    assert any("how is your pain" in m.get_body(("plain",)).get_content()
               for m in notifier.smtp.messages_to(EMAIL))
    assert [e.data["error_code"] for e in notifier.published("notify.message.failed")] == [
        "30003"]


def test_the_email_of_a_check_in_reported_undelivered_at_night_waits_for_the_morning(
        notifier, client):
    """Twilio can report "undelivered" hours after the send: the check-in's email then keeps
    the check-in's quiet hours (21:00-08:00) instead of arriving at 23:30."""
    checkin = _sent_checkin(notifier)
    notifier.clock.set("2026-11-26T23:30:00+00:00")
    report(notifier, client, checkin.provider_id, "undelivered", error_code=30003)
    notifier.dispatch()
    [fallback] = notifier.rows(kind="sms_fallback")
    assert fallback.status == "pending"
    assert fallback.due_at == datetime.fromisoformat("2026-11-27T08:00:00+00:00")
    assert notifier.smtp.messages_to(EMAIL) == []
    notifier.clock.set("2026-11-27T08:00:00+00:00")
    notifier.dispatch()
    [fallback] = notifier.rows(kind="sms_fallback")
    assert fallback.status == "sent"
    assert len(notifier.smtp.messages_to(EMAIL)) == 1


def test_a_report_for_a_message_we_do_not_know_is_accepted_and_ignored(notifier, client):
    book(notifier)
    notifier.dispatch()
    other = notifier.twilio.status_callback_request(
        notifier.sms_to()[0]["sid"], "delivered")
    url, form, headers = other
    form["MessageSid"] = "SM" + "0" * 32
    from twilio.request_validator import RequestValidator
    headers["X-Twilio-Signature"] = RequestValidator(
        notifier.twilio.auth_token).compute_signature(url, form)
    response = client.post("/webhooks/twilio/status", data=form, headers=headers)
    assert response.status_code == 204
    assert notifier.published("notify.message.delivered") == []


def test_the_sms_cap_spaces_sends_across_workers(notifier):
    """SMS_MAX_PER_SECOND holds across workers: each send takes the next slot in the
    database, so the slots handed out are 1/rate apart whoever asks. A send whose slot is
    later is not begun: its sender waits first."""
    from services.notify.db import start_sms_send
    from shared.db import one_statement
    interval = timedelta(milliseconds=250)
    now = notifier.clock.now()
    taken = []
    for _ in range(8):
        with one_statement(notifier.context.engine) as connection:
            taken.append(start_sms_send(connection, uuid.uuid4(), uuid.uuid4(), now,
                                        timedelta(seconds=60), interval))
    assert [slot for slot, _ in taken] == [now + n * interval for n in range(8)]
    # No such message was claimed, so none began (None: left to `begin_send`, which will find
    # nothing to begin); the send path itself is tested in test_send_path.py.
    assert [begun for _, begun in taken] == [None] * 8
    notifier.clock.advance(timedelta(seconds=10))
    with one_statement(notifier.context.engine) as connection:
        assert start_sms_send(connection, uuid.uuid4(), uuid.uuid4(), notifier.clock.now(),
                              timedelta(seconds=60), interval) == (notifier.clock.now(), None)


def test_stop_while_an_sms_is_claimed_but_not_begun_stops_it(notifier, client):
    book(notifier, contact=contact(email_ok=False))
    notifier.dispatch()
    notifier.clock.set("2026-11-28T10:00:00+00:00")
    scheduler = notifier.scheduler()
    [reminder] = notifier.claim(scheduler)
    reply(notifier, client, "STOP")
    scheduler.deliver(reminder)
    notifier.dispatch()
    assert len(notifier.sms_to()) == 1
    [row] = notifier.rows(id=reminder.id)
    assert row.status == "cancelled" and row.error == "opted out of SMS"


def test_a_report_that_overtakes_our_record_of_the_send_is_applied_when_we_record_it(
        notifier, client):
    """Twilio can call back before the sender has committed the sid it was given."""
    from tests.integration.notify.test_notifier import LEASE, _claimed_by_a_worker_that_dies
    book(notifier, contact=contact(email_ok=False))
    slow, message = _claimed_by_a_worker_that_dies(notifier, "sms")
    sid = slow._send(message).provider_id
    assert report(notifier, client, sid, "delivered").status_code == 204
    assert notifier.published("notify.message.delivered") == []
    notifier.clock.advance(LEASE + timedelta(seconds=1))
    notifier.dispatch()                              # the send is found and recorded
    [row] = notifier.rows(kind="confirmation")
    assert row.status == "delivered" and row.provider_id == sid
    assert len(notifier.published("notify.message.delivered")) == 1
    assert len(notifier.sms_to()) == 1


def test_a_report_on_a_message_sent_with_no_status_of_twilios_is_applied(notifier, client):
    from services.notify.db import messages
    _, row = sent_sms(notifier)
    with notifier.engine.begin() as connection:
        connection.execute(messages.update().where(messages.c.id == row.id)
                           .values(provider_status="unknown"))
    assert report(notifier, client, row.provider_id, "delivered").status_code == 204
    assert notifier.rows(id=row.id)[0].status == "delivered"


def _sent_reported_early_and_recorded(notifier, client, dying, message) -> str:
    """`dying` (holding `message`, begun) sends it; Twilio's "delivered" arrives before the
    sid is recorded and is kept; the worker records the sid and dies before looking for kept
    reports. The sid."""
    from services.notify.db import record_sent
    from shared.db import one_statement
    sid = dying._send(message).provider_id
    assert report(notifier, client, sid, "delivered").status_code == 204
    with one_statement(notifier.context.engine) as connection:   # recorded, then the crash
        assert record_sent(connection, message.id, dying.token, notifier.clock.now(), sid,
                           "queued", dying._event("notify.message.sent", message,
                                                  notifier.clock, status="sent"))
    return sid


def test_a_report_for_a_sid_a_dying_worker_recorded_is_applied_by_the_next_round(
        notifier, client):
    """The report came before the sid was recorded; the sender recorded it and died before
    looking for kept reports. Any worker's next round applies it: nothing is stranded."""
    from tests.integration.notify.test_notifier import _claimed_by_a_worker_that_dies
    book(notifier, contact=contact(email_ok=False))
    dying, message = _claimed_by_a_worker_that_dies(notifier, "sms")
    sid = _sent_reported_early_and_recorded(notifier, client, dying, message)
    assert notifier.rows(kind="confirmation")[0].status == "sent"
    notifier.dispatch()                              # another worker's round
    [row] = notifier.rows(kind="confirmation")
    assert row.status == "delivered" and row.provider_id == sid
    assert len(notifier.published("notify.message.delivered")) == 1
    assert len(notifier.sms_to()) == 1


def test_a_kept_report_that_cannot_be_applied_now_holds_up_no_other_and_is_applied_later(
        notifier, client):
    """Two reports kept before their sids were recorded; one message's row is locked by a
    transaction that outlasts the database's lock timeout, so applying its report fails. The
    round still applies the other, sends on, and the next round applies the first."""
    from services.notify.db import messages, recorded_early_reports
    from shared.db import one_statement
    from tests.integration.notify.test_notifier import LEASE
    for phone in (PHONE, "+447400123457"):
        book(notifier, patient_id=f"p-{phone[-1]}", contact=contact(phone=phone, email_ok=False))
    dying = notifier.scheduler()
    claimed = notifier.claim(dying, "sms")
    assert len(claimed) == 2
    for message in claimed:
        with notifier.context.uow() as uow:
            assert uow.messages.begin_send(message.id, dying.token, LEASE)
            uow.commit()
        _sent_reported_early_and_recorded(notifier, client, dying, message)
    engine = notifier.context.engine
    with one_statement(engine) as connection:       # in the order the round will take them
        first, _ = recorded_early_reports(connection)[0]
    [locked] = [m for m in claimed if m.id == first]
    [other] = [m for m in claimed if m.id != first]
    with engine.connect() as connection:
        database = connection.exec_driver_sql("SELECT current_database()").scalar()
        connection.exec_driver_sql(f'ALTER DATABASE "{database}" SET lock_timeout = 300')
        connection.commit()
    engine.dispose()                                 # new connections take the timeout
    with engine.connect() as holder:
        holder.execute(messages.select().where(messages.c.id == locked.id).with_for_update())
        notifier.dispatch()                          # another worker's round: no error
        assert notifier.rows(id=other.id)[0].status == "delivered"
        assert notifier.rows(id=locked.id)[0].status == "sent"
        holder.rollback()
    notifier.dispatch()
    assert notifier.rows(id=locked.id)[0].status == "delivered"
    assert len(notifier.published("notify.message.delivered")) == 2
    assert len(notifier.sms_to(PHONE)) == 1 and len(notifier.sms_to("+447400123457")) == 1


def _agrees_to_email(notifier):
    """The patient's contact as a later event carries it (here a follow-up planned for
    another appointment, a fortnight away): email agreed now."""
    from shared.events import Event
    followup_id = new_id()
    notifier.handle(Event(type="booking.followup.scheduled", source="/booking",
                          subject=followup_id, time=notifier.clock.now(), data={
                              "followup_id": followup_id, "appointment_id": new_id(),
                              "patient_id": "p-1", "kind": "checkin",
                              "due_at": (notifier.clock.now() + timedelta(days=14)).isoformat(),
                              "treatment": {"code": "TPI", "name": "Trigger point injection"},
                              "contact": contact(email_ok=True)}))


def _fallback_pending_for(notifier, client, kind, appointment_id):
    """The patient had not agreed to email when this SMS was planned (so it has no email
    twin) and agreed since: its undelivered report leaves a fallback email pending."""
    [row] = [r for r in notifier.rows(kind=kind, channel="sms")
             if r.appointment_id == appointment_id]
    assert row.status == "sent"
    _agrees_to_email(notifier)
    report(notifier, client, row.provider_id, "undelivered", error_code=30003)
    [fallback] = [r for r in notifier.rows(kind="sms_fallback") if r.fallback_of == row.id]
    assert fallback.status == "pending"
    return fallback


def test_a_pending_fallback_email_naming_the_old_time_is_dropped_on_a_new_time(notifier,
                                                                             client):
    appointment_id, _ = book(notifier, contact=contact(email_ok=False))
    notifier.dispatch()
    fallback = _fallback_pending_for(notifier, client, "confirmation", appointment_id)
    notifier.handle(appointment_event(
        "rescheduled", appointment_id, STARTS + timedelta(days=1), notifier.clock.now(),
        previous_starts_at=STARTS.isoformat(), contact=contact(email_ok=True)))
    notifier.dispatch()
    [after] = notifier.rows(id=fallback.id)
    assert (after.status, after.error) == ("cancelled", "replaced by the new time")


def test_a_pending_fallback_email_of_a_form_link_is_dropped_once_the_form_is_in(notifier,
                                                                              client):
    """... while the fallback of the appointment's confirmation still goes."""
    from tests.integration.notify.test_notifier import form_event
    appointment_id, form_id = new_id(), new_id()
    book(notifier, appointment_id, contact=contact(email_ok=False))
    notifier.handle(form_event(notifier, "sent", appointment_id, form_id,
                               url="https://forms.clinic.example/f/t",
                               contact=contact(email_ok=False)))
    notifier.dispatch()
    of_form = _fallback_pending_for(notifier, client, "form_link", appointment_id)
    of_confirmation = _fallback_pending_for(notifier, client, "confirmation", appointment_id)
    notifier.handle(form_event(notifier, "completed", appointment_id, form_id,
                               contact=contact(email_ok=True)))
    assert notifier.rows(id=of_form.id)[0].status == "cancelled"
    assert notifier.rows(id=of_confirmation.id)[0].status == "pending"


def _followup(notifier, due_at, email_ok=True, appointment_id=None) -> str:
    """A check-in planned for `due_at` (`booking.followup.scheduled`); its follow-up's id."""
    from shared.events import Event
    appointment_id, followup_id = appointment_id or new_id(), new_id()
    notifier.handle(Event(type="booking.followup.scheduled", source="/booking",
                          subject=appointment_id, time=notifier.clock.now(), data={
                              "followup_id": followup_id, "appointment_id": appointment_id,
                              "patient_id": "p-1", "kind": "checkin",
                              "due_at": due_at.isoformat(),
                              "treatment": {"code": "TPI", "name": "Trigger point injection"},
                              "contact": contact(email_ok=email_ok)}))
    return followup_id


@pytest.mark.parametrize("stop_first", [True, False], ids=["STOP, then planned",
                                                             "planned, then STOP"])
def test_a_patient_who_texted_stop_gets_the_check_in_by_email(notifier, client, stop_first):
    """The check-in goes by one channel, SMS first: after a STOP (meant, say, for the
    reminders) a patient who agreed to email is still asked how the pain is, by email, at the
    check-in's time; and never by SMS."""
    due = notifier.clock.now() + timedelta(days=14)
    if stop_first:
        reply(notifier, client, "STOP")
    _followup(notifier, due)
    if not stop_first:
        reply(notifier, client, "STOP")
    notifier.clock.set(due)
    notifier.dispatch()
    assert not [m for m in notifier.sms_to() if "how is your pain" in m["body"]]
    [mail] = notifier.smtp.messages_to(EMAIL)
    assert "How is your pain" in mail.get_body(("plain",)).get_content()
    assert {(r.channel, r.status) for r in notifier.rows(kind="checkin")} <= {
        ("sms", "cancelled"), ("email", "sent")}


def test_without_email_consent_a_stop_leaves_no_check_in(notifier, client):
    due = notifier.clock.now() + timedelta(days=14)
    _followup(notifier, due, email_ok=False)
    reply(notifier, client, "STOP")
    notifier.clock.set(due)
    notifier.dispatch()
    assert notifier.smtp.messages == [] and notifier.sms_to() == []


def test_a_start_before_the_check_in_is_due_has_it_go_by_text_alone(notifier, client):
    due = notifier.clock.now() + timedelta(days=14)
    _followup(notifier, due)
    reply(notifier, client, "STOP")
    reply(notifier, client, "START")
    notifier.clock.set(due)
    notifier.dispatch()
    assert [m for m in notifier.sms_to() if "how is your pain" in m["body"]]
    assert notifier.smtp.messages == []
