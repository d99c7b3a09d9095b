"""`clinic serve`: a service's app on gunicorn (threaded workers), never Flask's debug server."""
from __future__ import annotations

import os
from collections.abc import Callable

from gunicorn.app.base import BaseApplication


def _child_exit(_server, worker) -> None:
    """A dead worker's metric files must stop counting towards live gauges."""
    from prometheus_client import multiprocess
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)


class _Gunicorn(BaseApplication):
    def __init__(self, factory: Callable, options: dict):
        self._factory, self._options = factory, options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self):
        # Each worker process builds its own app (engines and pools must not cross a fork).
        return self._factory()


def serve(factory: Callable, host: str, port: int, workers: int | None = None,
          threads: int | None = None) -> None:
    cores = os.cpu_count() or 1
    # Two threads per worker, one worker per core (at least two, so that a worker being
    # restarted never leaves the service without one): a request here is a few ms of Python
    # around a few database round trips. Measured at 50 connections (make bench): 8 threads
    # per worker gave the same bookings per second as 2 but a p99 of ~200 ms against ~55 ms,
    # threads beyond what waits on the database only queueing for their process's
    # interpreter; and two workers per core instead of one gave 15-20% fewer bookings per
    # second and twice the p99 (677-833 against 847-959 per second on 2 cores), more
    # processes taking turns on each core and on its caches.
    threads = threads or int(os.environ.get("WEB_THREADS", 2))
    _Gunicorn(factory, {
        "bind": f"{host}:{port}",
        "workers": workers or int(os.environ.get("WEB_CONCURRENCY", max(2, cores))),
        "worker_class": "gthread",
        "threads": threads,
        # A worker answers `threads` requests at a time; a connection it holds beyond that
        # only queues behind them while another worker may sit idle. Left at gunicorn's
        # 1000, the first worker awake accepts a whole burst of new connections and keeps
        # them (keep-alive): one process, one GIL, one core doing every request. Capped at
        # twice its threads, a worker stops accepting when full, so the burst spreads over
        # the workers; and with more than `threads` idle kept-alive connections it closes
        # after answering, so clients reconnect to whichever worker has room.
        "worker_connections": threads * 2,
        "timeout": 30,
        "graceful_timeout": 20,
        "keepalive": 5,
        "accesslog": None,
        "child_exit": _child_exit,
        "preload_app": False,
    }).run()
