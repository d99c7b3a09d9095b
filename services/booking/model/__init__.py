"""The booking service's rules, free of Flask, SQL and the broker, so they test in microseconds."""
from .appointments import (
    APPOINTMENT_STATUSES,
    CANCELLED_BY,
    INTAKE_FORM_STATUSES,
    Appointment,
    next_appointment_for_reply,
    still_answerable,
)
from .catalogue import DEMO_CLINICIANS, DEMO_NAMESPACE, DEMO_TREATMENTS
from .clinicians import WEEKDAYS, Clinician, WorkingHours, parse_working_hours
from .patients import (
    check_date_of_birth,
    is_mobile,
    normalise_phone,
    normalise_postcode,
)
from .schedule import Slot, check_bookable, free_slots
from .treatments import FOLLOWUP_KINDS, FollowUpPlan, Treatment, followup_due

__all__ = [
    "APPOINTMENT_STATUSES",
    "CANCELLED_BY",
    "DEMO_CLINICIANS",
    "DEMO_NAMESPACE",
    "DEMO_TREATMENTS",
    "FOLLOWUP_KINDS",
    "INTAKE_FORM_STATUSES",
    "WEEKDAYS",
    "Appointment",
    "Clinician",
    "FollowUpPlan",
    "Slot",
    "Treatment",
    "WorkingHours",
    "check_bookable",
    "check_date_of_birth",
    "followup_due",
    "free_slots",
    "is_mobile",
    "next_appointment_for_reply",
    "still_answerable",
    "normalise_phone",
    "normalise_postcode",
    "parse_working_hours",
]
