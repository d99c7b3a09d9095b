"""JSON logs with ids, never personal data.

`configure_logging` is called once by the CLI or a test. As a last line of defence a processor
drops any key that names personal or clinical data, so a careless `log.info(..., phone=...)`
cannot leak a patient's details into log storage.
"""
from __future__ import annotations

import logging
import sys

import structlog

PERSONAL_KEYS = frozenset({
    "name", "given_name", "family_name", "date_of_birth", "dob", "address", "postcode",
    "phone", "email", "to", "body", "text", "html", "answers", "gp", "notes",
})


def _drop_personal_data(_logger, _method, event_dict: dict) -> dict:
    for key in PERSONAL_KEYS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


def configure_logging(level: str = "INFO", stream=None) -> None:
    logging.basicConfig(format="%(message)s", stream=stream or sys.stderr,
                        level=getattr(logging, level.upper(), logging.INFO), force=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_personal_data,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        cache_logger_on_first_use=False,
    )


def get_logger(component: str):
    return structlog.get_logger(component=component)
