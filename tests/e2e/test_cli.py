"""The `psp-gateway` command as a real process: config from TOML with ${ENV}, JSON logs without
secrets, the embedded Postgres when no database URL is set, and a clean stop by PID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.processes import GatewayProcess

KEY = "sk_cli_test_key_0123456789"


CONFIG = ('[[processors]]\nid = "mock"\nkind = "mock"\n\n'
          '[[clients]]\nid = "billing"\napi_key = "${CLI_TEST_KEY}"\n'
          'scopes = ["transactions:write", "transactions:read", "refunds:write", "refunds:read"]\n')


@pytest.fixture
def gateway_factory(gateways):
    def start(**env: str) -> GatewayProcess:
        return gateways(CONFIG, CLI_TEST_KEY=KEY, **env)
    return start


def _refund_session(gw: GatewayProcess) -> dict:
    headers = {"Authorization": f"Bearer {KEY}"}
    tx = httpx.post(f"{gw.url}/v1/transactions", headers=headers, json={
        "processor": "mock", "psp_reference": "ch_cli", "invoice_id": "INV-CLI", "amount": 5_000, "currency": "EUR"})
    assert tx.status_code == 201, tx.text
    refund = httpx.post(f"{gw.url}/v1/refunds", headers={**headers, "X-Request-ID": "cli-req-1"}, json={
        "invoice_id": "INV-CLI", "amount": 1_500, "currency": "EUR"})
    assert refund.status_code == 201, refund.text
    return refund.json()


def test_serve_with_a_database_url_takes_a_refund_and_logs_no_secrets(gateway_factory, database_url):
    gw = gateway_factory(GATEWAY_DATABASE_URL=database_url)
    gw.wait_ready()
    refund = _refund_session(gw)
    assert refund["status"] == "succeeded"
    assert gw.stop() == 0
    logs = gw.log_path.read_text()
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    changes = [(e["status"], e["refund_id"], e["processor"], e["request_id"])
               for e in lines if e["event"] == "refund_state_changed"]
    assert changes == [("succeeded", refund["id"], "mock", "cli-req-1")]  # one JSON line per change, all named
    assert KEY not in logs


def test_serve_without_a_database_url_runs_an_embedded_postgres_and_stops_it(gateway_factory, tmp_path):
    data_dir = tmp_path / "data"
    gw = gateway_factory(GATEWAY_DATA_DIR=str(data_dir))
    gw.wait_ready(timeout=60)
    assert _refund_session(gw)["status"] == "succeeded"
    pid = int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
    assert gw.stop() == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid), "the embedded Postgres outlived the gateway"
    assert (data_dir / "pg" / "PG_VERSION").exists()  # the data survives for the next start


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_migrate_command_applies_migrations(database_url, tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG)
    env = {**os.environ, "GATEWAY_DATABASE_URL": database_url, "GATEWAY_CONFIG": str(config), "CLI_TEST_KEY": KEY}
    out = subprocess.run([sys.executable, "-m", "gateway", "migrate"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout


def test_bad_config_fails_at_start_naming_the_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[processors]]\nid = "s"\nkind = "stripe"\nwebhook_secrets = []\n')
    out = subprocess.run([sys.executable, "-m", "gateway", "serve"], env={**os.environ, "GATEWAY_CONFIG": str(bad)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "processors.0.stripe.api_key" in out.stderr


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_version_and_a_config_named_on_the_command_line(tmp_path):
    version = _run("--version")
    assert version.returncode == 0 and version.stdout.startswith("psp-gateway ") and version.stdout.split()[1][0].isdigit()
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG)
    env = {"CLI_TEST_KEY": KEY, "GATEWAY_CONFIG": ""}
    for args in (("--config", str(config), "check-config", "--offline"),
                 ("check-config", "--offline", "--config", str(config))):
        checked = _run(*args, env=env)
        assert checked.returncode == 0 and "configuration valid" in checked.stdout, checked


def test_serve_refuses_a_configuration_with_no_processor_or_client(tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    served = _run("serve", env={"GATEWAY_CONFIG": str(empty)})
    assert served.returncode == 2 and "processors: none configured" in served.stderr, served
    assert "Traceback" not in served.stderr


def test_a_bad_or_unknown_gateway_variable_is_named(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG)
    env = {"CLI_TEST_KEY": KEY, "GATEWAY_CONFIG": str(config), "GATEWAY_PORT": "abc", "GATEWAY_LOG_LEVELL": "x"}
    out = _run("migrate", env=env)
    assert out.returncode == 2 and "GATEWAY_PORT (port)" in out.stderr, out.stderr
    assert "GATEWAY_LOG_LEVELL is set but no setting reads it" in out.stderr


def test_check_config_into_a_closed_pipe_ends_quietly(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "check-config", "--offline"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "CLI_TEST_KEY": KEY,
                                                         "GATEWAY_CONFIG": str(config)})
    proc.stdout.close()  # `| head -0`: the reader is gone before anything is written
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err


def test_a_port_in_use_is_one_line(gateway_factory, database_url, tmp_path):
    first = gateway_factory(GATEWAY_DATABASE_URL=database_url)
    first.wait_ready()
    config = tmp_path / "second.toml"
    config.write_text(CONFIG)
    try:
        second = _run("serve", env={"CLI_TEST_KEY": KEY, "GATEWAY_DATABASE_URL": database_url,
                                    "GATEWAY_CONFIG": str(config), "GATEWAY_PORT": str(first.port),
                                    "GATEWAY_LOG_FORMAT": "json"})
    finally:
        first.stop()
    assert second.returncode == 1, second
    lines = [line for line in second.stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert lines == [f"psp-gateway: cannot listen on 127.0.0.1:{first.port}: address already in use "
                     "(set GATEWAY_PORT or --port)"], second.stderr
