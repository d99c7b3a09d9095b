"""Booking creation under load: `POST /api/v1/appointments` on `clinic serve booking` with
PostgreSQL, against a bare Flask JSON POST app on the same gunicorn settings.

The two servers run side by side and are driven in turns (see _alternating). Every request
books a different free slot (many clinicians working long days, every day, over
weeks), so each one succeeds with 201 and does the full work: token check, validation, the
transaction with its exclusion-constraint insert, and the outbox row with its `pg_notify`.
"""
from __future__ import annotations

import json
import os
import sys
from datetime import date, datetime, time, timedelta
from pathlib import Path

import sqlalchemy as sa

from bench import processes
from bench.infra import postgres_databases, rabbitmq_vhost
from bench.loadgen import percentile
from bench.report import Goal, Row
from bench.settings import Settings

CLINICIANS = 100
PATIENTS = 500
DAYS = 25
OPENS, CLOSES = time(7, 0), time(21, 0)
TREATMENT = "TPI"  # 30 minutes, needs consent, plans a follow-up: a full booked event
SLOT_MINUTES = 30
ROUNDS = 3            # turns each server is driven in, alternately (see _alternating)
REWARM_SECONDS = 1.0  # driven before measuring in every round after the first


def _environment(urls: dict[str, str], amqp_url: str, workdir: Path) -> dict:
    return {
        **os.environ,
        "AMQP_URL": amqp_url,
        "BOOKING_DATABASE_URL": urls["booking"],
        "FORMS_DATABASE_URL": urls["forms"],
        "NOTIFY_DATABASE_URL": urls["notify"],
        "SECRET_KEY": "bench-only-secret",
        "PHONE_WEBHOOK_SECRET": "bench-only-phone-secret",
        "CLINIC_VAR_DIR": str(workdir / "var"),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }


def _seed(env: dict) -> tuple[list[str], list[str], date]:
    return seed_clinic(env, CLINICIANS, [_patient(n) for n in range(PATIENTS)])


def seed_clinic(env: dict, clinicians: int, patients: list[dict]
                ) -> tuple[list[str], list[str], date]:
    """The demo treatments, `clinicians` working OPENS-CLOSES every day and `patients`:
    their ids, and the first day to book (the day after tomorrow, clinic time)."""
    from services.booking import service
    from services.booking.app import bootstrap
    from services.booking.model import DEMO_TREATMENTS
    from shared.config import Config

    context = bootstrap(Config.from_env(env))
    try:
        with context.uow() as uow:
            for treatment in DEMO_TREATMENTS:
                uow.treatments.save(treatment)
            uow.commit()
        week = [{"weekday": day, "start": f"{OPENS:%H:%M}", "end": f"{CLOSES:%H:%M}"}
                for day in range(7)]
        clinician_ids = [
            str(service.add_clinician(context.uow(), f"Bench Clinician {n}", week).id)
            for n in range(clinicians)]
        patient_ids = [str(service.register_patient(context.uow(), patient, context.tz).id)
                       for patient in patients]
        first_day = context.clock.now().astimezone(context.tz).date() + timedelta(days=2)
        return clinician_ids, patient_ids, first_day
    finally:
        context.engine.dispose()


def _patient(n: int) -> dict:
    return {"given_name": "Bench", "family_name": f"Patient {n}",
            "date_of_birth": date(1960 + n % 40, 1 + n % 12, 1 + n % 28),
            "phone": f"+4474009{n:05d}", "email": f"bench{n}@example.org",
            "address": {"line1": f"{n} Bench Street", "line2": None, "city": "Bristol",
                        "postcode": "BS1 5TR"},
            "gp": None, "consent": {"sms": True, "email": True}}


def booking_bodies(clinicians: list[str], patients: list[str], first_day: date, days: int,
                   tz_name: str) -> list[bytes]:
    """One request body per free slot, clinicians interleaved so that concurrent requests
    rarely wait on the same clinician's rows."""
    from zoneinfo import ZoneInfo
    tz = ZoneInfo(tz_name)
    bodies = []
    n = 0
    for day_offset in range(days):
        day = first_day + timedelta(days=day_offset)
        start = datetime.combine(day, OPENS)
        while (start + timedelta(minutes=SLOT_MINUTES)).time() <= CLOSES and \
                start.date() == day:
            starts_at = start.replace(tzinfo=tz).isoformat()
            for clinician in clinicians:
                bodies.append(json.dumps({
                    "patient_id": patients[n % len(patients)], "clinician_id": clinician,
                    "treatment_code": TREATMENT, "starts_at": starts_at,
                }).encode())
                n += 1
            start += timedelta(minutes=SLOT_MINUTES)
    return bodies


def _appointments(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text("SELECT count(*) FROM appointments")).scalar()
    finally:
        engine.dispose()


def _check(result: dict, what: str) -> None:
    if result["unexpected"]:
        raise RuntimeError(f"{what}: unexpected answers {result['unexpected']}, e.g. "
                           f"{result['samples']}")
    if result["exhausted"]:
        raise RuntimeError(f"{what}: ran out of free slots; raise bench.booking.DAYS")
    if not result["requests"]:
        raise RuntimeError(f"{what}: no request completed in the measured window")


def _alternating(settings: Settings, workdir: Path, env: dict, token: str,
                 bodies: list[bytes]) -> tuple[dict, dict]:
    """Both servers up at once, driven in turn for ROUNDS slices of the measured time each
    (bare, booking, bare, booking, ...): a slow spell of a shared machine then weighs on both
    figures alike, where one long run of each let it fall on one side only (the same code
    measured 444 and 948 bookings/s in two runs). Each round books from its own slice of the
    free slots; the first round of each server warms it up."""
    slices = [bodies[n::ROUNDS] for n in range(ROUNDS)]
    files = []
    for n, part in enumerate(slices):
        files.append(workdir / f"bookings-{n}.jsonl")
        files[-1].write_bytes(b"\n".join(part))
    bare_port, booking_port = processes.free_port(), processes.free_port()
    parts: dict[str, list[dict]] = {"bare": [], "booking": []}
    with processes.server([sys.executable, "-m", "bench.bare_app", "--port", str(bare_port)],
                          bare_port, env, workdir / "bare.log"), \
            processes.server(processes.clinic_command("serve", "booking", "--port",
                                                      str(booking_port)),
                             booking_port, env, workdir / "booking.log"):
        for n in range(ROUNDS):
            drive = {"concurrency": settings.concurrency, "env": env,
                     "warmup": settings.warmup if n == 0 else REWARM_SECONDS,
                     "duration": settings.duration / ROUNDS}
            parts["bare"].append(processes.load(
                bare_port, "/api/v1/appointments", files[n], cycle=True,
                latencies=workdir / f"bare-{n}.txt", **drive))
            parts["booking"].append(processes.load(
                booking_port, "/api/v1/appointments", files[n], token=token,
                latencies=workdir / f"booking-{n}.txt", **drive))
    return (_combined(parts["bare"], [workdir / f"bare-{n}.txt" for n in range(ROUNDS)]),
            _combined(parts["booking"],
                      [workdir / f"booking-{n}.txt" for n in range(ROUNDS)]))


def _combined(parts: list[dict], latency_files: list[Path]) -> dict:
    """The rounds of one server as one run: requests over measured seconds, percentiles of
    all the latencies together."""
    latencies = sorted(float(line) for path in latency_files
                       for line in path.read_text().splitlines() if line)
    requests = sum(part["requests"] for part in parts)
    seconds = sum(part["seconds"] for part in parts)
    unexpected: dict[str, int] = {}
    for part in parts:
        for status, count in part["unexpected"].items():
            unexpected[status] = unexpected.get(status, 0) + count
    return {
        "requests": requests, "seconds": seconds,
        "rps": requests / seconds if seconds > 0 else float("nan"),
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "unexpected": unexpected,
        "samples": [sample for part in parts for sample in part["samples"]][:5],
        "exhausted": any(part["exhausted"] for part in parts),
        "rounds": [round(part["rps"]) for part in parts],
    }


def measure(settings: Settings) -> list[Row]:
    workdir = settings.workdir / "booking"
    workdir.mkdir(parents=True, exist_ok=True)
    with postgres_databases("booking", "forms", "notify") as urls, \
            rabbitmq_vhost() as amqp_url:
        env = _environment(urls, amqp_url, workdir)
        processes.run(processes.clinic_command("db", "upgrade"), env)
        token = processes.run(processes.clinic_command("create-token", "bench"),
                              env).strip().splitlines()[-1]
        clinicians, patients, first_day = _seed(env)
        bodies = booking_bodies(clinicians, patients, first_day, DAYS,
                                env.get("CLINIC_TIMEZONE", "Europe/London"))
        bare, booked = _alternating(settings, workdir, env, token, bodies)
        _check(bare, "bare Flask app")
        _check(booked, "clinic serve booking")
        stored = _appointments(urls["booking"])
        if stored < booked["requests"]:
            raise RuntimeError(f"{booked['requests']} bookings answered 201 but only {stored} "
                               "appointments stored")

    return [
        Row("booking_create_rps", booked["rps"], "req/s", bare["rps"],
            Goal("ratio", ">=", 0.25),
            note=f"{settings.concurrency} connections, {booked['requests']} bookings in "
                 f"{booked['seconds']:.1f} s over {ROUNDS} rounds alternating with the "
                 f"baseline (per round {booked['rounds']} against {bare['rounds']}); baseline: "
                 "bare Flask JSON POST, same gunicorn"),
        Row("booking_create_p99", booked["p99_ms"], "ms", bare["p99_ms"],
            Goal("value", "<", 100, "ms"),
            note=f"p50 {booked['p50_ms']:.1f} ms (bare {bare['p50_ms']:.1f} ms)"),
    ]
