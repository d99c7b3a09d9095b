"""An appointment's life: booked, then cancelled, attended or a no-show, and nothing after.

Each change is refused with Conflict once the appointment has left "booked": a late SMS
"NO" must not cancel a visit that already happened, and reception must not mark attended an
appointment the patient cancelled. The caller publishes the event only after a change.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from shared.errors import Conflict, Invalid

from .clinic_time import as_utc
from .schedule import Slot

APPOINTMENT_STATUSES = ("booked", "cancelled", "attended", "no_show")
CANCELLED_BY = ("reception", "patient")
# Where the appointment's intake form stands, as forms reports it (`not_required` when the
# booking needed none: a returning patient, a treatment without consent).
INTAKE_FORM_STATUSES = ("not_required", "sent", "completed", "received_on_paper")


@dataclass
class Appointment:
    id: uuid.UUID
    patient_id: uuid.UUID
    clinician_id: uuid.UUID
    treatment_code: str
    starts_at: datetime
    ends_at: datetime
    status: str = "booked"
    confirmed: bool = False
    cancel_reason: str | None = None
    cancelled_by: str | None = None

    def __post_init__(self) -> None:
        if self.status not in APPOINTMENT_STATUSES:
            raise ValueError(f"status must be one of {APPOINTMENT_STATUSES}, not {self.status!r}")
        if self.cancelled_by is not None and self.cancelled_by not in CANCELLED_BY:
            raise ValueError(f"cancelled_by must be one of {CANCELLED_BY}")
        slot = Slot(self.starts_at, self.ends_at)
        self.starts_at, self.ends_at = slot.starts_at, slot.ends_at

    @property
    def is_active(self) -> bool:
        """Whether it still holds its slot: only a booked appointment does."""
        return self.status == "booked"

    def reschedule(self, slot: Slot, clinician_id: uuid.UUID | None = None) -> bool:
        """Moves it, with another clinician if given; the patient has to confirm again.
        False when it is already there with that clinician.

        A "YES" to the old time says nothing about the new one. A move to where it already
        is (a double click, a retried request) is no move: the confirmation stands and the
        patient is not told of a change that never happened.
        """
        self._require_booked("rescheduled")
        if slot.starts_at == self.starts_at and clinician_id in (None, self.clinician_id):
            return False
        self.starts_at, self.ends_at = slot.starts_at, slot.ends_at
        if clinician_id is not None:
            self.clinician_id = clinician_id
        self.confirmed = False
        return True

    def cancel(self, reason: str, by: str) -> None:
        """Frees the slot; the reason is kept because reception calls patients about it."""
        self._require_booked("cancelled")
        if by not in CANCELLED_BY:
            raise ValueError(f"cancelled by must be one of {CANCELLED_BY}, not {by!r}")
        if not reason or not reason.strip():
            raise Invalid("A cancellation needs a reason.", {"reason": ["must not be blank"]})
        self.status, self.cancel_reason, self.cancelled_by = "cancelled", reason.strip(), by

    def confirm(self) -> bool:
        """Records the patient's "YES"; False when already confirmed.

        Patients often reply twice; the second reply changes nothing, so no second event and
        no second thank-you text.
        """
        self._require_booked("confirmed")
        if self.confirmed:
            return False
        self.confirmed = True
        return True

    def mark_attended(self, now: datetime, tz: ZoneInfo | None = None) -> None:
        """Reception's "arrived / seen", allowed from the start of the appointment's day.

        Earlier the same day is fine (a patient seen early); a future day is a mis-click on
        the wrong row. The day is the clinic's: pass the clinic zone, or the UTC day is used,
        which in British Summer Time starts an hour late.
        """
        self._require_booked("marked attended")
        zone = tz or UTC
        if as_utc(now, "now").astimezone(zone).date() < self.starts_at.astimezone(zone).date():
            raise Conflict("An appointment on a later day cannot be marked attended yet.")
        self.status = "attended"

    def mark_no_show(self, now: datetime) -> None:
        """Reception's "did not come", refused before the appointment has started."""
        self._require_booked("marked a no-show")
        if as_utc(now, "now") < self.starts_at:
            raise Conflict("An appointment that has not started cannot be marked a no-show.")
        self.status = "no_show"

    def _require_booked(self, change: str) -> None:
        if self.status != "booked":
            shown = self.status.replace("_", "-")
            raise Conflict(f"This appointment is {shown}; only a booked one can be {change}.")


def still_answerable(appointment: Appointment, now: datetime) -> bool:
    """Whether a patient's YES or NO can still change this appointment: booked and not yet
    begun. A NO texted while running late, after the start, cancels nothing."""
    return appointment.is_active and appointment.starts_at > as_utc(now, "now")


def next_appointment_for_reply(
    appointments: list[Appointment], now: datetime
) -> Appointment | None:
    """The appointment a patient's SMS "YES" or "NO" is about when notify could not say which
    text it answers (none about an appointment went to that number): their next booked one.
    """
    upcoming = [a for a in appointments if still_answerable(a, now)]
    return min(upcoming, key=lambda a: (a.starts_at, str(a.id)), default=None)
