"""What makes a patient's contact details usable: a phone we can text, a postcode, a real age.

Reception types numbers as patients say them ("07400 123456", "0044 ..."); reminders go to
Twilio, which wants E.164. Normalising once, at the door, means one patient is one number
when an SMS reply or a missed call has to be matched back to them.
"""
from __future__ import annotations

import re
from datetime import date

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

DEFAULT_REGION = "GB"
MAX_AGE_YEARS = 120

# Digits and the punctuation people write numbers with. Letters are refused rather than read
# as a keypad ("0800 FLOWERS") or dropped ("07400 123456 ext 12"): on a patient's record they
# are a typo or an extension, and either way a text would go to the wrong place.
_PHONE_CHARACTERS = re.compile(r"[0-9\s+().\-]+")

# Royal Mail's format rules: the first letter is never Q, V or X, the second never I, J or Z;
# a letter after the district digit is one of a fixed set; the inward code never uses
# C, I, K, M, O or V (they are too easily misread on an envelope).
_AREA = "[A-PR-UWYZ]"
_OUTWARD = (
    f"(?:{_AREA}[0-9]{{1,2}}"
    f"|{_AREA}[A-HK-Y][0-9]{{1,2}}"
    f"|{_AREA}[0-9][ABCDEFGHJKPSTUW]"
    f"|{_AREA}[A-HK-Y][0-9][ABEHMNPRVWXY])"
)
_INWARD = "[0-9][ABD-HJLNP-UW-Z]{2}"
_POSTCODE = re.compile(rf"\s*(?:(GIR)\s*(0AA)|({_OUTWARD})\s*({_INWARD}))\s*")


def normalise_phone(raw: str) -> str:
    """The number in E.164, read as a UK number unless it starts with + or 00.

    Numbers phonenumbers calls invalid are refused, Ofcom's drama ranges included: a reminder
    to a number that cannot exist is a reminder the patient never gets.
    """
    text = raw.strip()
    if not text or not _PHONE_CHARACTERS.fullmatch(text):
        raise ValueError(f"{raw!r} is not a phone number: use digits only, e.g. 07400 123456")
    try:
        number = phonenumbers.parse(text, DEFAULT_REGION)
    except NumberParseException:
        raise ValueError(f"{raw!r} is not a phone number, e.g. 07400 123456") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"{raw!r} is not a number in use: check the digits")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def is_mobile(e164: str) -> bool:
    """Whether texts to this number can reach a phone: only then is SMS worth sending.

    FIXED_LINE_OR_MOBILE counts (the US and Canada cannot tell the two apart by number).
    Anything but E.164 is refused: read as a UK number by accident, "+1..." and "1..." would
    give different answers for the same patient.
    """
    if not e164.startswith("+"):
        raise ValueError(f"{e164!r} is not in E.164 form, e.g. +447400123456")
    try:
        number = phonenumbers.parse(e164, None)
    except NumberParseException:
        raise ValueError(f"{e164!r} is not in E.164 form, e.g. +447400123456") from None
    return phonenumbers.number_type(number) in (
        PhoneNumberType.MOBILE,
        PhoneNumberType.FIXED_LINE_OR_MOBILE,
    )


def normalise_postcode(raw: str) -> str:
    """A UK postcode in Royal Mail's form, "SW1A 1AA", however it was typed.

    Lower case and missing or doubled spaces are forgiven; a shape no UK postcode has is not,
    because a GP letter or an invoice sent to it comes back.
    """
    match = _POSTCODE.fullmatch(raw.upper())
    if not match:
        raise ValueError(f"{raw!r} is not a UK postcode, e.g. SW1A 1AA")
    outward, inward = (match.group(1), match.group(2)) if match.group(1) else match.group(3, 4)
    return f"{outward} {inward}"


def check_date_of_birth(dob: date, today: date) -> None:
    """Refuses a birth date that is today, in the future or over 120 years ago.

    Each of those is a slip of the keyboard (this year typed for the birth year, 1825 for
    1925), and the date of birth is how reception tells two patients with one name apart.
    """
    if dob >= today:
        raise ValueError("date of birth must be before today")
    try:
        oldest = today.replace(year=today.year - MAX_AGE_YEARS)
    except ValueError:  # 29 February, and that year has none
        oldest = today.replace(year=today.year - MAX_AGE_YEARS, day=28)
    if dob < oldest:
        raise ValueError(f"date of birth is more than {MAX_AGE_YEARS} years ago")

