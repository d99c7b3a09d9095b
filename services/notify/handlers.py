"""Events notify consumes, one function each. Each stores what the policy plans, in the same
transaction as its processed-event mark: a redelivered event schedules nothing twice."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

from services.notify.model import as_utc, policy
from services.notify.model.delivery import (
    ABOUT_A_COMING_APPOINTMENT,
    CALLED_OFF,
    SMS_FALLBACK,
)
from services.notify.model.schedule import SCHEDULED_KINDS
from services.notify.scheduler import RECHECK_SECONDS
from shared.consumer import OneByOne
from shared.events import Event

# Everything still pending about a coming appointment, which the patient should no longer
# receive once it is over. Not a check-in: that one follows an attended appointment.
APPOINTMENT_MESSAGES = tuple(sorted(ABOUT_A_COMING_APPOINTMENT))
NO_LONGER_COMING = "appointment no longer coming"


def _schedule(context, event: Event, consumer: str, plan: Callable[[], list],
              cancel: tuple[str, ...] = (), reason: str | None = None,
              then: Callable | None = None) -> None:
    """Store what `plan` returns, after cancelling the appointment's unsent `cancel` kinds."""
    uow = context.uow()
    with uow:
        if not uow.processed.add(consumer, event.id):
            return
        data = event.data
        appointment_id = data.get("appointment_id")
        if event.type.startswith("booking.appointment.") and not uow.appointments.advance(
                appointment_id, event.type.rsplit(".", 1)[1], event.time):
            uow.commit()                    # overtaken by a later event: plan nothing
            return
        uow.contacts.remember(data.get("patient_id"), data.get("contact"))
        if appointment_id and cancel:
            uow.messages.cancel_pending(appointment_id, cancel, reason)
        if then is not None:
            then(uow)
        _store(uow, _asked_at(plan(), event))
        uow.commit()


def _asked_at(planned: list, event: Event) -> list:
    """Each at-once message with the instant its event happened (`asked_at`): a message found
    due long after that (the worker or the broker was down, the event waited) is judged late
    by `model.schedule.when_to_send`, though it was planned, and so due, only just now."""
    asked_at = as_utc(event.time).isoformat()
    return [replace(p, context={**p.context, "asked_at": asked_at})
            if p.kind not in SCHEDULED_KINDS else p for p in planned]


def _store(uow, planned: list) -> None:
    # A scheduler looks at the table at least once a second however idle it is, so only
    # a message due sooner than that needs to wake it (a NOTIFY takes a lock at commit).
    soon = uow.clock.now() + timedelta(seconds=RECHECK_SECONDS)
    if uow.messages.schedule_all(planned) and any(p.due_at <= soon for p in planned):
        uow.wake_scheduler()


def on_booked(event: Event, context) -> None:
    _schedule(context, event, "notify.booked", lambda: policy.plan_booked(
        event.data, context.clock.now(), context.offsets, context.quiet, context.tz))


def on_booked_many(events: list[Event], context) -> None:
    """Many bookings in one transaction, set-wise, with the effects `on_booked` has for each
    in turn: the same marks, the same guard against stale events, the same messages. Events
    about one appointment twice are left to `on_booked`, whose order then decides."""
    appointment_ids = [event.data.get("appointment_id") for event in events]
    if not all(isinstance(i, str) for i in appointment_ids) or len(set(appointment_ids)) < len(
            events):
        raise OneByOne()
    uow = context.uow()
    with uow:
        fresh = uow.processed.add_all("notify.booked", [event.id for event in events])
        events = [event for event in events if event.id in fresh]
        applied = uow.appointments.advance_all(
            [(event.data["appointment_id"], "booked", event.time) for event in events])
        events = [event for event in events if event.data["appointment_id"] in applied]
        # The latest per patient, of those given: as `remember`, an event without a contact
        # leaves the one stored before.
        uow.contacts.remember_all({
            event.data["patient_id"]: event.data["contact"] for event in events
            if event.data.get("patient_id") and event.data.get("contact")})
        now = context.clock.now()
        _store(uow, [planned for event in events for planned in _asked_at(policy.plan_booked(
            event.data, now, context.offsets, context.quiet, context.tz), event)])
        uow.commit()


def on_rescheduled(event: Event, context) -> None:
    _schedule(context, event, "notify.rescheduled", lambda: policy.plan_rescheduled(
        event.data, context.clock.now(), context.offsets, context.quiet, context.tz),
        cancel=("confirmation", "reminder", "rescheduled"), reason="replaced by the new time",
        then=lambda uow: _move_form_nudges(uow, event.data, context))


def _move_form_nudges(uow, data: dict, context) -> None:
    """A form still incomplete is nudged 24 hours before the new time, naming it."""
    starts_at = as_utc(data["starts_at"])
    nudge_at = policy.form_nudge_at(starts_at, uow.clock.now(), context.quiet, context.tz)
    uow.messages.move_pending(data["appointment_id"], "form_nudge", nudge_at, starts_at)


def on_cancelled(event: Event, context) -> None:
    _schedule(context, event, "notify.cancelled",
              lambda: policy.plan_cancelled(event.data, context.clock.now()),
              cancel=(*APPOINTMENT_MESSAGES, SMS_FALLBACK), reason=NO_LONGER_COMING)


def on_finished(event: Event, context) -> None:
    """Attended or no-show: nothing further is sent about it coming. A fallback email is
    dropped after a no-show only: after an attended appointment it may carry a check-in."""
    status = event.type.rsplit(".", 1)[1]
    cancel = (*APPOINTMENT_MESSAGES, SMS_FALLBACK) if status in CALLED_OFF else APPOINTMENT_MESSAGES
    _schedule(context, event, f"notify.{status}", lambda: [], cancel=cancel,
              reason=NO_LONGER_COMING)


def on_followup(event: Event, context) -> None:
    _schedule(context, event, "notify.followup", lambda: policy.plan_followup(
        event.data, context.clock.now(), context.quiet, context.tz))


def on_call_missed(event: Event, context) -> None:
    uow = context.uow()
    with uow:
        if not uow.processed.add("notify.call_missed", event.id):
            return
        data = event.data
        uow.contacts.remember(data.get("patient_id"), data.get("contact"))
        last = (uow.messages.last_sent_to_patient(data["patient_id"], "missed_call")
                if data.get("patient_id") else None)
        for planned in _asked_at(policy.plan_missed_call(data, uow.clock.now(), last), event):
            if uow.messages.schedule(planned):
                uow.wake_scheduler()
        uow.commit()


def on_form_sent(event: Event, context) -> None:
    _schedule(context, event, "notify.form_sent", lambda: policy.plan_form_sent(
        event.data, context.clock.now(), context.quiet, context.tz))


def on_form_completed(event: Event, context) -> None:
    _schedule(context, event, "notify.form_completed", lambda: [],
              cancel=("form_link", "form_nudge"), reason="form completed")


HANDLERS = {
    "booking.appointment.booked": on_booked,
    "booking.appointment.rescheduled": on_rescheduled,
    "booking.appointment.cancelled": on_cancelled,
    "booking.appointment.attended": on_finished,
    "booking.appointment.no_show": on_finished,
    "booking.followup.scheduled": on_followup,
    "booking.call.missed": on_call_missed,
    "forms.form.sent": on_form_sent,
    "forms.form.completed": on_form_completed,
}

# Types whose bursts are handled a batch at a time (see shared.consumer); each falls back to
# its entry in HANDLERS.
BATCH_HANDLERS = {
    "booking.appointment.booked": on_booked_many,
}
