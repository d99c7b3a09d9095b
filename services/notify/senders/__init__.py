"""Outbound senders: Twilio SMS, SMTP email, and console sinks for the embedded default.

`build_sms_sender(config)` / `build_email_sender(config)` are called by bootstrap; nothing is
built at import time.
"""
from __future__ import annotations

from .console import ConsoleEmail, ConsoleSms
from .email import SmtpEmail
from .result import (
    EmailSender,
    PermanentSendError,
    SendResult,
    SmsSender,
    TransientSendError,
)
from .sms import BaseUrlHttpClient, TwilioSms

__all__ = [
    "BaseUrlHttpClient",
    "ConsoleEmail",
    "ConsoleSms",
    "EmailSender",
    "PermanentSendError",
    "SendResult",
    "SmsSender",
    "SmtpEmail",
    "TransientSendError",
    "TwilioSms",
    "build_email_sender",
    "build_sms_sender",
]


def _require(backend: str, settings: dict[str, object]) -> None:
    missing = [name for name, value in settings.items() if not value]
    if missing:
        raise ValueError(f"{backend} needs {', '.join(missing)}")


def build_sms_sender(config) -> SmsSender:
    backend = (config.sms_backend or "console").strip().lower()
    if backend == "console":
        return ConsoleSms()
    if backend == "twilio":
        _require(
            "SMS_BACKEND=twilio",
            {
                "TWILIO_ACCOUNT_SID": config.twilio_account_sid,
                "TWILIO_AUTH_TOKEN": config.twilio_auth_token,
                "TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID": (
                    config.twilio_from_number or config.twilio_messaging_service_sid
                ),
            },
        )
        return TwilioSms(
            account_sid=config.twilio_account_sid,
            auth_token=config.twilio_auth_token,
            from_number=config.twilio_from_number,
            messaging_service_sid=config.twilio_messaging_service_sid,
            api_base_url=config.twilio_api_base_url,
        )
    raise ValueError(f"SMS_BACKEND must be 'twilio' or 'console', not {backend!r}")


def build_email_sender(config) -> EmailSender:
    backend = (config.email_backend or "console").strip().lower()
    if backend == "console":
        return ConsoleEmail(sender=config.email_from)
    if backend == "smtp":
        _require("EMAIL_BACKEND=smtp", {"SMTP_HOST": config.smtp_host})
        return SmtpEmail(
            host=config.smtp_host,
            port=config.smtp_port,
            username=config.smtp_username,
            password=config.smtp_password,
            starttls=config.smtp_starttls,
            sender=config.email_from,
        )
    raise ValueError(f"EMAIL_BACKEND must be 'smtp' or 'console', not {backend!r}")
