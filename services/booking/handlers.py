"""Events booking consumes, one function each; the worker binds them to a BookingContext."""
from __future__ import annotations

from services.booking import service
from shared.events import Event


def on_patient_reply(event: Event, context) -> None:
    service.apply_patient_reply(context.uow(), event)


def on_form_sent(event: Event, context) -> None:
    service.record_intake_form(context.uow(), event, "sent")


def on_form_completed(event: Event, context) -> None:
    status = "received_on_paper" if event.data.get("on_paper") else "completed"
    service.record_intake_form(context.uow(), event, status)


HANDLERS = {
    "notify.reply.received": on_patient_reply,
    "forms.form.sent": on_form_sent,
    "forms.form.completed": on_form_completed,
}
