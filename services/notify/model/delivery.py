"""What a delivery report means and whether a failed send is worth trying again.

Twilio's status callbacks arrive late, twice, or out of order; its API errors are either
"try again later" or "this will never work". These rules decide between them without I/O.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta

# Twilio's message statuses in the order a message passes through them. The three outcomes
# share a rank: once one is known, a late report of another does not replace it. "read"
# (WhatsApp/RCS) can only follow "delivered".
STATUS_RANK: dict[str, int] = {
    "accepted": 0,
    "scheduled": 1,
    "queued": 2,
    "sending": 3,
    "sent": 4,
    "delivered": 5,
    "undelivered": 5,
    "failed": 5,
    "canceled": 5,
    "read": 6,
}
FINAL_STATUSES = frozenset({"delivered", "undelivered", "failed", "canceled", "read"})

# Twilio error codes that no retry will fix: an invalid number, a patient who replied STOP,
# a landline. The message is failed with the code kept, and the email fallback takes over.
PERMANENT_ERROR_CODES = frozenset({21211, 21610, 21614})

MISSED_CALL_INTERVAL = timedelta(hours=1)


def advance_status(current: str, reported: str) -> str:
    """The status a message has after a report: never backwards, and an outcome stays.

    A `sent` callback that overtakes `delivered` on the way to us must not make reception
    think the text is still in flight; nor may a late `delivered` hide a `failed` that
    already triggered the email fallback. A status we do not know (Twilio adds them) is
    ignored rather than failing the webhook, which Twilio would only retry.
    """
    current, reported = current.lower(), reported.lower()
    if current not in STATUS_RANK:
        raise ValueError(f"unknown message status {current!r}")
    if reported not in STATUS_RANK:
        return current
    if current == "delivered" and reported == "read":
        return reported
    if current in FINAL_STATUSES:
        return current
    return reported if STATUS_RANK[reported] > STATUS_RANK[current] else current


def is_retryable(http_status: int | None, error_code: int | None) -> bool:
    """Whether a failed send may succeed later.

    Twilio documents 429 as never processed and always safe to retry; 5xx and no answer at all
    (a timeout, a dropped connection: `http_status` None) are retried too, because the sender
    asks Twilio's message list before a second attempt. Any other 4xx, and the known permanent
    error codes whatever the status, would fail the same way every time.
    """
    if error_code in PERMANENT_ERROR_CODES:
        return False
    if http_status is None:
        return True
    return http_status == 429 or 500 <= http_status <= 599


def backoff_delay(
    attempt: int,
    base: float = 1.0,
    cap: float = 300.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry).

    Exponential with full jitter (a uniform pick up to base * 2**attempt, capped): after an
    outage every worker's queue of retries would otherwise hit Twilio in the same second.
    """
    if attempt < 0:
        raise ValueError("attempt counts from 0")
    ceiling = cap if attempt >= 64 else min(cap, base * 2.0**attempt)
    return rand() * ceiling


def missed_call_text_allowed(now: datetime, last_sent_to_patient: datetime | None) -> bool:
    """At most one "sorry we missed your call" per patient per hour.

    A patient who rings five times in ten minutes is trying to reach us, not asking for five
    texts; one reply tells them we know. Exactly an hour later a new call earns a new text.
    """
    return last_sent_to_patient is None or now - last_sent_to_patient >= MISSED_CALL_INTERVAL


# Messages about an appointment that only make sense while it is still to come. Once it is
# over (below) they are cancelled, pending or claimed, and never sent: a reminder for a
# cancelled appointment is the one message a patient must never get. A check-in is not among
# them: it follows an attended appointment.
ABOUT_A_COMING_APPOINTMENT = frozenset(
    {"confirmation", "reminder", "rescheduled", "form_link", "form_nudge"})
FINISHED_APPOINTMENT = frozenset({"cancelled", "attended", "no_show"})
# The texts that invite a reply ("Reply YES to confirm", "Can't come? Reply NO", the
# check-in's "0-10? Reply with a number"): what a patient's reply answers. A form link or a
# notice of a change asks nothing. A reply after a check-in answers the check-in: a "No"
# (not improving) must not be taken for a NO to an earlier confirmation of another visit.
ASKING_FOR_A_REPLY = frozenset({"confirmation", "reminder", "checkin"})
ASKING_FOR_YES_OR_NO = frozenset({"confirmation", "reminder"})


def texts_a_reply_answers(intent: str) -> frozenset[str]:
    """Which texts a reply of this intent can answer: the last of them sent is the one it
    does. A number answers the last check-in, whatever came after it; a YES the last text
    asking for a YES (a check-in asks for none); a NO, or anything else, the last text that
    asked for a reply at all, so a "No" after a check-in (not improving) cancels nothing."""
    if intent == "score":
        return frozenset({"checkin"})
    if intent == "confirm":
        return ASKING_FOR_YES_OR_NO
    return ASKING_FOR_A_REPLY
# An email standing in for an SMS that failed: about a coming appointment or a check-in, so
# dropped only when the appointment did not take place (a check-in follows an attended one).
SMS_FALLBACK = "sms_fallback"
CALLED_OFF = frozenset({"cancelled", "no_show"})


def send_slot_interval(per_second: float) -> timedelta:
    """The spacing of SMS sends under the cap: 1 / rate, every worker sharing it."""
    if per_second <= 0:
        raise ValueError("SMS_MAX_PER_SECOND must be positive")
    return timedelta(seconds=1 / per_second)


# SMS claimed per round: about this long's sending at the cap (see sms_batch_size).
SMS_ROUND_SECONDS = 2.0
MOST_SMS_PER_ROUND = 200


def sms_batch_size(interval: timedelta, lease: timedelta, lanes: int) -> int:
    """SMS claimed per round: about SMS_ROUND_SECONDS of sending at the cap, at least one per
    send lane, at most MOST_SMS_PER_ROUND, and never more than a third of the lease holds.

    A round's fixed work (the set-wise cancellations, three claims, the early-report sweep)
    is spread over its SMS, and every lane waits for the round's last send before the next
    claim, so small rounds leave the lanes idle: against a fast provider, 200 a round sent
    700-830 SMS a second where 50 sent 530-630. The bound in time keeps an email or a new
    confirmation from waiting long behind a round (8 SMS under the default cap of 1 a
    second, not the 20 that the lease alone allowed)."""
    at_the_cap = int(SMS_ROUND_SECONDS / interval.total_seconds())
    within_lease = int(lease.total_seconds() / 3 / interval.total_seconds())
    return max(1, min(MOST_SMS_PER_ROUND, within_lease, max(lanes, at_the_cap)))
