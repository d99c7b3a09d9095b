"""Message texts: what they say, that they stay GSM-7, and how many SMS parts they cost."""
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from jinja2 import Environment, UndefinedError, meta

from services.notify.model import (
    QuietHours,
    plan_booked,
    plan_cancelled,
    plan_followup,
    plan_form_sent,
    plan_missed_call,
    plan_rescheduled,
)
from services.notify.model.delivery import ASKING_FOR_A_REPLY
from services.notify.texts import (
    EMAIL_KINDS,
    SMS_KINDS,
    MessageTexts,
    is_gsm7,
    sms_segments,
)

LONDON = ZoneInfo("Europe/London")
TEMPLATES = Path(__file__).parents[3] / "services" / "notify" / "templates"
STARTS_AT = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)  # Mon 30 Nov at 10:00 GMT

USUAL_CLINIC = MessageTexts(
    "Riverside Foot & Joint Clinic", "+441632960000", "12 Riverside Walk, Bristol BS1 4SB", LONDON
)
LONGEST_CLINIC = MessageTexts(
    "Marylebone Musculoskeletal & Pain Clinic",  # 40 characters
    "+44 (0)20 7946 0321",
    "Suite 4, Second Floor, 123 Harley Street, London W1G 6AX, UK",  # 60
    LONDON,
)
USUAL = {
    "treatment_name": "Physiotherapy",
    "clinician_name": "Dr Amira Shah",
    "starts_at": STARTS_AT,
    "previous_starts_at": datetime(2026, 11, 28, 15, 30, tzinfo=UTC),
    "url": "https://forms.riversideclinic.co.uk/f/Xk3fQ9pL2mWv8RtY6nB4cD",  # 60
    "reason": "Clinician unwell",
    "cancelled_by": "reception",
}
LONGEST = {
    **USUAL,
    "treatment_name": "Ultrasound-guided trigger point injection",
    "clinician_name": "Professor Alexandra Montgomery-Fraser",  # 37
    "url": "https://forms.marylebone-musculoskeletal-clinic.co.uk/f/"
    "eyJmb3JtIjoiZjBmMGYwZjAiLCJleHAiOjE3OTk5OTk5OTl9.Zx4Qw",  # 110
}
# Every wording a kind can take: cancelled by the patient or the clinic; a move or a new clinician.
VARIANTS = [
    (kind, change)
    for kind in SMS_KINDS
    for change in {
        "cancelled": [{}, {"cancelled_by": "patient"}],
        "rescheduled": [{}, {"previous_starts_at": None}],
    }.get(kind, [{}])
]
# With usual values everything fits one part but the confirmation, which must carry the
# treatment, clinician, time, address, phone and the YES/NO instruction: two parts.
USUAL_PARTS = {"confirmation": 2}


def test_the_longest_values_are_as_long_as_the_brief_says():
    assert len(LONGEST["url"]) == 110
    assert len(LONGEST["clinician_name"]) == 37


# Names with accents GSM-7 lacks (Irish, Welsh, Czech): sent in their GSM-7 letters, or a
# usual reminder would go as UCS-2 in three parts.
ACCENTED = {"clinician_name": "Dr Siobh\u00e1n N\u00ed Bhriain"}


@pytest.mark.parametrize(("kind", "change"), VARIANTS)
def test_accented_names_keep_every_sms_in_gsm7_and_its_usual_parts(kind, change):
    text = USUAL_CLINIC.sms(kind, {**USUAL, **ACCENTED, **change})
    assert is_gsm7(text), text
    assert sms_segments(text) == USUAL_PARTS.get(kind, 1), (len(text), text)
    if "clinician_name" in text or kind in ("confirmation", "reminder"):
        assert "Dr Siobhan Ni Bhriain" in text


def test_letters_without_a_gsm7_form_keep_the_name_readable():
    """Greek has no GSM-7 form here: kept (UCS-2 costs more parts, but the name reads)."""
    text = USUAL_CLINIC.sms("reminder", {**USUAL, "clinician_name": "Dr \u039d\u03af\u03ba\u03b7"})
    assert "\u039d" in text and not is_gsm7(text)
    polish = USUAL_CLINIC.sms("reminder", {
        **USUAL, "clinician_name": "Dr \u0141ukasz Dvo\u0159\u00e1k"})
    assert "Dr Lukasz Dvorak" in polish and is_gsm7(polish)


@pytest.mark.parametrize(("kind", "change"), VARIANTS)
def test_every_sms_with_the_longest_values_fits_two_parts_of_gsm7(kind, change):
    text = LONGEST_CLINIC.sms(kind, {**LONGEST, **change})
    assert is_gsm7(text), text
    assert sms_segments(text) <= 2, (len(text), text)


@pytest.mark.parametrize(("kind", "change"), VARIANTS)
def test_every_sms_with_usual_values_fits_one_part_but_the_confirmation(kind, change):
    text = USUAL_CLINIC.sms(kind, {**USUAL, **change})
    assert is_gsm7(text), text
    assert sms_segments(text) == USUAL_PARTS.get(kind, 1), (len(text), text)


@pytest.mark.parametrize(("kind", "change"), VARIANTS)
def test_an_sms_is_one_line(kind, change):
    text = USUAL_CLINIC.sms(kind, {**USUAL, **change})
    assert "\n" not in text and "  " not in text and text == text.strip()


def test_the_confirmation_says_what_where_when_and_how_to_answer():
    text = USUAL_CLINIC.sms("confirmation", USUAL)
    assert text == (
        "Riverside Foot & Joint Clinic: your Physiotherapy with Dr Amira Shah is booked for "
        "Mon 30 Nov at 10:00, 12 Riverside Walk, Bristol BS1 4SB. "
        "Reply YES to confirm, NO to cancel. Tel +441632960000"
    )


def test_the_email_links_the_clinics_number_as_phones_dial_it():
    """Written the UK way, "+44 (0)20 7946 0321" must not become tel:+44(0)20..., which
    many phones dial as +44 0 20."""
    _, _, html = LONGEST_CLINIC.email("reminder", LONGEST)
    assert 'href="tel:+442079460321"' in html


def test_a_check_in_by_email_says_how_to_answer_it():
    """An email cannot take the score a text reply gives: it says to call, as does the email
    standing in for a check-in SMS that could not be delivered."""
    for kind, context in (("checkin", USUAL),
                          ("sms_fallback", {**USUAL, "of": "checkin",
                                            "sms_text": USUAL_CLINIC.sms("checkin", USUAL)})):
        _, text, html = USUAL_CLINIC.email(kind, context)
        for body in (text, html):
            flat = " ".join(body.split())
            assert "call us on +441632960000" in flat and "cannot take replies" in flat


def test_times_are_shown_on_the_clinic_clock_in_summer():
    text = USUAL_CLINIC.sms("reminder", {**USUAL, "starts_at": "2026-07-01T09:00:00Z"})
    assert "Wed 1 Jul at 10:00" in text


def test_the_checkin_asks_for_a_score_and_offers_a_review():
    text = USUAL_CLINIC.sms("checkin", USUAL)
    assert "how is your pain" in text and "0-10" in text
    assert "Reply with a number" in text
    assert "review" in text and "+441632960000" in text


def test_a_reschedule_names_the_new_time_or_the_new_clinician():
    moved = USUAL_CLINIC.sms("rescheduled", USUAL)
    new_clinician = USUAL_CLINIC.sms("rescheduled", {**USUAL, "previous_starts_at": STARTS_AT})
    assert "has moved to Mon 30 Nov at 10:00" in moved
    assert "is now with Dr Amira Shah" in new_clinician


def test_a_cancellation_by_the_clinic_apologises_and_never_prints_the_reason():
    by_clinic = USUAL_CLINIC.sms("cancelled", USUAL)
    by_patient = USUAL_CLINIC.sms("cancelled", {**USUAL, "cancelled_by": "patient"})
    assert "sorry" in by_clinic and "as you asked" in by_patient
    for _, text, html in [USUAL_CLINIC.email("cancelled", USUAL), (None, by_clinic, by_patient)]:
        assert "unwell" not in text and "unwell" not in html


def test_typographic_quotes_and_dashes_from_config_are_made_plain():
    clinic = MessageTexts("St Mary\u2019s \u2013 Pain Clinic", "+441632960000", "1 Road", LONDON)
    text = clinic.sms("missed_call", {})
    assert text.startswith("St Mary's - Pain Clinic:")
    assert is_gsm7(text)


def test_a_missing_value_is_an_error_not_a_blank():
    with pytest.raises(UndefinedError):
        USUAL_CLINIC.sms("reminder", {"treatment_name": "Physiotherapy", "starts_at": STARTS_AT})


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError):
        USUAL_CLINIC.sms("sms_fallback", {"sms_text": "x"})
    with pytest.raises(ValueError):
        USUAL_CLINIC.email("birthday", USUAL)


@pytest.mark.parametrize("kind", EMAIL_KINDS)
def test_every_email_has_a_subject_a_text_and_an_html_part(kind):
    subject, text, html = USUAL_CLINIC.email(kind, {**USUAL, "sms_text": "A text."})
    assert subject and "\n" not in subject
    assert text.strip() and "<" not in text
    assert html.startswith("<!doctype html>") and "</html>" in html
    assert "Riverside Foot & Joint Clinic" in text
    assert "Riverside Foot &amp; Joint Clinic" in html
    assert "+441632960000" in text and "+441632960000" in html


def test_html_escapes_values_and_text_keeps_them():
    context = {**USUAL, "clinician_name": "Dr <b>Shah</b>", "url": "https://f/x?a=1&b=2"}
    _, text, html = USUAL_CLINIC.email("confirmation", context)
    assert "Dr <b>Shah</b>" in text and "Dr &lt;b&gt;Shah&lt;/b&gt;" in html
    _, text, html = USUAL_CLINIC.email("form_link", context)
    assert "https://f/x?a=1&b=2" in text and 'href="https://f/x?a=1&amp;b=2"' in html


def test_the_confirmation_email_gives_the_details_without_a_reply_keyword():
    subject, text, _ = USUAL_CLINIC.email("confirmation", USUAL)
    assert subject == "Your appointment on Mon 30 Nov at 10:00 is booked"
    for detail in ("Physiotherapy", "Dr Amira Shah", "Mon 30 Nov at 10:00",
                   "12 Riverside Walk, Bristol BS1 4SB"):
        assert detail in text
    assert "Reply YES" not in text


def test_the_fallback_email_carries_the_undelivered_text():
    sms = USUAL_CLINIC.sms("confirmation", USUAL)
    _, text, html = USUAL_CLINIC.email("sms_fallback", {"sms_text": sms})
    assert sms in text
    assert "Reply YES to confirm, NO to cancel." in html


# Templates may use only these names: nothing that identifies the patient or what they said.
ALLOWED_NAMES = {
    "clinic_name", "clinic_phone", "clinic_phone_uri", "clinic_address", "treatment_name",
    "clinician_name",
    "starts_at", "previous_starts_at", "url", "cancelled_by", "sms_text",
}


@pytest.mark.parametrize(
    "path", sorted(TEMPLATES.rglob("*.*")), ids=lambda p: str(p.relative_to(TEMPLATES))
)
def test_templates_use_no_patient_details_and_plain_characters(path):
    source = path.read_text()
    assert source.isascii(), "no curly quotes, dashes or other typography"
    env = Environment()
    env.filters["clinic_time"] = str
    assert meta.find_undeclared_variables(env.parse(source)) <= ALLOWED_NAMES


def test_every_kind_has_its_templates():
    assert {p.stem for p in (TEMPLATES / "sms").glob("*.txt")} == set(SMS_KINDS)
    for kind in EMAIL_KINDS:
        for suffix in (".subject.txt", ".txt", ".html"):
            assert (TEMPLATES / "email" / f"{kind}{suffix}").is_file()


@pytest.mark.parametrize(
    ("text", "gsm7"),
    [("Mon 30 Nov at 10:00, £5", True), ("Café {ok} [x] ~ ^ | \\ €", True),
     ("St Mary\u2019s", False), ("pain \u2014 0-10", False), ("\x1b", False), ("😀", False)],
)
def test_gsm7_is_the_basic_set_and_its_extension(text, gsm7):
    assert is_gsm7(text) is gsm7


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("{" * 80, 1),  # 160 septets: extension characters take two
        ("{" * 81, 2),
        # 305 septets would fit 2 x 153, but "{" cannot be split across parts
        ("a" * 152 + "{" + "a" * 152, 3),
        ("\u0107" * 70, 1),  # UCS-2
        ("\u0107" * 71, 2),
        ("\u0107" * 134, 2),
        ("\u0107" * 135, 3),
        ("😀" * 35, 1),  # two UTF-16 units each
        ("😀" * 36, 2),
    ],
)
def test_sms_parts(text, parts):
    assert sms_segments(text) == parts


def test_every_message_the_policies_plan_renders_on_its_channel():
    """The contexts the policies build hold exactly what the templates ask for."""
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)
    contact = {"phone": "+447400123456", "email": "p@example.org", "sms": True, "email_ok": True}
    booking = {
        "appointment_id": "a1", "patient_id": "p1", "clinician_name": "Dr Amira Shah",
        "treatment": {"code": "PHY", "name": "Physiotherapy"},
        "starts_at": "2026-11-30T10:00:00Z", "contact": contact,
    }
    quiet, offsets = QuietHours("21:00", "08:00"), [timedelta(hours=48), timedelta(hours=2)]
    planned = [
        *plan_booked(booking, now, offsets, quiet, LONDON),
        *plan_rescheduled(
            {**booking, "previous_starts_at": "2026-11-28T10:00:00Z"}, now, offsets, quiet, LONDON
        ),
        *plan_cancelled({**booking, "cancelled_by": "patient", "reason": "x"}, now),
        *plan_form_sent(
            {"form_id": "f1", "appointment_id": "a1", "patient_id": "p1", "url": "https://f/x",
             "appointment_starts_at": "2026-11-30T10:00:00Z", "contact": contact},
            now, quiet, LONDON,
        ),
        *plan_followup(
            {"followup_id": "u1", "appointment_id": "a1", "patient_id": "p1", "kind": "checkin",
             "due_at": "2026-12-14T10:00:00Z", "treatment": booking["treatment"],
             "contact": {**contact, "sms": False}},
            now, quiet, LONDON,
        ),
        *plan_missed_call(
            {"call_id": "c1", "patient_id": "p1", "at": None, "contact": contact}, now, None
        ),
    ]
    assert {m.kind for m in planned} == set(SMS_KINDS)
    for message in planned:
        if message.channel == "sms":
            assert sms_segments(USUAL_CLINIC.sms(message.kind, message.context)) <= 2
        else:
            assert all(USUAL_CLINIC.email(message.kind, message.context))


def test_the_texts_a_reply_can_answer_are_exactly_those_that_invite_one():
    """A patient's reply is matched to the last text that asked for one (notify's
    `last_about_an_appointment`): the set must follow the templates' wording, a YES or NO
    or the check-in's score."""
    templates = Path(__file__).resolve().parents[3] / "services/notify/templates/sms"
    inviting = {path.stem for path in templates.glob("*.txt")
                if re.search(r"Reply\s+(YES|NO|with\s+a\s+number)\b", path.read_text())}
    assert inviting == ASKING_FOR_A_REPLY
