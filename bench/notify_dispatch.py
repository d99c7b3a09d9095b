"""SMS dispatch: the real `Scheduler` (one, in a thread of this process, wired by `bootstrap`)
sending reminders that are all due to FakeTwilio, against raw HTTP POSTs of the same form
bodies to the same FakeTwilio; and the same scheduler under SMS_MAX_PER_SECOND=100.

The scheduler and the baseline take turns (ROUNDS of 200 SMS each), so that a slow spell of
the machine weighs on both. Rates are taken where the messages arrive: (n - 1) / (last
arrival - first arrival) at FakeTwilio, so start-up is not counted for either side. Both
sides share this process (and its GIL) with FakeTwilio.
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
ROUNDS = 3          # the uncapped scheduler and the raw baseline take turns, 200 SMS each
CAP = 100
CAPPED = 300


def scheduler_rate(env: dict, twilio: stack.TimedTwilio, url: str, count: int, tag: str
                   ) -> tuple[list[float], list[dict]]:
    """`count` SMS due a second ago, sent by one Scheduler.run; the instants they reached
    FakeTwilio, and the form bodies it received (the baseline replays them)."""
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
    return [at for _, at in twilio.arrivals], forms


def raw_rate(twilio: stack.TimedTwilio, forms: list[dict]) -> list[float]:
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
    return [at for _, at in twilio.arrivals]


def pooled_rate(rounds: list[list[float]]) -> float:
    """Arrivals per second over several rounds: their intervals over their spans, so the
    pauses between rounds do not count."""
    intervals = sum(len(instants) - 1 for instants in rounds)
    seconds = sum(max(instants) - min(instants) for instants in rounds)
    return intervals / seconds


def measure(settings: Settings) -> list[Row]:
    workdir = settings.workdir / "notify_dispatch"
    workdir.mkdir(parents=True, exist_ok=True)
    with postgres_databases("notify") as urls, stack.TimedTwilio() as twilio, \
            stack.logs_to(workdir / "scheduler.log"):
        url = urls["notify"]
        stack.migrate(url)
        env = stack.environment(urls, "memory://", workdir, twilio)
        # In turns, so that a slow spell of the machine weighs on both sides alike.
        scheduled, raw_rounds = [], []
        for n in range(ROUNDS):
            arrivals, forms = scheduler_rate(env, twilio, url, UNCAPPED // ROUNDS,
                                             f"uncapped-{n}")
            scheduled.append(arrivals)
            raw_rounds.append(raw_rate(twilio, forms))
        uncapped, raw = pooled_rate(scheduled), pooled_rate(raw_rounds)
        arrivals, _ = scheduler_rate({**env, "SMS_MAX_PER_SECOND": str(CAP)}, twilio, url,
                                     CAPPED, "capped")
        capped = steady_rate(arrivals)

    return [
        Row("notify_dispatch_vs_raw_http", uncapped, "SMS/s", raw, Goal("ratio", ">=", 0.5),
            note=f"{UNCAPPED} due SMS sent by one Scheduler (SMS_MAX_PER_SECOND 100000) to "
                 f"FakeTwilio in {ROUNDS} rounds, each followed by the baseline: the same "
                 "form bodies POSTed from one thread on a keep-alive requests session"),
        Row("notify_dispatch_capped_100", capped, "SMS/s", float(CAP), Goal("ratio", ">=", 0.95),
            note=f"{CAPPED} due SMS under SMS_MAX_PER_SECOND={CAP}; baseline: the cap"),
    ]
