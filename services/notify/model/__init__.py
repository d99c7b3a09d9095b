"""The notifier's rules as plain functions: no Flask, SQL, kombu, twilio, and no I/O.

Split by job (schedule, policy, replies, delivery) and re-exported here, so handlers write
`from services.notify.model import plan_booked` without knowing the layout.
"""
from services.notify.model.delivery import (
    FINAL_STATUSES,
    MISSED_CALL_INTERVAL,
    PERMANENT_ERROR_CODES,
    STATUS_RANK,
    advance_status,
    backoff_delay,
    is_retryable,
    missed_call_text_allowed,
)
from services.notify.model.policy import (
    PlannedMessage,
    channels_for,
    plan_booked,
    plan_cancelled,
    plan_followup,
    plan_form_sent,
    plan_missed_call,
    plan_rescheduled,
)
from services.notify.model.replies import INTENTS, parse_reply
from services.notify.model.schedule import (
    QuietHours,
    as_utc,
    parse_offsets,
    parse_quiet_hours,
    place_outside_quiet_hours,
    reminder_times,
)

__all__ = [
    "FINAL_STATUSES",
    "INTENTS",
    "MISSED_CALL_INTERVAL",
    "PERMANENT_ERROR_CODES",
    "STATUS_RANK",
    "PlannedMessage",
    "QuietHours",
    "advance_status",
    "as_utc",
    "backoff_delay",
    "channels_for",
    "is_retryable",
    "missed_call_text_allowed",
    "parse_offsets",
    "parse_quiet_hours",
    "parse_reply",
    "place_outside_quiet_hours",
    "plan_booked",
    "plan_cancelled",
    "plan_followup",
    "plan_form_sent",
    "plan_missed_call",
    "plan_rescheduled",
    "reminder_times",
]
