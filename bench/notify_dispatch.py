"""SMS dispatch: the real `Scheduler` (one, in a thread of this process, wired by `bootstrap`)
sending reminders that are all due to FakeTwilio, against raw HTTP POSTs of the same form
bodies to the same FakeTwilio; and the same scheduler under SMS_MAX_PER_SECOND=100.

Rates are taken where the messages arrive: (n - 1) / (last arrival - first arrival) at
FakeTwilio, so start-up is not counted for either side. Both sides share this process (and
its GIL) with FakeTwilio.
"""
from __future__ import annotations

import threading
from datetime import timedelta

import requests

from bench import notify_stack as stack
from bench.infra import postgres_databases
from bench.notify_stats import steady_rate
from bench.report import Goal, Row
from bench.settings import Settings
from services.notify.app import bootstrap
from services.notify.scheduler import Scheduler

UNCAPPED = 600
CAP = 100
CAPPED = 300


def scheduler_rate(env: dict, twilio: stack.TimedTwilio, url: str, count: int, tag: str
                   ) -> tuple[float, list[dict]]:
    """`count` SMS due a second ago, sent by one Scheduler.run; arrivals per second, and the
    form bodies FakeTwilio received (the baseline replays them)."""
    twilio.reset()
    stack.add_due_sms(url, [stack.now() - timedelta(seconds=1)] * count, tag)
    context = bootstrap(stack.config(env))
    stop = threading.Event()
    thread = threading.Thread(target=Scheduler(context).run, args=(stop,),
                              name=f"bench-scheduler-{tag}")
    thread.start()
    try:
        stack.wait_until(lambda: twilio.arrived() >= count, 120, f"{count} SMS at FakeTwilio")
    finally:
        stop.set()
        thread.join(timeout=30)
        context.sms.close()
        context.engine.dispose()
    if twilio.arrived() != count:
        raise RuntimeError(f"{twilio.arrived()} SMS arrived for {count} due")
    forms = [request["form"] for request in twilio.requests if request["method"] == "POST"]
    return steady_rate([at for _, at in twilio.arrivals]), forms


def raw_rate(twilio: stack.TimedTwilio, forms: list[dict]) -> float:
    """The same form bodies POSTed one after another on one keep-alive `requests` session
    (the HTTP library the twilio SDK uses), so the gap is our work and the SDK's."""
    twilio.reset()
    url = twilio.base_url + twilio.messages_path
    with requests.Session() as session:
        session.auth = (stack.ACCOUNT_SID, stack.AUTH_TOKEN)
        for form in forms:
            response = session.post(url, data=form, timeout=10)
            if response.status_code != 201:
                raise RuntimeError(f"FakeTwilio answered {response.status_code}: "
                                   f"{response.text[:200]}")
    return steady_rate([at for _, at in twilio.arrivals])


def measure(settings: Settings) -> list[Row]:
    workdir = settings.workdir / "notify_dispatch"
    workdir.mkdir(parents=True, exist_ok=True)
    with postgres_databases("notify") as urls, stack.TimedTwilio() as twilio, \
            stack.logs_to(workdir / "scheduler.log"):
        url = urls["notify"]
        stack.migrate(url)
        env = stack.environment(urls, "memory://", workdir, twilio)
        uncapped, forms = scheduler_rate(env, twilio, url, UNCAPPED, "uncapped")
        raw = raw_rate(twilio, forms)
        capped, _ = scheduler_rate({**env, "SMS_MAX_PER_SECOND": str(CAP)}, twilio, url,
                                   CAPPED, "capped")

    return [
        Row("notify_dispatch_vs_raw_http", uncapped, "SMS/s", raw, Goal("ratio", ">=", 0.5),
            note=f"{UNCAPPED} due SMS sent by one Scheduler thread (SMS_MAX_PER_SECOND "
                 "100000) to FakeTwilio; baseline: the same form bodies POSTed from one "
                 "thread on a keep-alive requests session"),
        Row("notify_dispatch_capped_100", capped, "SMS/s", float(CAP), Goal("ratio", ">=", 0.95),
            note=f"{CAPPED} due SMS under SMS_MAX_PER_SECOND={CAP}; baseline: the cap"),
    ]
