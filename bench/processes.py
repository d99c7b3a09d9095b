"""Servers and the load generator as child processes: started, awaited, always stopped."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def clinic_command(*args: str) -> list[str]:
    """The installed `clinic` console script of this venv, as an operator would run it."""
    script = BIN / "clinic"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "services.cli", *args]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def server(command: list[str], port: int, env: dict, log: Path,
           timeout: float = 60.0) -> Iterator[subprocess.Popen]:
    """Start an HTTP server, wait until GET /healthz answers, stop it (SIGTERM) afterwards."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command} exited with {process.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{command} not answering /healthz:\n{_tail(log)}") from error
                time.sleep(0.2)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def run(command: list[str], env: dict, timeout: float = 120.0) -> str:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{command} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def load(port: int, path: str, bodies: Path, *, token: str = "", cycle: bool = False,
         concurrency: int, warmup: float, duration: float, env: dict,
         latencies: Path | None = None) -> dict:
    """Drive a server with bench.loadgen in its own process; its JSON summary (and, if asked,
    every measured latency written to `latencies`)."""
    command = [sys.executable, "-m", "bench.loadgen", "--port", str(port), "--path", path,
               "--bodies", str(bodies), "--concurrency", str(concurrency),
               "--warmup", str(warmup), "--duration", str(duration)]
    if cycle:
        command.append("--cycle")
    if latencies is not None:
        command += ["--latencies", str(latencies)]
    env = {**env, "BENCH_LOAD_TOKEN": token}
    return json.loads(run(command, env, timeout=warmup + duration + 120))
