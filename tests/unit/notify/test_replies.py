"""A patient's SMS reply read as an intent, whole, so a chatty reply never cancels by accident."""
import pytest

from services.notify.model import parse_reply


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("YES", ("confirm", None)),
        ("yes", ("confirm", None)),
        (" Yes! ", ("confirm", None)),
        ("Y", ("confirm", None)),
        ("confirm.", ("confirm", None)),
        ("C", ("confirm", None)),
        ("NO", ("cancel", None)),
        ("no.", ("cancel", None)),
        ("N", ("cancel", None)),
        # Twilio also opts the patient out on CANCEL; our contract means the appointment.
        ("Cancel", ("cancel", None)),
        ("STOP", ("opt_out", None)),
        ("stop", ("opt_out", None)),
        ("StopAll", ("opt_out", None)),
        ("UNSUBSCRIBE", ("opt_out", None)),
        ("end", ("opt_out", None)),
        ("Quit", ("opt_out", None)),
        ("START", ("opt_in", None)),
        ("unstop", ("opt_in", None)),
    ],
)
def test_keywords(body, expected):
    assert parse_reply(body) == expected


@pytest.mark.parametrize(
    ("body", "score"),
    [("7", 7), (" 7 ", 7), ("7.", 7), ("0", 0), ("10", 10), ("07", 7), ("7/10", 7),
     ("7 / 10", 7), ("score 7", 7), ("Score: 3", 3), ("3 out of 10", 3), ("10/10", 10)],
)
def test_a_number_from_0_to_10_is_a_pain_score(body, score):
    assert parse_reply(body) == ("score", score)


@pytest.mark.parametrize(
    "body",
    ["", "   ", "11", "-3", "7.5", "5-6", "100", "7/11", "Yes please", "No problem, see you then",
     "please stop calling me at work", "STOP PLEASE", "Can I move it to Tuesday?", "👍"],
)
def test_anything_else_is_left_for_reception(body):
    assert parse_reply(body) == ("other", None)
