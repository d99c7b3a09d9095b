"""The notifier end to end inside one process: events in, messages out through the twilio SDK to
FakeTwilio and smtplib to aiosmtpd, on PostgreSQL, with the clock moved by the test."""
from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
import uuid
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services.notify.db import messages, metadata
from services.notify.senders import TransientSendError
from shared.events import Event
from tests.integration.notify.conftest import (
    EMAIL,
    PHONE,
    appointment_event,
    contact,
    context_of,
    new_id,
)

STARTS = datetime.fromisoformat("2026-11-30T10:00:00+00:00")
LEASE = timedelta(seconds=60)            # NOTIFY_LEASE_SECONDS' default


def book(notifier, appointment_id=None, starts_at=STARTS, **extra):
    appointment_id = appointment_id or new_id()
    event = appointment_event("booked", appointment_id, starts_at, notifier.clock.now(), **extra)
    notifier.handle(event)
    return appointment_id, event


def _eventually(predicate, what: str, timeout: float = 10.0) -> None:
    """Until `predicate` holds; a test that gives up waiting fails, saying for what, rather
    than going on to check a situation it never set up."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.01)


def _next_sms_slot(notifier) -> datetime | None:
    """The SMS cap's next free slot as the database holds it (None before any SMS)."""
    from services.notify.db import rate_limits
    with notifier.engine.connect() as connection:
        return connection.execute(sa.select(rate_limits.c.next_slot_at).where(
            rate_limits.c.name == "sms")).scalar()


def test_migrations_create_exactly_the_tables_the_code_uses(notifier):
    with notifier.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_a_booking_is_confirmed_at_once_by_sms_and_email_and_reminders_wait(notifier):
    appointment_id, _ = book(notifier)
    assert notifier.dispatch() == 2
    [sms] = notifier.sms_to()
    assert "Trigger point injection" in sms["body"] and "Mon 30 Nov at 10:00" in sms["body"]
    assert "Reply YES to confirm, NO to cancel" in sms["body"]
    assert sms["status_callback"] == "https://notify.clinic.example/webhooks/twilio/status"
    [mail] = notifier.smtp.messages_to(EMAIL)
    assert "Mon 30 Nov at 10:00" in mail.get_body(("plain",)).get_content()
    reminders = notifier.rows(kind="reminder")
    assert {(r.channel, r.due_at) for r in reminders} == {
        (channel, STARTS - offset) for channel in ("sms", "email")
        for offset in (timedelta(hours=48), timedelta(hours=2))}
    assert all(r.status == "pending" for r in reminders)
    sent = notifier.published("notify.message.sent")
    assert {e.data["channel"] for e in sent} == {"sms", "email"}
    assert all(e.subject == appointment_id for e in sent)
    assert all("body" not in e.data and PHONE not in str(e.data) for e in sent)


def test_reminders_go_at_their_time_once_each(notifier):
    book(notifier)
    notifier.dispatch()
    notifier.clock.set("2026-11-28T09:59:00+00:00")
    assert notifier.dispatch() == 0
    notifier.clock.set("2026-11-28T10:00:00+00:00")
    notifier.dispatch()
    notifier.clock.set("2026-11-30T08:00:30+00:00")
    notifier.dispatch()
    notifier.dispatch()
    bodies = [m["body"] for m in notifier.sms_to()]
    assert len(bodies) == 3 and sum("reminder" in b for b in bodies) == 2
    assert len(notifier.smtp.messages_to(EMAIL)) == 3


def test_a_redelivered_event_plans_nothing_twice(notifier):
    _, event = book(notifier)
    notifier.handle(event)
    assert len(notifier.rows()) == 6
    notifier.dispatch()
    assert len(notifier.sms_to()) == 1


def test_a_cancelled_appointment_gets_its_notice_and_no_reminder(notifier):
    appointment_id, _ = book(notifier)
    notifier.dispatch()
    notifier.clock.advance(timedelta(hours=1))
    notifier.handle(appointment_event("cancelled", appointment_id, STARTS, notifier.clock.now(),
                                      reason="clinic closed", cancelled_by="reception"))
    notifier.dispatch()
    notifier.clock.set("2026-11-30T09:00:00+00:00")
    notifier.dispatch()
    bodies = [m["body"] for m in notifier.sms_to()]
    assert len(bodies) == 2 and "sorry, we have had to cancel" in bodies[1]
    assert {r.status for r in notifier.rows(kind="reminder")} == {"cancelled"}


def test_a_booking_handled_after_its_cancellation_sends_nothing(notifier):
    """Two workers, or a redelivery, can handle an appointment's events out of order."""
    appointment_id = new_id()
    booked_at = notifier.clock.now()
    notifier.handle(appointment_event("cancelled", appointment_id, STARTS,
                                      booked_at + timedelta(seconds=5), cancelled_by="patient"))
    notifier.handle(appointment_event("booked", appointment_id, STARTS, booked_at))
    notifier.clock.set("2026-11-30T09:00:00+00:00")
    notifier.dispatch()
    [notice] = notifier.sms_to()                         # the cancellation's, and only that
    assert "as you asked" in notice["body"], notice["body"]
    assert notifier.rows(kind="reminder") == [] and notifier.rows(kind="confirmation") == []


def test_after_an_outage_over_both_reminder_times_only_the_later_reminder_goes(notifier):
    """The workers were down from before the 48 h reminder (28 Nov 10:00) until after the 2 h
    one (30 Nov 08:00): the patient gets one reminder on each channel, not two in a row."""
    book(notifier)
    notifier.dispatch()                                  # the confirmations
    notifier.clock.set("2026-11-30T08:30:00+00:00")
    notifier.dispatch()
    notifier.dispatch()
    assert sum("reminder" in m["body"] for m in notifier.sms_to()) == 1
    assert len(notifier.smtp.messages_to(EMAIL)) == 2    # confirmation and one reminder
    reminders = notifier.rows(kind="reminder")
    assert sorted((r.channel, r.status) for r in reminders) == [
        ("email", "cancelled"), ("email", "sent"), ("sms", "cancelled"), ("sms", "sent")]
    assert {r.error for r in reminders if r.status == "cancelled"} == {
        "superseded by a later reminder"}
    assert all(r.status == "sent" for r in reminders if r.due_at.hour == 8)


def _reminder_claimed(notifier):
    """An SMS-only booking confirmed, then at its 48 h reminder's time a scheduler that has
    claimed the reminder and not yet sent it: (appointment id, scheduler, reminder)."""
    appointment_id, _ = book(notifier, contact=contact(email_ok=False))
    notifier.dispatch()
    notifier.clock.set("2026-11-28T10:00:00+00:00")
    scheduler = notifier.scheduler()
    [reminder] = notifier.claim(scheduler)
    return appointment_id, scheduler, reminder


def test_a_reminder_claimed_as_the_appointment_is_cancelled_is_not_sent(notifier):
    appointment_id, scheduler, reminder = _reminder_claimed(notifier)
    notifier.handle(appointment_event("cancelled", appointment_id, STARTS, notifier.clock.now()))
    scheduler.deliver(reminder)
    assert not any("reminder" in m["body"] for m in notifier.sms_to())
    [row] = notifier.rows(id=reminder.id)
    assert row.status == "cancelled" and row.error == "appointment no longer coming"


def test_a_reschedule_replaces_the_reminders_and_tells_the_new_time(notifier):
    appointment_id, _ = book(notifier)
    notifier.dispatch()
    later = STARTS + timedelta(days=2, hours=4)
    notifier.clock.advance(timedelta(minutes=10))
    notifier.handle(appointment_event("rescheduled", appointment_id, later, notifier.clock.now(),
                                      previous_starts_at=STARTS.isoformat()))
    notifier.dispatch()
    assert "moved to Wed 2 Dec at 14:00" in notifier.sms_to()[-1]["body"]
    pending = [r for r in notifier.rows(kind="reminder") if r.status == "pending"]
    assert {r.due_at for r in pending} == {later - timedelta(hours=48), later - timedelta(hours=2)}
    assert all(context_of(r)["starts_at"].startswith("2026-12-02T14:00") for r in pending)


def test_an_invalid_number_fails_for_good_and_the_message_goes_by_email(notifier):
    book(notifier, contact=contact(phone="+447400999999", sms=True, email_ok=True))
    # Only SMS consent for the confirmation's email twin would duplicate it: the patient here
    # agreed to both, so the fallback is skipped for messages already going by email.
    notifier.dispatch()
    [failed] = [r for r in notifier.rows(kind="confirmation") if r.channel == "sms"]
    assert failed.status == "failed" and failed.error_code == "21211"
    assert notifier.rows(kind="sms_fallback") == []
    [event] = notifier.published("notify.message.failed")
    assert event.data["error_code"] == 21211


def test_a_failed_check_in_sms_falls_back_to_email(notifier):
    """A check-in goes by SMS only (a text reply gives the score); when the SMS cannot be
    delivered, a patient who agreed to email gets it that way instead."""
    appointment_id = new_id()
    notifier.handle(Event(
        type="booking.followup.scheduled", source="/booking", subject=appointment_id,
        time=notifier.clock.now(), data={
            "followup_id": new_id(), "appointment_id": appointment_id, "patient_id": "p-1",
            "kind": "checkin", "due_at": notifier.clock.now().isoformat(),
            "treatment": {"code": "TPI", "name": "Trigger point injection"},
            "contact": contact(phone="+447400999999")}))
    notifier.dispatch()
    notifier.dispatch()
    [original] = notifier.rows(kind="checkin")
    assert original.status == "failed" and original.error_code == "21211"
    [fallback] = notifier.rows(kind="sms_fallback")
    assert fallback.status == "sent" and fallback.channel == "email"
    assert fallback.fallback_of == original.id
    [mail] = notifier.smtp.messages_to(EMAIL)
    assert "how is your pain" in mail.get_body(("plain",)).get_content()


def test_429_is_retried_later_and_sent_once(notifier):
    book(notifier, contact=contact(email_ok=False))
    notifier.twilio.fail_next(1, status=429, retry_after=2)
    notifier.dispatch()
    [row] = notifier.rows(kind="confirmation")
    assert row.status == "pending" and notifier.sms_to() == []
    assert row.due_at == notifier.clock.now() + timedelta(seconds=2)
    notifier.clock.advance(timedelta(seconds=2))
    notifier.dispatch()
    assert len(notifier.sms_to()) == 1
    assert notifier.rows(kind="confirmation")[0].status == "sent"


def test_a_500_is_checked_against_twilios_list_before_sending_again(notifier):
    book(notifier, contact=contact(email_ok=False))
    notifier.twilio.fail_next(1, status=500)
    notifier.dispatch()
    [row] = notifier.rows(kind="confirmation")
    assert row.status == "sending" and notifier.sms_to() == []
    notifier.clock.advance(timedelta(seconds=300))
    notifier.dispatch()
    assert len(notifier.sms_to()) == 1
    list_calls = [r for r in notifier.twilio.requests if r["method"] == "GET"]
    assert list_calls and all(r["query"].get("To") == PHONE for r in list_calls)


def _confirmation_in_doubt(notifier) -> str:
    """A confirmation whose send Twilio answered with a 500 (it may have taken it): held in
    `sending` until recovery asks Twilio's list. Its appointment id."""
    appointment_id, _ = book(notifier, contact=contact(email_ok=False))
    notifier.twilio.fail_next(1, status=500)
    notifier.dispatch()
    [row] = notifier.rows(kind="confirmation")
    assert row.status == "sending" and row.sending_at is not None
    return appointment_id


@pytest.mark.parametrize("change", ["cancelled", "rescheduled", "stop"])
def test_a_send_in_doubt_is_not_made_after_a_cancellation_a_new_time_or_stop(notifier, change):
    """The change comes while the send is in doubt; Twilio's list then shows it never went:
    it is cancelled with the reason, not sent for an appointment that is off or moved, or to
    a number that said STOP."""
    appointment_id = _confirmation_in_doubt(notifier)
    notifier.clock.advance(timedelta(seconds=10))
    if change == "stop":
        with notifier.context.uow() as uow:
            uow.messages.hold_for_opt_out(PHONE)
            uow.opt_outs.set(PHONE, True)
            uow.commit()
    else:
        extra = {"previous_starts_at": STARTS.isoformat()} if change == "rescheduled" else {}
        notifier.handle(appointment_event(
            change, appointment_id, STARTS + timedelta(days=1 if extra else 0),
            notifier.clock.now(), contact=contact(email_ok=False), **extra))
    notifier.clock.advance(timedelta(seconds=300))
    notifier.dispatch()
    notifier.dispatch()
    [row] = [r for r in notifier.rows(kind="confirmation") if r.sending_at is not None]
    assert row.status == "cancelled" and row.error
    sent = [m["body"] for m in notifier.sms_to()]
    assert not any("reply YES" in body and "30 Nov" in body for body in sent), sent
    if change == "stop":
        assert sent == []


def test_a_send_begun_then_moved_and_refused_with_429_does_not_go_with_the_old_time(notifier):
    """Begun, then the appointment moves, then Twilio answers 429 (never processed): the
    confirmation naming the old time is withdrawn, not retried; the patient hears of the new
    time only."""
    appointment_id, _ = book(notifier, contact=contact(email_ok=False))
    scheduler = notifier.scheduler()
    [message] = notifier.claim(scheduler, "sms")
    assert scheduler._begin(message) == (True, None)
    notifier.handle(appointment_event(
        "rescheduled", appointment_id, STARTS + timedelta(days=1), notifier.clock.now(),
        previous_starts_at=STARTS.isoformat(), contact=contact(email_ok=False)))
    notifier.twilio.fail_next(1, status=429, retry_after=1)
    try:
        scheduler._send(message)
    except TransientSendError as error:
        scheduler._retry_later(message, error)
    notifier.clock.advance(timedelta(minutes=5))
    notifier.dispatch()
    notifier.dispatch()
    [old] = [r for r in notifier.rows(kind="confirmation")]
    assert (old.status, old.error) == ("cancelled", "replaced by the new time")
    assert all("30 Nov" not in m["body"] or "moved" in m["body"].lower()
               for m in notifier.sms_to()), [m["body"] for m in notifier.sms_to()]


def test_a_send_in_doubt_that_went_is_recorded_sent_even_if_withdrawn(notifier):
    """Twilio had taken it after all: it went, and the log says so."""
    appointment_id, _ = book(notifier, contact=contact(email_ok=False))
    dead, message = _claimed_by_a_worker_that_dies(notifier, "sms")
    dead._send(message)                      # Twilio took it; the worker died before recording
    notifier.handle(appointment_event("cancelled", appointment_id, STARTS, notifier.clock.now(),
                                      contact=contact(email_ok=False)))
    notifier.clock.advance(LEASE + timedelta(seconds=1))
    notifier.dispatch()
    [row] = [r for r in notifier.rows(kind="confirmation")]
    assert row.status == "sent" and row.provider_id == notifier.sms_to()[0]["sid"]


def test_a_worker_that_died_after_twilio_took_the_message_does_not_send_it_twice(notifier):
    book(notifier, contact=contact(email_ok=False))
    dead, message = _claimed_by_a_worker_that_dies(notifier, "sms")
    dead._send(message)                      # Twilio took it; the worker died before recording
    notifier.clock.advance(LEASE + timedelta(seconds=1))
    notifier.dispatch()                      # another worker recovers the abandoned send
    assert len(notifier.sms_to()) == 1
    [row] = notifier.rows(kind="confirmation")
    assert row.status == "sent" and row.provider_id == notifier.sms_to()[0]["sid"]


def test_a_claim_abandoned_before_the_provider_call_is_sent_by_another_worker(notifier):
    book(notifier, contact=contact(email_ok=False))
    notifier.claim(notifier.scheduler())     # and the worker dies before sending
    notifier.clock.advance(LEASE + timedelta(seconds=1))
    notifier.dispatch()
    notifier.dispatch()
    assert len(notifier.sms_to()) == 1
    assert not any(r["method"] == "GET" for r in notifier.twilio.requests)


def test_three_workers_send_every_message_exactly_once(notifier):
    for n in range(40):
        book(notifier, starts_at=STARTS + timedelta(minutes=30 * n),
             contact=contact(phone=f"+4474001{n:05d}", email=f"p{n}@example.org"))
    workers = [notifier.scheduler() for _ in range(3)]
    threads = [threading.Thread(target=w.dispatch_due) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for worker in workers:                    # anything left after the first round
        worker.dispatch_due()
    phones = [m["to"] for m in notifier.twilio.messages]
    assert len(phones) == 40 and len(set(phones)) == 40
    assert len(notifier.smtp.messages) == 40
    assert {r.status for r in notifier.rows(kind="confirmation")} == {"sent"}


def test_quiet_hours_move_a_reminder_out_of_the_night(notifier):
    early = datetime.fromisoformat("2026-12-01T08:30:00+00:00")   # 2h before is 06:30 local
    book(notifier, starts_at=early)
    dues = {r.due_at for r in notifier.rows(kind="reminder")}
    assert dues == {early - timedelta(hours=48), datetime.fromisoformat("2026-12-01T08:00+00:00")}


def test_the_message_log_shows_status_without_text_or_address(notifier):
    appointment_id, _ = book(notifier)
    notifier.dispatch()
    client = notifier.app().test_client()
    assert client.get(f"/api/v1/messages?appointment_id={appointment_id}").status_code == 401
    response = client.get(f"/api/v1/messages?appointment_id={appointment_id}",
                          headers={"Authorization": f"Bearer {notifier.token}"})
    assert response.status_code == 200
    log = response.get_json()
    assert {(m["kind"], m["status"]) for m in log} >= {("confirmation", "sent"),
                                                        ("reminder", "pending")}
    text = response.get_data(as_text=True)
    assert PHONE not in text and EMAIL not in text and "Reply YES" not in text
    missing = client.get("/api/v1/messages", headers={"Authorization": f"Bearer {notifier.token}"})
    assert missing.status_code == 422 and "appointment_id" in missing.get_json()["error"]["fields"]
    # Not an appointment id (a NUL would reach PostgreSQL as text it cannot hold), and a
    # misspelt parameter: refused naming them, not a 500 or an empty log.
    for query, field in (("appointment_id=a%00b", "appointment_id"),
                         (f"appointment_id={appointment_id}&apointment=1", "apointment")):
        refused = client.get(f"/api/v1/messages?{query}",
                             headers={"Authorization": f"Bearer {notifier.token}"})
        assert refused.status_code == 422, refused.get_data(as_text=True)
        assert field in refused.get_json()["error"]["fields"]


def test_the_outbox_rows_commit_with_the_outcome(notifier):
    book(notifier)
    notifier.dispatch()
    with notifier.engine.connect() as connection:
        sent = connection.execute(sa.text("select count(*) from messages where status='sent'"))
        assert sent.scalar() == len(notifier.published("notify.message.sent")) == 2


def _claimed_by_a_worker_that_dies(notifier, channel):
    dead = notifier.scheduler()
    [message] = notifier.claim(dead, channel)
    with notifier.context.uow() as uow:
        assert uow.messages.begin_send(message.id, dead.token, LEASE)
        uow.commit()
    return dead, message


def test_an_email_the_server_may_have_taken_before_a_crash_is_not_sent_again(notifier):
    book(notifier, contact=contact(sms=False))
    dead, message = _claimed_by_a_worker_that_dies(notifier, "email")
    dead._send(message)              # the server took it; the worker died before recording it
    notifier.clock.advance(LEASE + timedelta(seconds=1))
    notifier.dispatch()
    assert len(notifier.smtp.messages_to(EMAIL)) == 1
    [row] = notifier.rows(kind="confirmation")
    assert row.status == "sent" and row.provider_status == "unconfirmed"
    assert row.provider_id == notifier.smtp.messages_to(EMAIL)[0]["Message-ID"]


def test_an_email_interrupted_before_its_end_of_data_is_sent_once_by_the_next_worker(notifier):
    book(notifier, contact=contact(sms=False))
    _claimed_by_a_worker_that_dies(notifier, "email")   # died before the final dot
    notifier.clock.advance(LEASE + timedelta(seconds=1))
    notifier.dispatch()
    assert len(notifier.smtp.messages_to(EMAIL)) == 1
    [row] = notifier.rows(kind="confirmation")
    assert row.status == "sent" and row.attempts == 2


def missed_call(notifier, patient_id="p-1"):
    call_id = new_id()
    notifier.handle(Event(type="booking.call.missed", source="/booking", subject=call_id,
                          time=notifier.clock.now(), data={
                              "call_id": call_id, "patient_id": patient_id,
                              "at": notifier.clock.now().isoformat(), "contact": contact()}))


def test_a_patient_who_rings_again_and_again_gets_one_sorry_text_an_hour(notifier):
    missed_call(notifier)
    notifier.dispatch()
    notifier.clock.advance(timedelta(minutes=10))
    missed_call(notifier)
    notifier.dispatch()
    assert sum("sorry we missed your call" in m["body"] for m in notifier.sms_to()) == 1
    notifier.clock.advance(timedelta(minutes=50))
    missed_call(notifier)
    notifier.dispatch()
    assert sum("sorry we missed your call" in m["body"] for m in notifier.sms_to()) == 2
    assert notifier.smtp.messages == []          # a phone matter: by text only


def test_metrics_show_messages_waiting_and_how_late_the_oldest_due_one_is(notifier):
    book(notifier)
    notifier.dispatch()
    client = notifier.app().test_client()
    text = client.get("/metrics").get_data(as_text=True)
    assert 'clinic_messages{status="pending"} 4.0' in text
    assert 'clinic_messages{status="sending"} 0.0' in text
    assert "clinic_messages_overdue_seconds 0.0" in text
    notifier.clock.set("2026-11-28T10:01:30+00:00")     # the 48h reminders, 90 s overdue
    text = client.get("/metrics").get_data(as_text=True)
    assert "clinic_messages_overdue_seconds 90.0" in text


def test_a_check_in_survives_its_attended_event_handled_after_it(notifier):
    """Booking commits `attended` and `followup.scheduled` together; two workers may handle
    them in either order, and the check-in must go either way, the reminders never."""
    appointment_id, _ = book(notifier, contact=contact(email_ok=False))
    notifier.dispatch()
    notifier.clock.set("2026-11-30T10:40:00+00:00")
    followup_id = new_id()
    notifier.handle(Event(type="booking.followup.scheduled", source="/booking",
                          subject=appointment_id, time=notifier.clock.now(), data={
                              "followup_id": followup_id, "appointment_id": appointment_id,
                              "patient_id": "p-1", "kind": "checkin",
                              "due_at": "2026-12-14T10:00:00+00:00",
                              "treatment": {"code": "TPI", "name": "Trigger point injection"},
                              "contact": contact(email_ok=False)}))
    notifier.handle(appointment_event("attended", appointment_id, STARTS, notifier.clock.now()))
    assert {r.status for r in notifier.rows(kind="reminder")} == {"cancelled"}
    notifier.clock.set("2026-12-14T10:00:00+00:00")
    notifier.dispatch()
    assert "how is your pain" in notifier.sms_to()[-1]["body"]
    assert len(notifier.sms_to()) == 2


def form_event(notifier, kind, appointment_id, form_id, **data):
    return Event(type=f"forms.form.{kind}", source="/forms", subject=appointment_id,
                 time=notifier.clock.now(), data={
                     "form_id": form_id, "appointment_id": appointment_id, "patient_id": "p-1",
                     "appointment_starts_at": STARTS.isoformat(), "contact": contact(), **data})


def test_a_form_link_goes_at_once_and_its_nudge_only_while_the_form_is_incomplete(notifier):
    appointment_id, form_id = new_id(), new_id()
    url = "https://forms.clinic.example/f/signed-token"
    notifier.handle(form_event(notifier, "sent", appointment_id, form_id, url=url))
    notifier.dispatch()
    assert url in notifier.sms_to()[-1]["body"]
    [nudge, _] = notifier.rows(kind="form_nudge")
    assert nudge.due_at == STARTS - timedelta(hours=24)
    notifier.handle(form_event(notifier, "completed", appointment_id, form_id))
    notifier.clock.set("2026-11-29T10:00:00+00:00")
    notifier.dispatch()
    assert len(notifier.sms_to()) == 1
    assert {r.status for r in notifier.rows(kind="form_nudge")} == {"cancelled"}


def test_an_incomplete_form_gets_one_nudge(notifier):
    appointment_id, form_id = new_id(), new_id()
    notifier.handle(form_event(notifier, "sent", appointment_id, form_id,
                               url="https://forms.clinic.example/f/t"))
    notifier.dispatch()
    notifier.clock.set("2026-11-29T10:00:00+00:00")
    notifier.dispatch()
    notifier.dispatch()
    assert ["still needed" in m["body"] for m in notifier.sms_to()] == [False, True]


class RecordsArrivals:
    """FakeTwilio's clock, noting the instant (monotonic) each message it creates arrives."""

    def __init__(self, clock):
        self.clock, self.instants = clock, []

    def now(self):
        self.instants.append(time.monotonic())
        return self.clock.now()


def test_a_worker_sending_several_at_once_sends_each_once_and_keeps_the_cap(notifier):
    """Eight sends in flight against a Twilio answering in 50 ms, under a cap of 20 a second:
    every SMS once, each taking its own slot of the cap (the cap's row moved on by 30
    intervals of 1/20 s, none shared, none skipped), and each waiting for it: the k-th to
    reach Twilio came no sooner than k intervals after the worker started (a lower bound,
    which a slow machine only exceeds by more)."""
    notifier.twilio.delay = 0.05
    arrivals = notifier.twilio.clock = RecordsArrivals(notifier.twilio.clock)
    for n in range(30):
        book(notifier, starts_at=STARTS + timedelta(minutes=30 * n),
             contact=contact(phone=f"+4474003{n:05d}", email_ok=False))
    config = notifier.context.config.with_(sms_max_per_second=20, notify_send_concurrency=8)
    scheduler = notifier.scheduler()
    scheduler.context = dataclasses.replace(notifier.context, config=config)
    scheduler.__post_init__()
    assert _next_sms_slot(notifier) is None         # no SMS yet: the first slot is now
    first_slot = notifier.clock.now()
    stop = threading.Event()
    worker = threading.Thread(target=scheduler.run, args=(stop,))
    started = time.monotonic()
    worker.start()
    try:
        _eventually(lambda: len(notifier.twilio.messages) >= 30, "30 SMS at Twilio", 30)
    finally:
        stop.set()
        worker.join(30)
    phones = [m["to"] for m in notifier.twilio.messages]
    assert len(phones) == 30 and len(set(phones)) == 30
    interval = scheduler.interval
    moved = _next_sms_slot(notifier) - first_slot
    assert moved == len(phones) * interval, moved
    instants = sorted(arrivals.instants)
    assert len(instants) == len(phones)
    early = [(k, round(at - started, 3)) for k, at in enumerate(instants)
             if at - started < k * interval.total_seconds()]
    assert early == [], "SMS that reached Twilio before their slot (k, seconds in)"


def test_history_is_pruned_and_what_is_still_to_send_is_kept(notifier):
    book(notifier, starts_at=STARTS + timedelta(days=200))
    notifier.dispatch()                                   # confirmations sent
    notifier.clock.advance(timedelta(days=91))
    notifier.scheduler().dispatch_due()                   # a fresh worker prunes at once
    assert {r.kind for r in notifier.rows()} == {"reminder"}
    assert {r.status for r in notifier.rows()} == {"pending"}


def test_a_change_of_clinician_only_keeps_the_reminders(notifier):
    """The new reminders have the keys of the cancelled ones: they are planned again."""
    appointment_id, _ = book(notifier, contact=contact(email_ok=False))
    notifier.clock.advance(timedelta(minutes=10))
    change = appointment_event("rescheduled", appointment_id, STARTS, notifier.clock.now(),
                               previous_starts_at=None, contact=contact(email_ok=False))
    change.data["clinician_name"] = "Dr Other"
    notifier.handle(change)
    pending = [r for r in notifier.rows(kind="reminder") if r.status == "pending"]
    assert len(pending) == 2
    assert all(context_of(r)["clinician_name"] == "Dr Other" for r in pending)


def test_moved_and_moved_back_keeps_the_reminders(notifier):
    appointment_id, _ = book(notifier, contact=contact(email_ok=False))
    for starts, previous in ((STARTS + timedelta(days=1), STARTS),
                             (STARTS, STARTS + timedelta(days=1))):
        notifier.clock.advance(timedelta(minutes=10))
        notifier.handle(appointment_event("rescheduled", appointment_id, starts,
                                          notifier.clock.now(),
                                          previous_starts_at=previous.isoformat(),
                                          contact=contact(email_ok=False)))
    pending = {r.due_at for r in notifier.rows(kind="reminder") if r.status == "pending"}
    assert pending == {STARTS - timedelta(hours=48), STARTS - timedelta(hours=2)}


def test_a_cancellation_while_an_sms_waits_for_its_slot_stops_it(notifier):
    """Other workers' SMS hold the cap's next second: the reminder's sender takes the slot
    after them and waits for it, and the cancellation comes during that wait (once the
    database shows the slot taken). The send, not yet begun, finds the message cancelled
    and nothing goes."""
    from services.notify.db import rate_limits
    appointment_id, scheduler, reminder = _reminder_claimed(notifier)
    queued_until = notifier.clock.now() + timedelta(seconds=1)
    with notifier.context.uow() as uow:
        uow.connection.execute(rate_limits.delete())     # other workers' SMS queued first
        uow.connection.execute(rate_limits.insert().values(name="sms",
                                                           next_slot_at=queued_until))
        uow.commit()
    sending = threading.Thread(target=scheduler.deliver, args=(reminder,))
    sending.start()
    _eventually(lambda: _next_sms_slot(notifier) > queued_until,
                "the reminder's sender to take its slot")
    notifier.handle(appointment_event("cancelled", appointment_id, STARTS, notifier.clock.now()))
    sending.join(10)
    assert not sending.is_alive()
    assert not any("reminder" in m["body"] for m in notifier.sms_to())
    [row] = notifier.rows(id=reminder.id)
    # Never begun: the cancellation landed during the wait, the interleaving meant here.
    assert (row.status, row.sending_at) == ("cancelled", None)


class LeaseOutlivingEmail:
    """The SMTP conversation is so slow that the lease runs out before its end-of-data line."""

    def __init__(self, inner, meanwhile):
        self.inner, self.meanwhile = inner, meanwhile

    def send_email(self, *args, before_final_dot=None, **kwargs):
        def slow_then_hand_over():
            self.meanwhile()
            before_final_dot()
        return self.inner.send_email(*args, before_final_dot=slow_then_hand_over, **kwargs)


def test_an_email_whose_lease_ran_out_mid_send_is_not_finished_by_the_slow_worker(notifier):

    book(notifier, contact=contact(sms=False))
    slow, other = notifier.scheduler(), notifier.scheduler()
    [message] = notifier.claim(slow, "email")

    def lease_runs_out_and_another_worker_recovers_it():
        notifier.clock.advance(LEASE + timedelta(seconds=1))
        other.dispatch_due()
    slow.context = dataclasses.replace(notifier.context, email=LeaseOutlivingEmail(
        notifier.context.email, lease_runs_out_and_another_worker_recovers_it))
    slow.deliver(message)
    assert len(notifier.smtp.messages_to(EMAIL)) == 1
    assert notifier.rows(id=message.id)[0].status == "sent"


def test_a_claim_never_takes_an_sms_to_a_number_that_opted_out(notifier):
    """STOP can land between a round's sweep and its claim: the claim skips those rows."""
    from services.notify.db import claim_due
    book(notifier, contact=contact(email_ok=False))
    with notifier.context.uow() as uow:
        uow.opt_outs.set(PHONE, True)
        assert claim_due(uow.connection, uow.clock.now(), 10, LEASE, uuid.uuid4()) == []
        uow.commit()
    notifier.dispatch()
    assert notifier.sms_to() == []
    assert notifier.rows(kind="confirmation")[0].error == "opted out of SMS"


def test_the_email_standing_in_for_a_failed_reminder_is_dropped_with_the_appointment(notifier):
    from services.notify.db import messages
    appointment_id, _ = book(notifier, contact=contact(phone="+447400999999"))
    notifier.dispatch()
    # The SMTP server is away: the fallback for the failed SMS waits, pending.
    with notifier.engine.begin() as connection:
        connection.execute(messages.insert().values(
            id=uuid.uuid4(), dedupe_key="x:sms_fallback", kind="sms_fallback", channel="email",
            to_address=EMAIL, appointment_id=appointment_id, patient_id="p-1",
            context='{"sms_text": "reminder"}', due_at=notifier.clock.now(), status="pending",
            attempts=0, created_at=notifier.clock.now(), updated_at=notifier.clock.now()))
    notifier.handle(appointment_event("cancelled", appointment_id, STARTS, notifier.clock.now()))
    assert notifier.rows(kind="sms_fallback")[0].status == "cancelled"


def test_a_refused_email_is_failed_without_the_address_in_the_log(notifier):
    notifier.smtp.reject(EMAIL)
    book(notifier, contact=contact(sms=False))
    notifier.dispatch()
    [row] = notifier.rows(kind="confirmation")
    assert row.status == "failed" and row.error.startswith("SMTP recipient refused: 550")
    assert EMAIL not in row.error and "<recipient>" in row.error


def test_a_form_nudge_moves_with_its_appointment_and_names_the_new_time(notifier):
    appointment_id, form_id = new_id(), new_id()
    notifier.handle(appointment_event("booked", appointment_id, STARTS, notifier.clock.now(),
                                      contact=contact(email_ok=False)))
    notifier.handle(form_event(notifier, "sent", appointment_id, form_id,
                               url="https://forms.clinic.example/f/t",
                               contact=contact(email_ok=False)))
    later = STARTS + timedelta(days=2, hours=4)
    notifier.clock.advance(timedelta(minutes=5))
    notifier.handle(appointment_event("rescheduled", appointment_id, later, notifier.clock.now(),
                                      previous_starts_at=STARTS.isoformat(),
                                      contact=contact(email_ok=False)))
    [nudge] = notifier.rows(kind="form_nudge")
    assert nudge.status == "pending" and nudge.due_at == later - timedelta(hours=24)
    notifier.clock.set(later - timedelta(hours=24))
    notifier.dispatch()
    notifier.dispatch()
    assert "still needed before Wed 2 Dec at 14:00" in notifier.sms_to()[-1]["body"]


def test_a_reminder_found_due_in_the_night_after_an_outage_waits_for_the_morning(notifier):
    book(notifier, contact=contact(email_ok=False))
    notifier.dispatch()
    notifier.clock.set("2026-11-28T22:30:00+00:00")     # the workers were down since 10:00
    notifier.dispatch()
    assert len(notifier.sms_to()) == 1
    [first, _] = notifier.rows(kind="reminder")
    assert first.status == "pending"
    assert first.due_at == datetime.fromisoformat("2026-11-29T08:00:00+00:00")
    notifier.clock.set("2026-11-29T08:00:00+00:00")
    notifier.dispatch()
    assert "reminder" in notifier.sms_to()[-1]["body"]


def test_a_reminder_found_due_after_its_appointment_began_is_dropped(notifier):
    book(notifier, contact=contact(email_ok=False))
    notifier.dispatch()
    notifier.clock.set("2026-11-30T10:05:00+00:00")
    notifier.dispatch()
    assert len(notifier.sms_to()) == 1
    # Both dropped: the 2 h one as too late, the 48 h one already as overtaken by it.
    assert [(r.status, r.error) for r in notifier.rows(kind="reminder")] == [
        ("cancelled", "superseded by a later reminder"), ("cancelled", "too late to be of use")]


def _two_rounds_of_sms(notifier, concurrency=8):
    """24 SMS confirmations sent by one worker in rounds of 12 SMS, up to `concurrency` at
    once and no meaningful cap: the scheduler, and the most requests FakeTwilio answered at
    once in the first round and in the second."""
    for n in range(24):
        book(notifier, starts_at=STARTS + timedelta(minutes=30 * n),
             contact=contact(phone=f"+4474004{n:05d}", email_ok=False))
    config = notifier.context.config.with_(sms_max_per_second=100_000,
                                           notify_send_concurrency=concurrency)
    scheduler = notifier.scheduler()
    scheduler.context = dataclasses.replace(notifier.context, config=config)
    scheduler.__post_init__()
    scheduler.sms_batch = 12
    stop = threading.Event()
    worker = threading.Thread(target=scheduler.run, args=(stop,))
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while len(notifier.twilio.messages) < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        first_round, notifier.twilio.most_at_once = notifier.twilio.most_at_once, 0
        while len(notifier.twilio.messages) < 24 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        worker.join(30)
    phones = [m["to"] for m in notifier.twilio.messages]
    assert len(phones) == 24 and len(set(phones)) == 24
    _each_sms_at_twilio_recorded_once(notifier)
    return scheduler, first_round, notifier.twilio.most_at_once


def _each_sms_at_twilio_recorded_once(notifier) -> None:
    """Every SMS Twilio took is recorded `sent` with the sid Twilio gave it, with one
    `notify.message.sent` event: whichever lane sent it, and whether its record rode on the
    lane's next beginning or was made on its own."""
    sids = {m["to"]: m["sid"] for m in notifier.twilio.messages}
    rows = [r for r in notifier.rows(channel="sms", kind="confirmation") if r.to_address in sids]
    assert len(rows) == len(sids)
    assert {(r.to_address, r.status, r.provider_id) for r in rows} == {
        (to, "sent", sid) for to, sid in sids.items()}
    assert sorted(e.data["message_id"] for e in notifier.published("notify.message.sent")
                  if e.data["channel"] == "sms") == sorted(str(r.id) for r in rows)


def test_a_worker_stopped_mid_round_records_what_went_and_hands_back_the_rest(notifier):
    """Stopping while 8 lanes send: each SMS Twilio took is recorded once (a lane's carried
    record is made as it stops), and none of the others is left `sending` or goes."""
    notifier.twilio.delay = 0.1
    for n in range(40):
        book(notifier, starts_at=STARTS + timedelta(minutes=30 * n),
             contact=contact(phone=f"+4474007{n:05d}", email_ok=False))
    config = notifier.context.config.with_(sms_max_per_second=100_000,
                                           notify_send_concurrency=8)
    scheduler = notifier.scheduler()
    scheduler.context = dataclasses.replace(notifier.context, config=config)
    scheduler.__post_init__()
    stop = threading.Event()
    worker = threading.Thread(target=scheduler.run, args=(stop,))
    worker.start()
    try:
        _eventually(lambda: len(notifier.twilio.messages) >= 10, "10 SMS at Twilio")
    finally:
        stop.set()
        worker.join(30)
    went = len(notifier.twilio.messages)
    assert 10 <= went < 40, went
    _each_sms_at_twilio_recorded_once(notifier)
    statuses = [r.status for r in notifier.rows(channel="sms", kind="confirmation")]
    assert statuses.count("sent") == went and statuses.count("pending") == 40 - went


def test_a_slow_provider_has_every_send_lane_in_flight(notifier):
    """Twilio answering in 200 ms: the worker keeps all 8 sends in flight, round after round
    (one at a time it would send five texts a second)."""
    notifier.twilio.delay = 0.2
    _, first_round, second_round = _two_rounds_of_sms(notifier)
    assert (first_round, second_round) == (8, 8)


def test_send_lanes_are_capped_by_notify_send_concurrency(notifier):
    """NOTIFY_SEND_CONCURRENCY=3: never more than 3 sends at once, and 3 when the provider is
    slow enough for them to overlap."""
    notifier.twilio.delay = 0.2
    _, first_round, second_round = _two_rounds_of_sms(notifier, concurrency=3)
    assert (first_round, second_round) == (3, 3)


def _relay_wakeups(notifier, action) -> int:
    """How many wake-ups the notify relay's channel received while `action` ran."""
    import psycopg

    from shared.db import outbox_channel
    url = notifier.engine.url.set(drivername="postgresql").render_as_string(
        hide_password=False)
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f'LISTEN "{outbox_channel("notify")}"')
        action()
        return len(list(listener.notifies(timeout=0.5)))


def test_a_sent_message_is_recorded_for_the_relay_without_waking_it(notifier):
    """Every transaction that notifies takes one database-wide lock through its commit's
    flush, so a wake-up per send made parallel sends queue (docs/architecture.md): the
    `notify.message.sent` event is stored for the relay's next poll, not announced."""
    book(notifier, contact=contact(email_ok=False))
    assert _relay_wakeups(notifier, notifier.dispatch) == 0
    [sent] = notifier.published("notify.message.sent")
    assert sent.data["channel"] == "sms"


def test_a_failed_message_still_wakes_the_relay(notifier):
    """A failure is something reception acts on: its event goes out at once."""
    book(notifier, contact=contact(phone="+447400999999", email_ok=False))
    assert _relay_wakeups(notifier, notifier.dispatch) >= 1
    assert notifier.published("notify.message.failed")


def test_a_cancellation_racing_the_start_of_a_send_withdraws_it(notifier):
    """The cancellation's transaction meets the row locked by a send that is starting (its
    `begin_send` not yet committed). Whichever way that goes, the message must end either
    cancelled or withdrawn: here it is begun, so withdrawn, and recovery will not send it.
    (Withdrawing before cancelling left it neither, and it went out after a 5xx.)"""
    from services.notify.db import MessageRepository, claim_due
    appointment_id, _ = book(notifier, contact=contact(email_ok=False))
    token = uuid.uuid4()
    with notifier.engine.begin() as connection:
        [claimed] = claim_due(connection, notifier.clock.now(), 10, LEASE, token, channel="sms")
    starting = notifier.engine.connect()
    MessageRepository(starting, notifier.clock).begin_send(claimed.id, token, LEASE)
    cancelling = notifier.engine.connect()
    cancelled_pid = cancelling.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    reason = "cancelled"
    worker = threading.Thread(target=lambda: MessageRepository(
        cancelling, notifier.clock).cancel_pending(appointment_id, None, reason))
    worker.start()

    def cancellation_waits_on_the_row() -> bool:
        with notifier.engine.connect() as watcher:
            return bool(watcher.exec_driver_sql(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %(pid)s",
                {"pid": cancelled_pid}).scalar())
    _eventually(cancellation_waits_on_the_row, "the cancellation to wait on the row's lock")
    starting.commit()
    worker.join(10)
    assert not worker.is_alive()
    cancelling.commit()
    starting.close()
    cancelling.close()
    [row] = notifier.rows(id=claimed.id)
    assert (row.status, row.withdrawn) == ("sending", reason)       # begun, so withdrawn
    notifier.clock.advance(LEASE + timedelta(seconds=1))
    notifier.dispatch()                      # recovery: Twilio's list shows it never went
    assert notifier.sms_to() == []
    assert notifier.rows(id=claimed.id)[0].status == "cancelled"


def test_recovery_does_not_take_a_relatives_identical_text_for_the_one_in_doubt(notifier):
    """Mother and son share a phone and get the same check-in text at the same moment; the
    son's send is answered with a 500. Twilio's list then shows one such text, the mother's:
    it is not the son's, so his is sent, and each keeps its own sid."""
    for patient in ("p-mother", "p-son"):
        followup_id = new_id()
        notifier.handle(Event(type="booking.followup.scheduled", source="/booking",
                              subject=followup_id, time=notifier.clock.now(), data={
                                  "followup_id": followup_id, "appointment_id": new_id(),
                                  "patient_id": patient, "kind": "checkin",
                                  "due_at": notifier.clock.now().isoformat(),
                                  "treatment": {"code": "TPI",
                                                "name": "Trigger point injection"},
                                  "contact": contact(email_ok=False)}))
    notifier.twilio.fail_next(1, status=500)
    notifier.dispatch()
    assert len(notifier.sms_to()) == 1
    notifier.clock.advance(timedelta(seconds=300))
    notifier.dispatch()
    rows = notifier.rows(kind="checkin")
    assert [r.status for r in rows] == ["sent", "sent"]
    assert len({r.provider_id for r in rows}) == 2
    assert len(notifier.sms_to()) == 2
    assert notifier.sms_to()[0]["body"] == notifier.sms_to()[1]["body"]


def test_an_email_address_beyond_ascii_fails_for_good_with_its_reason(notifier):
    """Booking accepts "josé@example.org"; smtplib cannot put it in a plain envelope. The
    email fails at once with that reason, for reception, and the round goes on to the SMS
    (it used to end every round with an unexpected error, then give up after 8 tries)."""
    book(notifier, contact=contact(email="josé@example.org"))
    notifier.dispatch()
    [email] = notifier.rows(kind="confirmation", channel="email")
    assert email.status == "failed" and "ASCII" in email.error
    [sms] = notifier.rows(kind="confirmation", channel="sms")
    assert sms.status == "sent"


def test_two_reschedules_within_a_minute_each_tell_the_patient(notifier):
    """Reception moves 10:00 to 09:00, then corrects it to 11:00 in the same minute: the
    patient is told both times, the last text naming 11:00 (the second was taken for a
    repeat of the first and never sent)."""
    appointment_id, _ = book(notifier, contact=contact(email_ok=False))
    notifier.dispatch()
    for previous, new in ((STARTS, STARTS - timedelta(hours=1)),
                          (STARTS - timedelta(hours=1), STARTS + timedelta(hours=1))):
        notifier.handle(appointment_event(
            "rescheduled", appointment_id, new, notifier.clock.now(),
            previous_starts_at=previous.isoformat(), contact=contact(email_ok=False)))
        notifier.dispatch()
    texts = [m["body"] for m in notifier.sms_to()]
    assert len(texts) == 3
    assert "09:00" in texts[1] and "11:00" in texts[2]


def test_events_that_waited_out_an_outage_are_sent_as_late_messages(notifier):
    """The notify worker was down from the evening; at 02:00 it handles a booking made at
    18:00 and a call missed at 18:05. Planned only now, they are still late: the confirmation
    waits for the morning (the appointment is at 10:00), and "we will ring you back", eight
    hours on, is not sent at all."""
    notifier.clock.set("2026-11-29T18:00:00+00:00")
    asked = notifier.clock.now()
    notifier.clock.set("2026-11-30T02:00:00+00:00")
    appointment_id = new_id()
    notifier.handle(appointment_event("booked", appointment_id, STARTS, asked,
                                      contact=contact(email_ok=False)))
    notifier.handle(Event(type="booking.call.missed", source="/booking", subject="call-1",
                          time=asked + timedelta(minutes=5), data={
                              "call_id": "call-1", "patient_id": "p-1",
                              "at": (asked + timedelta(minutes=5)).isoformat(),
                              "contact": contact(email_ok=False)}))
    notifier.dispatch()
    assert notifier.sms_to() == []
    [call] = notifier.rows(kind="missed_call")
    assert call.status == "cancelled"

    notifier.clock.set("2026-11-30T08:00:00+00:00")
    notifier.dispatch()
    [confirmation] = notifier.rows(kind="confirmation")
    assert confirmation.status == "sent"
    assert any("is booked for" in sms["body"] for sms in notifier.sms_to())


def test_a_send_in_doubt_is_recognised_though_its_text_would_now_render_otherwise(notifier):
    """A worker sent the confirmation and died before recording it; a deploy then changed
    what the text renders to (a template, or here its context). Recovery looks for what was
    sent, by the digest recorded when the send began, and does not send a second text."""
    book(notifier, contact=contact(email_ok=False))
    dead = notifier.scheduler()
    [message] = notifier.claim(dead, "sms")
    rendered = dead._render(message)
    assert dead._begin(message, hashlib.sha256(rendered.encode()).hexdigest()) == (True, None)
    dead._send(message, rendered)            # Twilio took it; the worker died before recording
    with notifier.engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE messages SET context = replace(context, 'Dr Amira Shah', 'Dr A Shah')")
    notifier.clock.advance(LEASE + timedelta(seconds=1))
    notifier.dispatch()
    assert len(notifier.sms_to()) == 1
    [row] = notifier.rows(kind="confirmation")
    assert row.status == "sent" and row.provider_id == notifier.sms_to()[0]["sid"]


def test_each_sms_of_a_lane_is_recorded_once_with_its_sid_the_last_when_the_round_ends(notifier):
    """A lane records each SMS with the beginning of its next (one statement for both): every
    one still ends `sent` with the sid Twilio gave it and one event, the lane's last too."""
    for n in range(3):
        book(notifier, starts_at=STARTS + timedelta(hours=n),
             contact=contact(phone=f"+4474005{n:05d}", email_ok=False))
    notifier.dispatch()
    rows = notifier.rows(kind="confirmation")
    sids = {m["to"]: m["sid"] for m in notifier.twilio.messages}
    assert len(sids) == 3
    assert {(r.status, r.provider_id) for r in rows} == {
        ("sent", sids[r.to_address]) for r in rows}
    published = notifier.published("notify.message.sent")
    assert sorted(e.data["message_id"] for e in published) == sorted(str(r.id) for r in rows)


def _unsendable(notifier, scheduler, message, how):
    """`message`, claimed, made so that it will not be sent as `how` says."""
    if how == "cancelled meanwhile":
        notifier.handle(appointment_event("cancelled", message.appointment_id, STARTS,
                                          notifier.clock.now()))
        return message
    if how == "too late":           # found due after its appointment began
        return dataclasses.replace(message, kind="reminder", context={
            **message.context, "starts_at": (notifier.clock.now() - timedelta(minutes=5))
            .isoformat()})
    if how == "cannot render":
        return dataclasses.replace(message, context={})
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["cancelled meanwhile", "too late", "cannot render"])
def test_an_sms_is_recorded_though_the_next_in_its_lane_is_not_sent(notifier, how):
    """The send carried to the next message's beginning is recorded whatever stops that one."""
    for n in range(2):
        book(notifier, starts_at=STARTS + timedelta(hours=n),
             contact=contact(phone=f"+4474006{n:05d}", email_ok=False))
    scheduler = notifier.scheduler()
    first, second = notifier.claim(scheduler, "sms")
    second = _unsendable(notifier, scheduler, second, how)
    scheduler._deliver_all([first, second], threading.Event())
    [sms] = notifier.twilio.messages
    [recorded] = notifier.rows(id=first.id)
    assert (recorded.status, recorded.provider_id) == ("sent", sms["sid"])
    [other] = notifier.rows(id=second.id)
    assert other.status in {"cancelled", "failed"} and other.sending_at is None
    assert [e.data["message_id"] for e in notifier.published("notify.message.sent")] == [
        str(first.id)]


def test_a_carried_sms_whose_row_is_held_elsewhere_holds_back_neither_the_next_nor_its_record(
        notifier):
    """A cancellation may hold the row of the SMS a lane just sent while the lane begins its
    next. The next is begun and goes to Twilio without waiting for that transaction (a long
    wait could have run out its lease, and another worker sent it again); the one held is
    recorded once the holder lets go."""
    notifier.twilio.delay = 0.3
    for n in range(2):
        book(notifier, starts_at=STARTS + timedelta(hours=n),
             contact=contact(phone=f"+4474008{n:05d}", email_ok=False))
    scheduler = notifier.scheduler()
    first, second = notifier.claim(scheduler, "sms")
    lane = threading.Thread(target=scheduler._deliver_all,
                            args=([first, second], threading.Event()))
    with notifier.engine.connect() as holder:
        lane.start()
        try:
            _eventually(lambda: len(notifier.twilio.messages) >= 1, "the first SMS at Twilio")
            holder.execute(sa.select(messages.c.id).where(messages.c.id == first.id)
                           .with_for_update())
            _eventually(lambda: len(notifier.twilio.messages) >= 2,
                        "the second SMS at Twilio while the first's row is held")
            assert notifier.rows(id=first.id)[0].status == "sending"
        finally:
            holder.rollback()
            lane.join(10)
    sids = {m["to"]: m["sid"] for m in notifier.twilio.messages}
    assert {(r.status, r.provider_id) for r in notifier.rows(kind="confirmation")} == {
        ("sent", sids[r.to_address]) for r in notifier.rows(kind="confirmation")}
    assert len(notifier.published("notify.message.sent")) == 2


def test_an_sms_followed_by_an_email_in_its_lane_are_both_recorded(notifier):
    book(notifier)
    scheduler = notifier.scheduler()
    [email] = notifier.claim(scheduler, "email")
    [sms] = notifier.claim(scheduler, "sms")
    scheduler._deliver_all([sms, email], threading.Event())
    assert [r.status for r in notifier.rows(id=sms.id) + notifier.rows(id=email.id)] == [
        "sent", "sent"]
    assert len(notifier.published("notify.message.sent")) == 2
