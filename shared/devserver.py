"""`clinic dev` / `make run`: every service and every worker in one process.

The embedded broker (`memory://`) only passes messages between threads of one process, so the
demo clinic runs its three apps and three workers as threads here. Production runs each
`clinic serve X` and `clinic worker X` as a process of its own against RabbitMQ.
"""
from __future__ import annotations

import importlib
import logging
import threading

from werkzeug.serving import make_server

from shared.config import DEV_PORTS, SERVICES
from shared.worker import run_until_stopped


def run_embedded(config, host: str = "127.0.0.1") -> None:
    # werkzeug's access log prints query strings, which can carry a phone number.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    stop = threading.Event()
    threads: list[threading.Thread] = []  # the workers', joined when stopping
    servers = []
    for service in SERVICES:
        app_module = importlib.import_module(f"services.{service}.app")
        worker_module = importlib.import_module(f"services.{service}.worker")
        context = app_module.bootstrap(config)
        app = app_module.create_app(config, context)
        server = make_server(host, DEV_PORTS[service], app, threaded=True)
        servers.append(server)
        # Not among `threads`: a server only stops when shut down, so joining it first would
        # hold Ctrl-C up for the join's timeout, once per service.
        threading.Thread(target=server.serve_forever, daemon=True,
                         name=f"{service}-http").start()
        threads.extend(worker_module.threads(context, stop))
        print(f"  {service:8} http://{host}:{DEV_PORTS[service]}/  "
              f"(API docs: /openapi.json)", flush=True)
    print("Ctrl-C stops the clinic.", flush=True)
    try:
        run_until_stopped(threads, stop)
    finally:
        for server in servers:
            server.shutdown()
