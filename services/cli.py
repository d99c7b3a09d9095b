"""The `clinic` command: one entry point for operators, compose files and tests alike.

Imports are deferred into each command: `clinic serve` must set PROMETHEUS_MULTIPROC_DIR
before prometheus-client is first imported, and a short command should not load them all.
"""
from __future__ import annotations

import argparse
import getpass
import importlib
import os
import sys
import tempfile
import threading

SERVICES = ("booking", "forms", "notify")
ROLES = ("reception", "clinician", "admin")


def _config():
    from shared.config import Config
    from shared.logging import configure_logging
    config = Config.from_env(os.environ)
    configure_logging(config.log_level)
    return config


def _app_module(service: str):
    return importlib.import_module(f"services.{service}.app")


def cmd_serve(args) -> int:
    multiproc = os.environ.setdefault(
        "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix=f"clinic-{args.service}-metrics-"))
    os.makedirs(multiproc, exist_ok=True)
    for stale in os.listdir(multiproc):
        os.unlink(os.path.join(multiproc, stale))
    from shared.config import DEV_PORTS
    from shared.server import serve
    config = _config()
    serve(lambda: _app_module(args.service).create_app(config), args.host,
          args.port or DEV_PORTS[args.service], workers=args.workers, threads=args.threads)
    return 0


def cmd_worker(args) -> int:
    from shared.worker import run_until_stopped
    config = _config()
    stop = threading.Event()
    context = _app_module(args.service).bootstrap(config)
    worker = importlib.import_module(f"services.{args.service}.worker")
    crashed = run_until_stopped(worker.threads(context, stop), stop)
    return 1 if crashed else 0


def cmd_db_upgrade(args) -> int:
    from shared.db import make_engine
    from shared.migrations import upgrade, wait_for_database
    config = _config()
    for service in [args.service] if args.service else SERVICES:
        engine = make_engine(config.database_url(service))
        wait_for_database(engine)
        upgrade(engine, service)
        engine.dispose()
        print(f"{service}: database at head")
    return 0


def cmd_seed_demo(args) -> int:
    from services.booking.seed import seed_demo_clinic
    config = _config()
    context = _app_module("booking").bootstrap(config)
    summary = seed_demo_clinic(context)
    print(summary)
    return 0


def _password(args) -> str:
    if not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise SystemExit("passwords differ")
    if len(password) < 12:
        raise SystemExit("password must be at least 12 characters")
    return password


def cmd_create_user(args) -> int:
    from services.booking.staff import create_user
    config = _config()
    context = _app_module("booking").bootstrap(config)
    create_user(context, args.email, _password(args), args.role)
    print(f"created {args.role} {args.email}")
    return 0


def cmd_create_token(args) -> int:
    from shared.clock import SystemClock
    from shared.db import make_engine
    from shared.web import create_token, new_token
    config = _config()
    token = new_token()
    for service in SERVICES:
        db = importlib.import_module(f"services.{service}.db")
        engine = make_engine(config.database_url(service))
        create_token(engine, db.shared_tables, args.name, args.role, token, SystemClock().now())
        engine.dispose()
    print(f"token for {args.name} ({args.role}), valid on booking, forms and notify:")
    print(token)
    return 0


def cmd_dev(args) -> int:
    from shared.devserver import run_embedded
    config = _config()
    run_embedded(config, host=args.host)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="clinic", description="clinic-events")
    commands = root.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="one service's HTTP app on gunicorn")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=None)
    serve.add_argument("--threads", type=int, default=None)
    serve.set_defaults(run=cmd_serve)

    worker = commands.add_parser("worker", help="a service's consumers, relay and scheduler")
    worker.add_argument("service", choices=SERVICES)
    worker.set_defaults(run=cmd_worker)

    db = commands.add_parser("db", help="database migrations")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_upgrade = db_commands.add_parser("upgrade", help="apply migrations")
    db_upgrade.add_argument("service", nargs="?", choices=SERVICES)
    db_upgrade.set_defaults(run=cmd_db_upgrade)

    seed = commands.add_parser("seed-demo", help="the demo clinic")
    seed.set_defaults(run=cmd_seed_demo)

    user = commands.add_parser("create-user", help="a staff login (password from stdin)")
    user.add_argument("email")
    user.add_argument("--role", choices=ROLES, required=True)
    user.set_defaults(run=cmd_create_user)

    token = commands.add_parser("create-token", help="an API token; printed on the last line")
    token.add_argument("name")
    token.add_argument("--role", choices=ROLES, default="admin")
    token.set_defaults(run=cmd_create_token)

    dev = commands.add_parser("dev", help="every service and worker in one process (embedded)")
    dev.add_argument("--host", default="127.0.0.1")
    dev.set_defaults(run=cmd_dev)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
