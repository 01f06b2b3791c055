"""`make chaos`: a bounded, self-stopping chaos run on loopback.

An embedded Postgres, the gateway as its own process, the Stripe-like and BridgePay-like simulators
with faults on, and a billing core sending thousands of refund commands (duplicates and concurrent
ones included). Meanwhile the gateway is killed with SIGKILL and restarted, and Postgres is stopped
for a few seconds and restarted once. Then the faults stop, everything settles, and the money
invariants are checked and printed. Exit status 1 on any violation. Every process started here is
stopped here, by its PID, and its data lives in a temporary folder.

    python -m tests.chaos [--quick] [--payments N] [--kills K] [--seed S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from adapters.bridgepay_sim import SimConfig as BridgePayConfig
from adapters.bridgepay_sim.testing import running_simulator as bridgepay_simulator
from adapters.simkit import serve_on_loopback
from adapters.stripe_sim import SimConfig as StripeConfig
from adapters.stripe_sim.testing import running_simulator as stripe_simulator
from gateway import embedded
from tests.chaos import invariants
from tests.chaos.billing import BillingCore, CallbackReceiver
from tests.processes import GatewayProcess, free_port, stop_on_sigterm

API_KEY = "sk_chaos_billing_0123456789"
STRIPE_KEY = "sk_test_chaos_0123456789"
WHSEC = "whsec_chaos_0123456789"
CALLBACK_SECRET = "cb_chaos_0123456789"
BP = dict(username="chaos_user", password="chaos_pass_0123", merchant_code="1000", merchant_account_code="2000")

# Probabilities per matching request. Timeouts: the gateway gives a processor 2 s, and an answer
# held back is held 3 s, so "executed, then no answer in time" really happens.
STRIPE_FAULTS = {
    "latency": {"ms": 2, "spike_ms": 1500, "probability": 0.03},
    "api_error": {"probability": 0.03},
    "rate_limit": {"probability": 0.03, "retry_after": 1},
    "drop": {"probability": 0.02},
    "execute_then_api_error": {"path": "/v1/refunds", "method": "POST", "probability": 0.02},
    "execute_then_timeout": {"path": "/v1/refunds", "method": "POST", "probability": 0.02, "hold_seconds": 3},
    "execute_then_drop": {"path": "/v1/refunds", "method": "POST", "probability": 0.02},
    "webhooks": {"duplicate_probability": 0.2, "max_delay_ms": 1500},
}
BRIDGEPAY_FAULTS = {
    "latency": {"ms": 2, "spike_ms": 1500, "probability": 0.03},
    "internal_error": {"probability": 0.03},
    "unavailable": {"probability": 0.03},
    "network": {"probability": 0.02},
    "drop": {"probability": 0.02},
    "execute_then_timeout": {"request_type": "012", "probability": 0.02, "hold_seconds": 3},
    "execute_then_drop": {"request_type": "012", "probability": 0.02},
    # Carried out after the gateway gave up (2 s): within BridgePay's execution window (4 s), so a
    # look-up must wait for it rather than resend...
    "delay_execution": {"request_type": "012", "probability": 0.02, "delay_ms": 3000},
    # ...and, rarely, long after the window: the resend and the late request both land, and the
    # gateway must flag the refund (duplicate_at_processor), never count it as simply succeeded.
    "execute_after_disconnect": {"request_type": "012", "probability": 0.005, "delay_ms": 5000, "hold_seconds": 10},
}
BRIDGEPAY_WINDOW_SECONDS = 4


# From this many payments on, every fault kind above is expected to fire at least once (at 500, the
# rarest, 2% of refund calls at one processor, is expected about 12 times).
LONG_RUN_PAYMENTS = 500


def gateway_config(stripe_url: str, bridgepay_url: str) -> str:
    return f"""
[[processors]]
id = "stripe"
kind = "stripe"
base_url = "{stripe_url}"
api_key = "{STRIPE_KEY}"
webhook_secrets = ["{WHSEC}"]
timeout_seconds = 2

[[processors]]
id = "bridgepay"
kind = "bridgepay"
base_url = "{bridgepay_url}"
username = "{BP['username']}"
password = "{BP['password']}"
merchant_code = "{BP['merchant_code']}"
merchant_account_code = "{BP['merchant_account_code']}"
timeout_seconds = 2
execution_window_seconds = {BRIDGEPAY_WINDOW_SECONDS}

[[clients]]
id = "billing"
api_key = "{API_KEY}"
scopes = ["transactions:write", "transactions:read", "refunds:write", "refunds:read"]
"""


def gateway_env(dsn: str, callback_url: str) -> dict[str, str]:
    """Short timers, so that what the chaos leaves behind is found and finished within seconds. The
    lease is the shortest the settings allow (1.5 s of retries and two 2 s calls, plus a margin):
    a killed gateway's refunds are taken over as soon as that is safe."""
    return dict(GATEWAY_DATABASE_URL=dsn, GATEWAY_LOG_LEVEL="warning", GATEWAY_SHUTDOWN_GRACE_SECONDS="1",
                GATEWAY_CALLBACK_URL=callback_url, GATEWAY_CALLBACK_SECRETS=json.dumps([CALLBACK_SECRET]),
                GATEWAY_CALLBACK_INITIAL_BACKOFF_SECONDS="0.2", GATEWAY_CALLBACK_MAX_BACKOFF_SECONDS="2",
                GATEWAY_CALLBACK_POLL_SECONDS="0.3", GATEWAY_LEASE_SECONDS="6.6",
                GATEWAY_RETRY_MAX_SECONDS="1.5", GATEWAY_JANITOR_POLL_SECONDS="0.3",
                GATEWAY_PENDING_POLL_SECONDS="0.5", GATEWAY_WEBHOOK_POLL_SECONDS="0.3",
                GATEWAY_DURABLE_RETRY_INITIAL_SECONDS="0.5", GATEWAY_DURABLE_RETRY_MAX_SECONDS="3",
                GATEWAY_DURABLE_RETRY_MAX_ATTEMPTS="60")


class Chaos:
    def __init__(self, args: argparse.Namespace, folder: Path):
        self.args, self.folder = args, folder
        self.rng = random.Random(args.seed)
        self.counts: Counter[str] = Counter()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gateway: GatewayProcess | None = None
        self.billing: BillingCore | None = None
        self.payments_done = 0

    # -- the gateway process: started, killed and restarted on one port -----------------------------

    def start_gateway(self) -> None:
        self.gateway = GatewayProcess(self.folder, self.config, "serve", port=self.port, **self.env)

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1) as client:
            while time.monotonic() < deadline:
                assert self.gateway is not None
                if self.gateway.proc.poll() is not None:  # e.g. started while Postgres was away: start again
                    self.counts["gateway restarts after it exited"] += 1
                    self.start_gateway()
                try:
                    if (await client.get(f"{self.url}/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError(f"the gateway was not ready in {timeout}s:\n{self.gateway.logs()[-3000:]}")

    async def kill_gateway(self) -> None:
        assert self.gateway is not None
        in_flight = self.billing.in_flight if self.billing is not None else 0
        self.gateway.kill()  # SIGKILL, by its PID
        self.gateway.stop()  # closes its log
        self.counts["gateway killed (SIGKILL)"] += 1
        if in_flight:
            self.counts["gateway killed with refund commands in flight"] += 1
        self.start_gateway()
        await self.wait_ready()

    async def postgres_outage(self, seconds: float) -> None:
        self.pg.stop()
        self.counts["Postgres stopped"] += 1
        await asyncio.sleep(seconds)
        self.pg = await asyncio.to_thread(embedded.start, self.folder / "pg")  # same data, same socket
        self.counts["Postgres restarted"] += 1

    @staticmethod
    async def wait_for(condition, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def monkey(self, load_done: asyncio.Event, billing: BillingCore) -> None:
        """Kills the gateway `kills` times and stops Postgres once, at random points of the load
        (when a random share of the payments is done, with refund commands in flight). Whatever is
        left once the load has finished is done then, so every run has them all."""
        actions = ["kill"] * self.args.kills + ["postgres"]
        self.rng.shuffle(actions)
        marks = sorted(self.rng.uniform(0.05, 0.75) * self.args.payments for _ in actions)
        for action, mark in zip(actions, marks, strict=True):
            await self.wait_for(lambda mark=mark: load_done.is_set() or self.payments_done >= mark, timeout=600)
            await self.wait_for(lambda: load_done.is_set() or billing.in_flight > 0, timeout=10)
            if load_done.is_set():
                await asyncio.sleep(1.0)
            print(f"chaos: {action}", file=sys.stderr, flush=True)
            if action == "kill":
                await self.kill_gateway()
            else:
                await self.postgres_outage(self.args.postgres_outage_seconds)

    # -- the run -----------------------------------------------------------------------------------

    async def load(self, billing: BillingCore) -> None:
        gate = asyncio.Semaphore(self.args.concurrency)

        async def one(n: int) -> None:
            async with gate:
                if n % 2 == 0:
                    payment = billing.stripe_payment(self.stripe)
                else:
                    payment = billing.bridgepay_payment(self.bridgepay, settled=self.rng.random() < 0.8)
                try:
                    if await billing.register(payment):
                        await billing.refund_all(payment)
                finally:
                    self.payments_done += 1

        await asyncio.gather(*(one(n) for n in range(self.args.payments)))

    async def settle(self, timeout: float) -> dict[str, int]:
        """Waits until nothing is left to do: no refund pending, no look-up for a second execution
        due, no webhook waiting, no callback undelivered, no Stripe delivery in flight. Returns what
        was still left (empty when settled)."""
        deadline = time.monotonic() + timeout
        left: dict[str, int] = {}
        while time.monotonic() < deadline:
            try:
                conn = await asyncpg.connect(self.pg.uri)
                try:
                    left = dict(await conn.fetchrow("""
                        SELECT (SELECT count(*) FROM refunds WHERE status = 'pending') AS refunds_pending,
                               (SELECT count(*) FROM refunds WHERE verify_at IS NOT NULL) AS duplicate_checks_due,
                               (SELECT count(*) FROM webhook_events WHERE status IN ('received', 'failed'))
                                   AS webhooks_waiting,
                               (SELECT count(*) FROM outbox_events WHERE delivered_at IS NULL) AS callbacks_undelivered
                    """))
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError):
                left = {"database": 1}
            left["stripe_deliveries_in_flight"] = len(self.stripe.sim.deliverer._tasks)
            if not any(left.values()):
                return {}
            await asyncio.sleep(0.5)
        return {k: v for k, v in left.items() if v}

    async def collect(self, conn: asyncpg.Connection) -> dict[str, Any]:
        return {
            "transactions": await conn.fetch("SELECT id, processor_id, psp_reference, amount, refunded_amount, "
                                             "reserved_amount FROM transactions"),
            "refunds": await conn.fetch("SELECT id, transaction_id, amount, status, stage, failure_code, "
                                        "failure_message, version, created_at, previous_refund_id FROM refunds"),
            "webhooks": await conn.fetch("SELECT event_id, status FROM webhook_events WHERE processor_id = 'stripe'"),
            "outbox": await conn.fetch("SELECT refund_id, version, delivered_at FROM outbox_events"),
        }

    def fault_counts(self, receiver: CallbackReceiver) -> Counter[str]:
        deliveries = self.stripe.sim.deliverer.describe()
        faults = Counter({f"stripe {k}": v for k, v in self.stripe.sim.faults.fired_counts.items()})
        faults.update({f"bridgepay {k}": v for k, v in self.bridgepay.sim.faults.fired_counts.items()})
        faults["stripe webhook duplicated"] = sum(1 for d in deliveries if d["duplicate"])
        faults["stripe webhook delivery failed and retried"] = sum(max(0, d["attempts"] - 1) for d in deliveries)
        faults["callback failed on purpose"] = receiver.failed_on_purpose
        return faults

    def faults_expected(self) -> list[str]:
        """The fault kinds that must have fired: all that are configured, in a long enough run."""
        if self.args.payments < LONG_RUN_PAYMENTS:
            return []
        return ([f"stripe {k}" for k in STRIPE_FAULTS if k != "webhooks"] + ["stripe webhook duplicated"]
                + [f"bridgepay {k}" for k in BRIDGEPAY_FAULTS] + ["callback failed on purpose"])

    def check(self, data: dict[str, Any], billing: BillingCore, receiver: CallbackReceiver,
              settle_left: dict[str, int]) -> dict[str, list[str]]:
        refunds = data["refunds"]
        at_processor = (invariants.stripe_refunds(self.stripe.sim.world)
                        + invariants.bridgepay_refunds(self.bridgepay.sim.world))
        return {
            "the load happened (commands, refunds, faults, webhooks, a kill mid-load)": invariants.load_happened(
                commands=billing.commands, minimum_commands=self.args.payments, processors=("stripe", "bridgepay"),
                transactions=data["transactions"], refunds=refunds, faults_fired=self.fault_counts(receiver),
                faults_expected=self.faults_expected(), webhooks_stored=len(data["webhooks"]),
                kills=self.args.kills, kills_in_flight=self.counts["gateway killed with refund commands in flight"]),
            "everything settled": [f"still left after the settle timeout: {settle_left}"] if settle_left else [],
            "processor totals equal gateway totals, none over-refunded, none executed twice unflagged":
                invariants.money(data["transactions"], refunds, at_processor),
            "executed twice at the processor => flagged in the gateway, never silently succeeded":
                invariants.duplicates_flagged(refunds, at_processor),
            "every refund final or requires_attention with a reason": invariants.final_states(refunds),
            "every webhook sent is stored exactly once": invariants.webhooks(
                self.stripe.sim.world.events, self.stripe.sim.deliverer.describe(), data["webhooks"]),
            "every state change reached the billing core": invariants.callbacks(
                refunds, data["outbox"], receiver.received, receiver.last_status),
            "duplicates answered consistently, every command answered":
                invariants.answers(billing.commands, {r["id"]: r for r in refunds}),
            "no 5xx but 503 (database away) from the gateway": billing.server_errors,
        }

    async def main(self) -> int:
        started = time.monotonic()
        self.pg = embedded.start(self.folder / "pg")
        receiver = CallbackReceiver(CALLBACK_SECRET, random.Random(self.args.seed + 1), failure_probability=0.05)
        try:
            async with serve_on_loopback(receiver.app) as receiver_url, \
                    stripe_simulator(StripeConfig(api_key=STRIPE_KEY, webhook_url=f"{self.url}/v1/webhooks/stripe",
                                                  webhook_secrets=[WHSEC], seed=self.args.seed,
                                                  delivery_max_attempts=60, delivery_initial_backoff_seconds=0.2,
                                                  delivery_max_backoff_seconds=2.0)) as self.stripe, \
                    bridgepay_simulator(BridgePayConfig(**BP, seed=self.args.seed, sandbox_amounts=True)) \
                    as self.bridgepay:
                self.config = gateway_config(self.stripe.url, self.bridgepay.url)
                self.env = gateway_env(self.pg.uri, f"{receiver_url}/callbacks")
                self.start_gateway()
                try:
                    await self.wait_ready()
                    return await self.run(receiver, started)
                finally:
                    assert self.gateway is not None
                    self.gateway.stop()
        finally:
            self.pg.stop()

    async def run(self, receiver: CallbackReceiver, started: float) -> int:
        self.stripe.sim.faults.configure(STRIPE_FAULTS)
        self.bridgepay.sim.faults.configure(BRIDGEPAY_FAULTS)
        async with BillingCore(self.url, API_KEY, self.rng) as billing:
            self.billing = billing
            load_done = asyncio.Event()
            monkey = asyncio.create_task(self.monkey(load_done, billing))
            try:
                await self.load(billing)
            finally:
                load_done.set()
                await monkey
            load_seconds = time.monotonic() - started
            print("chaos: load done; faults off, settling", file=sys.stderr, flush=True)
            self.stripe.sim.faults.clear()
            self.bridgepay.sim.faults.clear()
            left = await self.settle(self.args.settle_seconds)
            conn = await asyncpg.connect(self.pg.uri)
            try:
                data = await self.collect(conn)
            finally:
                await conn.close()
            results = self.check(data, billing, receiver, left)
            print(self.summary(billing, receiver, data, results, load_seconds, time.monotonic() - started))
        return 1 if any(results.values()) else 0

    def logged_errors(self) -> list[str]:
        """What the gateway processes logged at error level (their logs are in the run's folder)."""
        return [line for log in sorted(self.folder.glob("gateway-*.log"))
                for line in log.read_text(errors="replace").splitlines()
                if '"level": "error"' in line or '"level":"error"' in line or line.startswith("Traceback")]

    def summary(self, billing: BillingCore, receiver: CallbackReceiver, data: dict[str, Any],
                results: dict[str, list[str]], load_seconds: float, total_seconds: float) -> str:
        faults = self.fault_counts(receiver)
        outcomes = Counter(f"{r['status']}" + (f" ({r['failure_code']})" if r["failure_code"] else "")
                           for r in data["refunds"])
        lines = [f"chaos run: seed {self.args.seed}, {self.args.payments} payments, "
                 f"load {load_seconds:.0f} s, total {total_seconds:.0f} s",
                 "", "billing core:"]
        lines += [f"  {k}: {v}" for k, v in sorted(billing.counts.items())]
        lines += ["", "chaos:"] + [f"  {k}: {v}" for k, v in sorted(self.counts.items())]
        lines += ["", "faults injected:"] + [f"  {k}: {v}" for k, v in sorted(faults.items())]
        lines += ["", f"refund outcomes ({len(data['refunds'])} refunds):"]
        lines += [f"  {k}: {v}" for k, v in outcomes.most_common()]
        lines += ["", f"webhook events stored: {len(data['webhooks'])} "
                      f"({dict(Counter(w['status'] for w in data['webhooks']))}); "
                      f"callbacks delivered: {sum(len(v) for v in receiver.received.values())}", "", "invariants:"]
        for name, violations in results.items():
            lines.append(f"  [{'FAIL' if violations else ' ok '}] {name}")
            lines += [f"         {v}" for v in violations[:20]]
            if len(violations) > 20:
                lines.append(f"         ... and {len(violations) - 20} more")
        if any(results.values()):
            lines += ["", "gateway errors logged:"] + [f"  {_shown(line)}" for line in self.logged_errors()[:20]]
        lines.append("")
        lines.append("chaos run FAILED" if any(results.values()) else "chaos run passed: every invariant holds")
        return "\n".join(lines)


def _shown(line: str) -> str:
    """A logged error, cut short, but with the last line of its traceback (the exception itself)."""
    try:
        exception = json.loads(line).get("exception") or ""
    except (ValueError, AttributeError):
        exception = ""
    last = exception.strip().splitlines()[-1] if exception.strip() else ""
    return line[:400] + (f" ... {last[:300]}" if last else "")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short version run by make test")
    parser.add_argument("--payments", type=int, help="payments to refund (default 1000; --quick: 40)")
    parser.add_argument("--kills", type=int, help="SIGKILLs of the gateway (default 6; --quick: 1)")
    parser.add_argument("--concurrency", type=int, default=24, help="payments worked on at once")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--postgres-outage-seconds", type=float, default=5.0)
    parser.add_argument("--settle-seconds", type=float, default=180.0)
    args = parser.parse_args()
    args.payments = args.payments or (40 if args.quick else 1000)
    args.kills = args.kills if args.kills is not None else (1 if args.quick else 6)
    # The simulators log a traceback for every connection the killed gateway leaves half-read.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    stop_on_sigterm()
    folder = Path(tempfile.mkdtemp(prefix="gw-chaos-"))
    try:
        return asyncio.run(Chaos(args, folder).main())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
