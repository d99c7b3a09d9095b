from datetime import date

import pytest

from services.booking.model import (
    check_date_of_birth,
    is_mobile,
    normalise_phone,
    normalise_postcode,
)


@pytest.mark.parametrize("raw", [
    "07400 123456", "07400123456", "+44 7400 123456", "0044 7400 123456", "+447400123456",
    " (07400) 123-456 ", "+44 (0)7400 123456",
])
def test_uk_mobile_written_any_usual_way_becomes_e164(raw):
    assert normalise_phone(raw) == "+447400123456"


def test_landline_and_international_numbers_are_kept():
    assert normalise_phone("020 7946 0018") == "+442079460018"
    assert normalise_phone("+33 6 12 34 56 78") == "+33612345678"


@pytest.mark.parametrize("raw", [
    "", "   ", "abc", "07400 12345", "07400 1234567", "+44", "12",
    "07700 900123",     # Ofcom drama range: not a number anyone has
    "(01632) 960 001",  # Ofcom drama range for landlines
])
def test_unusable_numbers_are_refused(raw):
    with pytest.raises(ValueError):
        normalise_phone(raw)


@pytest.mark.parametrize("raw", ["07400 123456 ext 12", "0800 FLOWERS", "07400123456x"])
def test_letters_are_refused_rather_than_guessed(raw):
    with pytest.raises(ValueError, match="digits"):
        normalise_phone(raw)


def test_refusal_is_a_sentence_reception_can_act_on():
    with pytest.raises(ValueError) as refused:
        normalise_phone("07400 12345")
    assert "07400 12345" in str(refused.value)


@pytest.mark.parametrize(("e164", "mobile"), [
    ("+447400123456", True),
    ("+442079460018", False),
    ("+12025550143", True),  # the US cannot tell mobiles from landlines by number
    ("+33612345678", True),
])
def test_is_mobile(e164, mobile):
    assert is_mobile(e164) is mobile


@pytest.mark.parametrize("raw", ["07400 123456", "+", "+abc"])
def test_is_mobile_wants_e164(raw):
    with pytest.raises(ValueError):
        is_mobile(raw)


@pytest.mark.parametrize(("raw", "postcode"), [
    ("EC1A 1BB", "EC1A 1BB"), ("W1A 0AX", "W1A 0AX"), ("M1 1AE", "M1 1AE"),
    ("B33 8TH", "B33 8TH"), ("CR2 6XH", "CR2 6XH"), ("DN55 1PT", "DN55 1PT"),
    ("SW1A 1AA", "SW1A 1AA"), ("sw1a1aa", "SW1A 1AA"), ("  sw1a   1aa ", "SW1A 1AA"),
    ("ec1a1bb", "EC1A 1BB"), ("m11ae", "M1 1AE"), ("GIR 0AA", "GIR 0AA"), ("gir0aa", "GIR 0AA"),
])
def test_valid_postcodes_take_royal_mail_form(raw, postcode):
    assert normalise_postcode(raw) == postcode


@pytest.mark.parametrize("raw", [
    "", "SW1A", "1AA", "SW1A 1A", "SW1A 1AAA", "Q1 1AA",  # Q never starts a postcode
    "AI1 1AA",   # I is never the second letter
    "W1I 1AA",   # I never follows the district digit
    "M1 1CA",    # C is never in the inward code
    "SW1A-1AA", "S W1A 1AA", "GIR 1AA", "123 456", "EC1A 1BB X",
])
def test_invalid_postcodes_are_refused(raw):
    with pytest.raises(ValueError, match="postcode"):
        normalise_postcode(raw)


TODAY = date(2026, 11, 25)


@pytest.mark.parametrize("dob", [date(1990, 5, 17), date(2026, 11, 24), date(1906, 11, 25)])
def test_plausible_dates_of_birth_pass(dob):
    check_date_of_birth(dob, TODAY)


@pytest.mark.parametrize("dob", [TODAY, date(2026, 11, 26), date(2090, 1, 1)])
def test_date_of_birth_today_or_later_is_refused(dob):
    with pytest.raises(ValueError, match="before today"):
        check_date_of_birth(dob, TODAY)


def test_date_of_birth_over_120_years_ago_is_refused():
    with pytest.raises(ValueError, match="120 years"):
        check_date_of_birth(date(1906, 11, 24), TODAY)


def test_120_years_before_a_leap_day_with_no_leap_day():
    check_date_of_birth(date(1900, 2, 28), date(2020, 2, 29))
    with pytest.raises(ValueError, match="120 years"):
        check_date_of_birth(date(1900, 2, 27), date(2020, 2, 29))
