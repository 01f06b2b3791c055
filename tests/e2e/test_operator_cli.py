"""The operator's commands as real processes (`python -m gateway ...`): check-config against the
Stripe-like simulator on loopback, and `refunds` / `webhooks` against a test database, each run
through the same operations as the admin API and audited as `cli:<os user>`."""

from __future__ import annotations

import asyncio
import fcntl
import getpass
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from adapters.base import RefundResult, TransientProcessorError
from adapters.stripe_sim import SimConfig
from adapters.stripe_sim.testing import RunningSimulator, running_simulator
from gateway import ledger, webhooks
from gateway.db import store
from gateway.domain.refunds import Outcome
from gateway.ids import new_id
from tests.processes import free_port

STRIPE_KEY = "sk_test_operator_cli_0123"
CLIENT_KEY = "sk_cli_ops_client_0123456789"
REASON = "processor outage over, ticket OPS-7"
ACTOR = f"cli:{getpass.getuser()}"
TIMEOUT = 60  # seconds any one command may take before the test kills it


def config(stripe_url: str, stripe_key: str = STRIPE_KEY, extra: str = "") -> str:
    return (f'[[processors]]\nid = "stripe"\nkind = "stripe"\nbase_url = "{stripe_url}"\n'
            f'api_key = "{stripe_key}"\ntimeout_seconds = 2\n\n'
            '[[processors]]\nid = "mock"\nkind = "mock"\n\n'
            f'{extra}'
            f'[[clients]]\nid = "ops"\napi_key = "{CLIENT_KEY}"\nscopes = ["admin"]\n')


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


class Cli:
    """Runs `python -m gateway <args>` with its own config file; killed by PID if it overstays."""

    def __init__(self, folder: Path, toml: str, **env: str):
        path = folder / f"gateway-{uuid.uuid4().hex[:6]}.toml"
        path.write_text(toml)
        self.env = {**os.environ, "GATEWAY_CONFIG": str(path), "GATEWAY_DATA_DIR": str(folder / "data"), **env}

    async def __call__(self, *args: str, terminal: bool = False) -> Result:
        """With `terminal`, stderr is a pseudo-terminal (as for a person at a shell), and what the
        command drew there is returned as `err`."""
        main, side = pty.openpty() if terminal else (None, None)
        if terminal:  # 24 rows of 100 columns, as a terminal window has
            fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args, env=self.env,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=side if terminal else asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        except TimeoutError:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise AssertionError(f"psp-gateway {' '.join(args)} did not finish in {TIMEOUT} s") from None
        finally:
            if terminal:
                os.close(side)
        if terminal:
            err = _drain(main)
        result = Result(proc.returncode, out.decode(), err.decode(errors="replace"))
        assert "Traceback" not in result.err, result.err
        return result


def _drain(fd: int) -> bytes:
    """All a finished process wrote to a pseudo-terminal; closes it."""
    drawn = b""
    try:
        while chunk := os.read(fd, 65536):
            drawn += chunk
    except OSError:  # EIO: the other side is closed and all is read
        pass
    os.close(fd)
    return drawn


@pytest.fixture
async def stripe() -> RunningSimulator:
    async with running_simulator(SimConfig(api_key=STRIPE_KEY, seed=7)) as sim:
        yield sim


@pytest.fixture
def cli(tmp_path, database_url, stripe) -> Cli:
    return Cli(tmp_path, config(stripe.url), GATEWAY_DATABASE_URL=database_url)


# --- what the tests start from, written as the gateway writes it --------------------------------

async def payment(pool: asyncpg.Pool, psp_reference: str, *, amount: int = 10_000,
                  processor: str = "stripe") -> asyncpg.Record:
    async with pool.acquire() as conn:
        return await store.insert_transaction(
            conn, id=new_id("tx"), processor_id=processor, psp_reference=psp_reference,
            invoice_id=f"INV-{uuid.uuid4().hex[:6]}", customer_id=None, amount=amount, currency="EUR",
            captured_at=None, settled_at=None, metadata={})


async def refund(pool: asyncpg.Pool, tx: asyncpg.Record, amount: int, answer: RefundResult | BaseException) -> str:
    """A refund sent once, then moved by the processor's `answer` (a transient fault once its
    retries are spent: requires_attention at stage not_sent, its amount still reserved)."""
    refund_id = new_id("rf")
    async with pool.acquire() as conn, conn.transaction():
        locked = await store.transaction_for_refund(conn, tx["id"], lock=True)
        await store.insert_refund(
            conn, payment_version=locked["row_version"], id=refund_id, transaction_id=tx["id"], processor_id=tx["processor_id"], invoice_id=tx["invoice_id"],
            credit_note_id=f"CN-{uuid.uuid4().hex[:6]}", amount=amount, currency="EUR", reason=None, metadata={},
            status="pending", stage="sending", idempotency_key=refund_id, lease_seconds=60, request_id=None,
            event_detail={})
        await ledger.apply(conn, refund_id, ledger.decide(answer), event="processor_answer", recheck_seconds=1,
                           refund_calls=3)
    return refund_id


def outage() -> TransientProcessorError:
    return TransientProcessorError("Stripe unreachable: ConnectError", code="connect")


def succeeded(psp_refund_id: str) -> RefundResult:
    return RefundResult(Outcome.SUCCEEDED, psp_refund_id=psp_refund_id, processor_code="succeeded")


async def row(pool: asyncpg.Pool, table: str, id: str) -> asyncpg.Record:
    async with pool.acquire() as conn:
        return await conn.fetchrow(f"SELECT * FROM {table} WHERE id = $1", id)


async def audit_rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch("SELECT * FROM admin_audit ORDER BY id")


# --- check-config -------------------------------------------------------------------------------

def check_config_offline(config: Path, toml: str, **env: str) -> subprocess.CompletedProcess:
    """`psp-gateway check-config --offline` as a process, on `toml` written to `config`."""
    config.write_text(toml)
    return subprocess.run([sys.executable, "-m", "gateway", "check-config", "--offline"],
                          env={**os.environ, "GATEWAY_CONFIG": str(config), **env}, capture_output=True, text=True,
                          timeout=TIMEOUT)


def test_check_config_names_every_bad_field_and_exits_2(tmp_path):
    out = check_config_offline(tmp_path / "bad.toml",
                               '[[processors]]\nid = "stripe"\nkind = "stripe"\n\n'
                               '[[processors]]\nid = "mock"\nkind = "mock"\ntimout_seconds = 5\n\n'
                               '[[clients]]\nid = "ops"\napi_key = "short"\nscopes = ["admin"]\n')
    assert out.returncode == 2, out
    problems = out.stderr.splitlines()
    assert "invalid configuration" in problems[0]
    assert any(p.strip().startswith("processors.0.stripe.api_key: Field required") for p in problems)
    assert any(p.strip().startswith("processors.1.mock.timout_seconds: Extra inputs") for p in problems)
    assert any(p.strip().startswith("clients.0.api_key:") and "16 characters" in p for p in problems)
    assert "short" not in out.stderr and "Traceback" not in out.stderr


def test_check_config_refuses_a_lease_that_a_live_call_could_outlast(tmp_path):
    out = check_config_offline(tmp_path / "lease.toml",
                               '[[processors]]\nid = "bridgepay"\nkind = "bridgepay"\nbase_url = "http://127.0.0.1:1"\n'
                               'username = "u"\npassword = "p"\nmerchant_code = "1"\nmerchant_account_code = "2"\n'
                               'timeout_seconds = 5\n', GATEWAY_LEASE_SECONDS="3")
    assert out.returncode == 2, out
    assert "lease_seconds: 3 s does not cover the longest run for processor 'bridgepay'" in out.stderr


async def test_check_config_tries_the_database_and_each_processor_and_prints_no_secret(cli):
    result = await cli("check-config")

    assert result.code == 0, result
    lines = result.out.splitlines()
    assert any(line.split()[:2] == ["stripe", "ok"] for line in lines), result.out
    assert any(line.split()[:3] == ["mock", "not", "checked"] for line in lines), result.out
    assert any(line.startswith("database:") and "connected" in line for line in lines), result.out
    assert "ops" in result.out and "admin" in result.out  # the client, by id and scopes
    assert STRIPE_KEY not in result.out + result.err and CLIENT_KEY not in result.out + result.err


async def test_check_config_reports_a_refused_key_and_what_does_not_answer_and_exits_1(tmp_path, stripe):
    down = f"http://127.0.0.1:{free_port()}"
    cli = Cli(tmp_path, config(stripe.url, stripe_key="sk_test_not_the_right_key",
                               extra=f'[[processors]]\nid = "stripe-down"\nkind = "stripe"\nbase_url = "{down}"\n'
                                     f'api_key = "{STRIPE_KEY}"\ntimeout_seconds = 1\n\n'),
              GATEWAY_DATABASE_URL=f"postgresql://ops:db_secret_pw@127.0.0.1:{free_port()}/gw")

    result, offline = await asyncio.gather(cli("check-config", "--json"), cli("check-config", "--offline"))

    assert result.code == 1, result
    report = result.json()
    assert {p["id"]: p["credentials"] for p in report["processors"]} == {
        "stripe": "rejected", "stripe-down": "unreachable", "mock": "not_checked"}
    assert report["database"]["status"] == "unreachable"
    assert report["ok"] is False
    assert "not_the_right_key" not in result.out + result.err and "db_secret_pw" not in result.out + result.err
    assert offline.code == 0, offline  # validation alone: nothing is contacted
    assert "rejected" not in offline.out and "unreachable" not in offline.out


# --- refunds ------------------------------------------------------------------------------------

async def test_refunds_list_stuck_shows_the_stuck_refund_and_why(cli, pool):
    stuck = await refund(pool, await payment(pool, "ch_stuck"), 2_500, outage())
    done = await refund(pool, await payment(pool, "ch_done"), 1_000, succeeded("re_done"))

    result, succeeded_only = await asyncio.gather(cli("refunds", "list", "--stuck"),
                                                  cli("refunds", "list", "--status", "succeeded", "--json"))

    assert result.code == 0, result
    assert stuck in result.out and done not in result.out
    [line] = [line for line in result.out.splitlines() if line.startswith(stuck)]
    assert line.split()[1:5] == ["requires_attention", "not_sent", "25.00", "EUR"]
    assert "retries_exhausted" in line
    assert "stuck in all: 1 (requires_attention:retries_exhausted 1)" in result.out
    listed = succeeded_only.json()
    assert [r["id"] for r in listed["data"]] == [done] and listed["stuck_total"] == 1


async def test_refunds_show_prints_the_refund_its_transaction_processor_calls_and_history(cli, pool):
    tx = await payment(pool, "ch_show")
    stuck = await refund(pool, tx, 2_500, outage())
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO refund_attempts (refund_id, call, started_at, latency_ms, outcome, "
                           "error_class, processor_code, message) VALUES ($1, 'refund', now(), 12, 'error', "
                           "'transient', 'connect', 'Stripe unreachable: ConnectError')", stuck)

    result, shown, unknown = await asyncio.gather(
        cli("refunds", "show", stuck), cli("refunds", "show", stuck, "--json"), cli("refunds", "show", "rf_nobody"))

    assert result.code == 0, result
    assert f"refund {stuck}" in result.out and "requires_attention (stage not_sent)" in result.out
    assert f"transaction {tx['id']}" in result.out and "ch_show at stripe" in result.out
    assert "Stripe unreachable: ConnectError" in result.out  # the processor call
    assert "pending/sending" in result.out and "requires_attention/not_sent" in result.out  # the history
    shown = shown.json()
    assert shown["refund"]["id"] == stuck and shown["transaction"]["reserved_amount"] == 2_500
    assert [a["processor_code"] for a in shown["attempts"]] == ["connect"]
    assert [e["event"] for e in shown["events"]] == ["created", "processor_answer"]
    assert unknown.code == 1
    assert unknown.err.strip().endswith("no refund 'rf_nobody' [refund_not_found]")


async def test_replay_of_a_stuck_refund_resends_it_once_and_it_succeeds_at_the_processor(cli, pool, stripe):
    charge = stripe.sim.world.create_charge(10_000, "eur", {}, None)
    tx = await payment(pool, charge["id"])
    stuck = await refund(pool, tx, 2_500, outage())

    result = await cli("refunds", "replay", stuck, "--reason", REASON)

    assert result.code == 0, result
    assert f"{stuck}: found no record at the processor; resent with the same idempotency key" in result.out
    assert "now succeeded (stage done)" in result.out
    [at_stripe] = stripe.sim.world.list_refunds(charge=charge["id"])["data"]
    assert (at_stripe["amount"], at_stripe["metadata"]["refund_id"]) == (2_500, stuck)
    assert stripe.sim.world.refund_executions[charge["id"]] == 1
    refunded = await row(pool, "refunds", stuck)
    assert (refunded["status"], refunded["psp_refund_id"]) == ("succeeded", at_stripe["id"])
    balance = await row(pool, "transactions", tx["id"])
    assert (balance["refunded_amount"], balance["reserved_amount"]) == (2_500, 0)
    [audit] = await audit_rows(pool)
    assert (audit["actor"], audit["action"], audit["target"], audit["reason"]) == (
        ACTOR, "refund.replay", stuck, REASON)
    assert audit["result"]["status"] == "succeeded"


async def test_replay_of_a_succeeded_refund_is_refused_with_a_message(cli, pool, stripe):
    done = await refund(pool, await payment(pool, "ch_final"), 1_000, succeeded("re_final"))
    elsewhere = await refund(pool, await payment(pool, "ch_gone", processor="stripe-old"), 1_000, outage())

    result, unconfigured = await asyncio.gather(cli("refunds", "replay", done, "--reason", REASON),
                                                cli("refunds", "replay", elsewhere, "--reason", REASON))

    assert result.code == 1
    assert result.err.strip().endswith("a succeeded refund cannot be replayed [refund_final]")
    assert stripe.sim.world.refund_executions == {}
    assert (await row(pool, "refunds", done))["status"] == "succeeded"
    assert unconfigured.code == 1  # a processor this configuration does not have
    assert unconfigured.err.strip().endswith("processor 'stripe-old' is not in this configuration [unknown_processor]")
    assert (await row(pool, "refunds", elsewhere))["status"] == "requires_attention"
    # Refused, and audited as refused, like the admin API's actions.
    assert sorted((a["actor"], a["action"], a["target"], a["reason"], a["result"]["refused"])
                  for a in await audit_rows(pool)) == sorted([
        (ACTOR, "refund.replay", done, REASON, "refund_final"),
        (ACTOR, "refund.replay", elsewhere, REASON, "unknown_processor")])


async def test_resolve_settles_a_stuck_refund_offline_with_its_reference_and_audits_it(cli, pool):
    tx = await payment(pool, "ch_resolve")
    stuck = await refund(pool, tx, 2_500, outage())

    without_reason, without_reference = await asyncio.gather(
        cli("refunds", "resolve", stuck, "--as", "canceled"),
        cli("refunds", "resolve", stuck, "--as", "refunded_offline", "--reason", REASON))
    assert without_reason.code == 2 and "--reason" in without_reason.err
    assert without_reference.code == 2 and "--external-reference" in without_reference.err

    result = await cli("refunds", "resolve", stuck, "--as", "refunded_offline", "--reason", REASON,
                       "--external-reference", "SEPA-2026-1121-7", "--json")

    assert result.code == 0, result
    assert (result.json()["id"], result.json()["status"]) == (stuck, "refunded_offline")
    balance = await row(pool, "transactions", tx["id"])
    assert (balance["refunded_amount"], balance["reserved_amount"]) == (2_500, 0)
    [audit] = await audit_rows(pool)
    assert (audit["actor"], audit["action"], audit["reason"]) == (ACTOR, "refund.resolve.refunded_offline", REASON)
    assert audit["request"]["external_reference"] == "SEPA-2026-1121-7"


async def test_bulk_replay_dry_run_lists_the_stuck_refunds_then_the_replay_sends_them(cli, pool, stripe):
    charges = [stripe.sim.world.create_charge(10_000, "eur", {}, None) for _ in range(2)]
    stuck = [await refund(pool, await payment(pool, c["id"]), 1_500, outage()) for c in charges]
    done = await refund(pool, await payment(pool, "ch_done_bulk"), 1_000, succeeded("re_done_bulk"))

    dry = await cli("refunds", "replay", "--all-stuck", "--dry-run", "--reason", REASON, "--json")

    assert dry.code == 0, dry
    assert sorted(dry.json()["would_replay"]) == sorted(stuck) and dry.json()["dry_run"] is True
    assert stripe.sim.world.refund_executions == {}  # nothing sent
    assert [(await row(pool, "refunds", i))["status"] for i in stuck] == ["requires_attention"] * 2
    [audit] = await audit_rows(pool)
    assert (audit["actor"], audit["action"]) == (ACTOR, "refund.replay.dry_run")

    replayed = await cli("refunds", "replay", "--all-stuck", "--reason", REASON, terminal=True)

    assert replayed.code == 0, replayed
    assert "replayed 2 of 2 stuck refunds" in replayed.out and done not in replayed.out
    assert "replaying: 100%" in replayed.err and "2/2" in replayed.err  # the progress bar, on a terminal
    assert [(await row(pool, "refunds", i))["status"] for i in stuck] == ["succeeded"] * 2
    assert all(stripe.sim.world.refund_executions[c["id"]] == 1 for c in charges)


# --- webhooks -----------------------------------------------------------------------------------

async def test_webhooks_reprocess_applies_unmatched_events_once_their_payment_is_known(cli, pool):
    events = []
    for n, amount in ((1, 1_000), (2, 1_500)):
        body = {"event_id": f"evt_cli_{n}", "type": "charge.refund.updated", "refunds": [{
            "psp_refund_id": f"re_dashboard_{n}", "payment_references": ["ch_unknown_yet"], "amount": amount,
            "currency": "EUR", "outcome": "succeeded"}]}
        async with pool.acquire() as conn:
            events.append(await store.insert_webhook_event(
                conn, processor_id="stripe", event_id=body["event_id"], event_type=body["type"], headers={},
                body=json.dumps(body).encode(), event=body, match_keys=["ch_unknown_yet"]))
    await webhooks.process_due(pool, recheck_seconds=1)  # the inbox parks both: no such payment
    listed = (await cli("webhooks", "list", "--status", "unmatched", "--json")).json()
    assert sorted(e["id"] for e in listed["data"]) == sorted(events)
    tx = await payment(pool, "ch_unknown_yet")  # registered, but nothing woke the events

    one = await cli("webhooks", "reprocess", str(events[0]), "--reason", REASON)

    assert one.code == 0, one
    assert one.out.strip() == f"webhook event {events[0]} (evt_cli_1): applied"
    assert (await row(pool, "transactions", tx["id"]))["refunded_amount"] == 1_000

    rest = await cli("webhooks", "reprocess", "--all", "--status", "unmatched", "--reason", REASON, "--json")

    assert rest.code == 0, rest
    assert [(r["id"], r["status"]) for r in rest.json()["results"]] == [(events[1], "applied")]
    assert (await row(pool, "transactions", tx["id"]))["refunded_amount"] == 2_500
    assert [(a["actor"], a["action"], a["target"]) for a in await audit_rows(pool)] == [
        (ACTOR, "webhook_event.reprocess", f"webhook_event:{i}") for i in events]


# --- the database ------------------------------------------------------------------------------

async def test_commands_against_a_database_that_is_down_say_so_and_exit_1(tmp_path, stripe):
    cli = Cli(tmp_path, config(stripe.url), GATEWAY_DATABASE_URL=f"postgresql://ops@127.0.0.1:{free_port()}/gw")

    result = await cli("refunds", "list", "--stuck")

    assert result.code == 1
    assert "database" in result.err and "[database_unavailable]" in result.err


async def test_commands_share_the_embedded_postgres_of_a_running_gateway_and_leave_it_running(gateways, tmp_path):
    data_dir = tmp_path / "data"  # no database URL: the embedded Postgres, as `make run` has it
    gw = gateways(config("http://127.0.0.1:9"), GATEWAY_DATA_DIR=str(data_dir))
    await asyncio.to_thread(gw.wait_ready, 60)
    cli = Cli(tmp_path, config("http://127.0.0.1:9"))

    result = await cli("refunds", "list", "--json")

    assert result.code == 0, result
    assert result.json()["data"] == []
    assert f"using the embedded Postgres under {data_dir}" in result.err
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{gw.url}/readyz")).status_code == 200  # its database is still there
    assert gw.stop() == 0


async def test_a_replay_that_logs_a_warning_prints_no_json_line_to_a_person(cli, pool, stripe):
    charge = stripe.sim.world.create_charge(10_000, "eur", {}, None)
    stuck = await refund(pool, await payment(pool, charge["id"]), 2_500, outage())
    stripe.sim.faults.configure({"api_error": {"count": 50, "path": "/v1/refunds"}})  # still failing: warnings

    result = await cli("refunds", "replay", stuck, "--reason", REASON)

    assert result.code == 0, result
    assert "now requires_attention" in result.out or "now pending" in result.out, result.out
    assert result.err.strip(), "the replay's warnings are shown"
    assert not [line for line in result.err.splitlines() if line.lstrip().startswith("{")], result.err
    as_json = await cli("refunds", "replay", stuck, "--reason", REASON, "--json")
    assert all(line.lstrip().startswith("{") for line in as_json.err.splitlines() if line.strip()), as_json.err


def test_check_config_refuses_a_configuration_with_no_processor_or_client(tmp_path):
    out = check_config_offline(tmp_path / "empty.toml", "")
    assert out.returncode == 2, out
    assert "processors: none configured" in out.stderr and "clients: none configured" in out.stderr
