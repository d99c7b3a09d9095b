"""A worker's loops run until a signal or a crash; a crash makes the process exit non-zero,
so a supervisor that restarts only failures restarts it."""
import signal
import threading

import pytest

from shared.worker import _guarded, run_until_stopped


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """run_until_stopped installs its own SIGTERM/SIGINT handlers: give pytest its back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _threads(stop: threading.Event, crash: bool) -> list[threading.Thread]:
    def steady():
        stop.wait()

    def failing():
        if crash:
            raise RuntimeError("the broker said no")
        stop.wait()
    return [threading.Thread(target=_guarded("test", name, loop, stop), daemon=True)
            for name, loop in (("steady", steady), ("failing", failing))]


def test_a_crashed_loop_stops_the_others_and_is_reported():
    stop = threading.Event()
    threads = _threads(stop, crash=True)
    assert run_until_stopped(threads, stop) is True
    assert not any(thread.is_alive() for thread in threads)


def test_a_stop_asked_for_is_no_crash():
    stop = threading.Event()
    threads = _threads(stop, crash=False)
    threading.Timer(0.2, stop.set).start()
    assert run_until_stopped(threads, stop) is False
