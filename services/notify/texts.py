"""The words patients read: SMS and email texts rendered from Jinja templates, and SMS sizing.

One template per message kind and channel under templates/, so the clinic's wording changes
without touching code. Texts name the treatment, clinician, time and clinic; never the
patient, their date of birth or anything they told us.
"""
from __future__ import annotations

import unicodedata
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from services.notify.model.schedule import as_utc

SMS_KINDS = (
    "confirmation",
    "reminder",
    "rescheduled",
    "cancelled",
    "form_link",
    "form_nudge",
    "checkin",
    "missed_call",
)
# sms_fallback: an SMS we could not deliver, sent by email to a patient who agreed to email.
EMAIL_KINDS = (*SMS_KINDS, "sms_fallback")

# GSM 03.38: the basic character set (one septet each) and its extension table (an escape and
# a septet, so two). Anything else makes the whole message UCS-2, with 70 characters a part.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
_GSM7 = GSM7_BASIC | GSM7_EXTENSION

# Typographic characters that creep in through config or pasted names ("O’Brien") and would
# turn a one-part GSM-7 text into a three-part UCS-2 one: replaced by their plain forms.
_PLAIN_GSM7 = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2026": "...",
        "\u00a0": " ",
        # Letters GSM-7 lacks that no accent-stripping reaches (see _in_gsm7).
        "\u0141": "L", "\u0142": "l", "\u0110": "D", "\u0111": "d", "\u0131": "i",
        "\u0152": "OE", "\u0153": "oe", "\u00d0": "D", "\u00f0": "d", "\u00de": "Th",
        "\u00fe": "th",
    }
)


def _in_gsm7(char: str) -> str:
    """A character GSM-7 lacks, as the GSM-7 letter it is built on: the accents of Irish,
    Welsh, Polish or Czech names ("Siobhán", "Zoë", "Dvořák") would otherwise make the whole
    text UCS-2, with 70 characters a part, so a usual reminder costs three parts. GSM-7's own
    accented letters (é, ü, Ñ ...) stay. A character with no such base (Greek, Cyrillic,
    Chinese) stays too: a name must stay readable, whatever the text then costs."""
    if char in GSM7_BASIC or char in GSM7_EXTENSION:
        return char
    base = "".join(c for c in unicodedata.normalize("NFKD", char)
                   if not unicodedata.combining(c))
    return base if base and all(c in GSM7_BASIC for c in base) else char


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
TEMPLATES = Path(__file__).parent / "templates"


def clinic_time(value: str | datetime, tz: ZoneInfo) -> str:
    """An instant as the clinic's wall clock shows it: "Mon 30 Nov at 10:00".

    Day and month names are spelled here rather than by strftime so a server's locale cannot
    change them. Accepts ISO strings too, since contexts come back from the database as JSON.
    """
    local = as_utc(value).astimezone(tz)
    return f"{_DAYS[local.weekday()]} {local.day} {_MONTHS[local.month - 1]} at {local:%H:%M}"


def tel_uri(phone: str) -> str:
    """The clinic's number as a link phones dial right (RFC 3966, E.164): "+44 (0)20 7946
    0321", the way the UK writes it, would otherwise become tel:+44(0)2079460321, which many
    phones dial as +44 0 20. A number phonenumbers cannot read is linked as written, digits
    and a leading + only."""
    try:
        number = phonenumbers.parse(phone, "GB")
        if phonenumbers.is_valid_number(number):
            return "tel:" + phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    except phonenumbers.NumberParseException:
        pass
    digits = "".join(c for c in phone if c.isdigit())
    return "tel:" + ("+" if phone.strip().startswith("+") else "") + digits


class MessageTexts:
    """Renders each kind of message with the clinic's name, phone and address filled in."""

    def __init__(self, clinic_name: str, clinic_phone: str, clinic_address: str, tz: ZoneInfo):
        self._env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            undefined=StrictUndefined,
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
            trim_blocks=True,
            lstrip_blocks=True,
            # Templates ship with the code: a running worker never needs to look at the files
            # again (by default it does, on every message).
            auto_reload=False,
        )
        self._env.filters["clinic_time"] = lambda value: clinic_time(value, tz)
        self._env.globals.update(
            clinic_name=clinic_name, clinic_phone=clinic_phone, clinic_address=clinic_address,
            clinic_phone_uri=tel_uri(clinic_phone),
        )

    def _render(self, name: str, context: dict[str, Any]) -> str:
        return self._env.get_template(name).render(context)

    def sms(self, kind: str, context: dict[str, Any]) -> str:
        """The SMS body on one line: templates wrap for readability, a text does not."""
        if kind not in SMS_KINDS:
            raise ValueError(f"no SMS text for {kind!r}")
        text = " ".join(self._render(f"sms/{kind}.txt", context).split()).translate(_PLAIN_GSM7)
        if _GSM7.issuperset(text):      # as almost every text is: one pass, in C
            return text
        return "".join(_in_gsm7(char) for char in text)

    def email(self, kind: str, context: dict[str, Any]) -> tuple[str, str, str]:
        """Subject, plain-text body and HTML body.

        The subject is forced onto one line: a line break in a header would start a new one.
        """
        if kind not in EMAIL_KINDS:
            raise ValueError(f"no email text for {kind!r}")
        subject = " ".join(self._render(f"email/{kind}.subject.txt", context).split())
        text = self._render(f"email/{kind}.txt", context).strip() + "\n"
        html = self._render(f"email/{kind}.html", context).strip() + "\n"
        return subject, text, html


def is_gsm7(text: str) -> bool:
    """Whether the text can go in GSM-7, the 160-character encoding every phone reads."""
    return all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text)


def _parts(units: list[int], single: int, per_part: int) -> int:
    """How many parts carry these character sizes; a character is never split across two."""
    if sum(units) <= single:
        return 1
    parts, used = 1, 0
    for size in units:
        if used + size > per_part:
            parts, used = parts + 1, 0
        used += size
    return parts


def sms_segments(text: str) -> int:
    """How many parts (and charges) an SMS takes.

    GSM-7: 160 septets alone, 153 a part once split (the rest is the joining header); the
    extension characters ({ } [ ] ~ ^ | \\ EUR) take two. Otherwise UCS-2: 70 alone, 67 a part,
    counted in UTF-16 units, so an emoji takes two.
    """
    if is_gsm7(text):
        return _parts([2 if c in GSM7_EXTENSION else 1 for c in text], 160, 153)
    return _parts([2 if ord(c) > 0xFFFF else 1 for c in text], 70, 67)
