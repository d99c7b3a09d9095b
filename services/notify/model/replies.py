"""What a patient's SMS reply means: confirm, cancel, opt out, opt in, a pain score, or other.

A reply is matched as a whole, never by its first word: "No problem, see you Tuesday" must not
cancel an appointment. Anything we are not sure of is "other", for reception to read.
"""
from __future__ import annotations

import re

# Keywords per the contract. Twilio also acts on some of these itself: it blocks further texts
# after STOP, STOPALL, UNSUBSCRIBE, END, QUIT *and CANCEL*, and lifts the block after START,
# UNSTOP *and YES*. Our contract maps CANCEL to cancelling the appointment, and we keep it so:
# the patient who texts CANCEL means the appointment. Twilio will still opt them out unless the
# Messaging Service's Advanced Opt-Out removes CANCEL from its keywords; until then later texts
# fail with 21610 (permanent) and go by email where the patient agreed to email.
INTENTS = {
    **dict.fromkeys(("YES", "Y", "CONFIRM", "C"), "confirm"),
    **dict.fromkeys(("NO", "N", "CANCEL"), "cancel"),
    **dict.fromkeys(("STOP", "STOPALL", "UNSUBSCRIBE", "END", "QUIT"), "opt_out"),
    **dict.fromkeys(("START", "UNSTOP"), "opt_in"),
}
# "7", "7/10", "7 / 10", "7 out of 10", "score 7", "Score: 7"
_SCORE = re.compile(r"(?:SCORE\s*:?\s*)?(\d{1,2})(?:\s*(?:/|OUT OF)\s*10)?")
# Trimmed from both ends; "-" and "+" are not, so "-3" is not read as a score of 3.
_TRIM = " \t\r\n.,;:!?'\"()[]{}*_~`"


def parse_reply(body: str) -> tuple[str, int | None]:
    """The intent of an SMS reply, and the pain score (0-10) when the intent is "score"."""
    text = re.sub(r"\s+", " ", body.strip(_TRIM).upper())
    if text in INTENTS:
        return INTENTS[text], None
    match = _SCORE.fullmatch(text)
    if match and int(match.group(1)) <= 10:
        return "score", int(match.group(1))
    return "other", None
