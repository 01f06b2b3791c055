"""Gateway processes for tests: `psp-gateway serve` or `worker` as a real process, with its own
config file and log, stopped by its PID (SIGTERM, then SIGKILL) by whoever started it."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

_names = itertools.count(1)


def stop_on_sigterm() -> None:
    """For a harness run as a process (bench, chaos): SIGTERM unwinds it like Ctrl-C, so its
    `finally` blocks stop what it started."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def run_harness(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a harness to its end. Past `timeout` it gets SIGTERM and a minute to stop what it
    started (a SIGKILL would leave its gateway and Postgres running), then SIGKILL."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise AssertionError(f"{args} ran past {timeout}s; stopped.\n{out[-3000:]}\n{err[-3000:]}") from None
    except BaseException:  # the test itself interrupted: the harness still stops its processes
        proc.terminate()
        proc.communicate(timeout=60)
        raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def answers_ok(url: str) -> bool:
    """Whether a GET of `url` answers 200 now (a service started by a test or a harness)."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProcess:
    def __init__(self, folder: Path, config: str, command: str = "serve", extra_args: list[str] | None = None,
                 port: int | None = None, **env: str):
        name = f"gateway-{next(_names)}"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / f"{name}.log"
        config_path = folder / f"{name}.toml"
        config_path.write_text(config)
        full_env = {**os.environ, "GATEWAY_CONFIG": str(config_path), "GATEWAY_PORT": str(self.port),
                    "GATEWAY_LOG_FORMAT": "json", **env}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", command, *(extra_args or [])], env=full_env,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, check, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.logs()}"
            if check():
                return
            time.sleep(0.1)
        raise AssertionError(f"not {what} in {timeout}s:\n{self.logs()}")

    def wait_ready(self, timeout: float = 30) -> None:
        self.wait_until(lambda: answers_ok(f"{self.url}/readyz"), "ready", timeout)

    def wait_working(self, timeout: float = 30) -> None:
        self.wait_until(lambda: "worker running" in self.logs(), "working", timeout)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, as when a machine dies."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def gateways(tmp_path):
    """Start gateway processes with `gateways(config, command="serve", **env)`; all are stopped after."""
    started: list[GatewayProcess] = []

    def start(config: str, command: str = "serve", **env: str) -> GatewayProcess:
        process = GatewayProcess(tmp_path, config, command, **env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
