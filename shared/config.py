"""Configuration from the contract's environment variables, read once and passed down.

Nothing reads `os.environ` after start-up: `Config.from_env` is called by the CLI (or a test)
and the resulting object is handed to `create_app` / `bootstrap`.
"""
from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from zoneinfo import ZoneInfo

SERVICES = ("booking", "forms", "notify")
DEV_PORTS = {"booking": 5001, "forms": 5002, "notify": 5003}


def _flag(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _secret(var_dir: Path, name: str) -> str:
    """A development secret generated once into var/, so restarts keep sessions and links valid."""
    path = var_dir / name
    if path.exists():
        return path.read_text().strip()
    var_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    path.write_text(value)
    path.chmod(0o600)
    return value


@dataclass(frozen=True)
class Config:
    amqp_url: str = "memory://"
    database_urls: Mapping[str, str] = field(default_factory=dict)
    secret_key: str = "dev-only-secret"
    clinic_name: str = "Riverside Foot & Joint Clinic"
    clinic_phone: str = "+441632960000"
    clinic_address: str = "12 Riverside Walk, Bristol BS1 4SB"
    clinic_timezone: str = "Europe/London"
    public_base_url_booking: str = "http://127.0.0.1:5001"
    public_base_url_forms: str = "http://127.0.0.1:5002"
    public_base_url_notify: str = "http://127.0.0.1:5003"
    sms_backend: str = "console"
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_from_number: str | None = None
    twilio_messaging_service_sid: str | None = None
    twilio_api_base_url: str | None = None
    sms_max_per_second: float = 1.0
    email_backend: str = "console"
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    email_from: str = "appointments@clinic.example"
    phone_webhook_secret: str = "dev-phone-secret"
    reminder_offsets: str = "48h,2h"
    quiet_hours: str = "21:00-08:00"
    notify_lease_seconds: float = 60.0
    notify_send_concurrency: int = 8
    var_dir: Path = Path("var")
    log_level: str = "INFO"
    testing: bool = False

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.clinic_timezone)

    def database_url(self, service: str) -> str:
        url = self.database_urls.get(service)
        if url:
            return url
        return f"sqlite:///{(self.var_dir / f'{service}.sqlite3').resolve()}"

    def with_(self, **changes) -> Config:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        var_dir = Path(env.get("CLINIC_VAR_DIR", "var"))
        get = lambda name, default=None: env.get(name) or default  # noqa: E731
        return cls(
            amqp_url=get("AMQP_URL", "memory://"),
            database_urls={
                s: env[f"{s.upper()}_DATABASE_URL"]
                for s in SERVICES
                if env.get(f"{s.upper()}_DATABASE_URL")
            },
            secret_key=get("SECRET_KEY") or _secret(var_dir, "secret_key"),
            clinic_name=get("CLINIC_NAME", cls.clinic_name),
            clinic_phone=get("CLINIC_PHONE", cls.clinic_phone),
            clinic_address=get("CLINIC_ADDRESS", cls.clinic_address),
            clinic_timezone=get("CLINIC_TIMEZONE", "Europe/London"),
            public_base_url_booking=get("PUBLIC_BASE_URL_BOOKING", cls.public_base_url_booking),
            public_base_url_forms=get("PUBLIC_BASE_URL_FORMS", cls.public_base_url_forms),
            public_base_url_notify=get("PUBLIC_BASE_URL_NOTIFY", cls.public_base_url_notify),
            sms_backend=get("SMS_BACKEND", "console"),
            twilio_account_sid=get("TWILIO_ACCOUNT_SID"),
            twilio_auth_token=get("TWILIO_AUTH_TOKEN"),
            twilio_from_number=get("TWILIO_FROM_NUMBER"),
            twilio_messaging_service_sid=get("TWILIO_MESSAGING_SERVICE_SID"),
            twilio_api_base_url=get("TWILIO_API_BASE_URL"),
            sms_max_per_second=float(get("SMS_MAX_PER_SECOND", "1")),
            email_backend=get("EMAIL_BACKEND", "console"),
            smtp_host=get("SMTP_HOST"),
            smtp_port=int(get("SMTP_PORT", "25")),
            smtp_username=get("SMTP_USERNAME"),
            smtp_password=get("SMTP_PASSWORD"),
            smtp_starttls=_flag(env.get("SMTP_STARTTLS")),
            email_from=get("EMAIL_FROM", cls.email_from),
            phone_webhook_secret=get("PHONE_WEBHOOK_SECRET")
            or _secret(var_dir, "phone_webhook_secret"),
            reminder_offsets=env.get("REMINDER_OFFSETS", "48h,2h"),
            quiet_hours=env.get("QUIET_HOURS", "21:00-08:00"),
            notify_lease_seconds=float(get("NOTIFY_LEASE_SECONDS", "60")),
            notify_send_concurrency=max(1, int(get("NOTIFY_SEND_CONCURRENCY", "8"))),
            var_dir=var_dir,
            log_level=get("LOG_LEVEL", "INFO"),
        )
