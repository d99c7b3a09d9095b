"""The booking figure's baseline: a Flask app that parses a JSON POST and answers 201 JSON,
nothing else, served by `shared.server.serve` exactly as `clinic serve` serves booking (same
gunicorn worker class, workers, threads, keep-alive). What booking costs beyond this is the
clinic's own work: auth, validation, the transaction, the outbox row."""
from __future__ import annotations

import argparse
import sys
import uuid

from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask("bench.bare")

    @app.post("/api/v1/appointments")
    def create():
        fields = request.get_json()
        return jsonify({"id": str(uuid.uuid4()), "status": "booked", **fields}), 201

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    return app


def main(argv: list[str] | None = None) -> int:
    from shared.server import serve
    parser = argparse.ArgumentParser(prog="python -m bench.bare_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    serve(create_app, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
