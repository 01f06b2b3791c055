"""`make bench`: start everything on loopback (an embedded Postgres, the gateway as its own
process, the reference service, the load generator and the floor as separate processes), run
bounded scenarios, print a table and write bench-results.json. Every process started here is
stopped here, by PID.

Each refund scenario is reported as a ratio to the reference (tests/bench/reference.py: the least
a refund endpoint can do on the same stack, two transactions and six statements per refund) and,
beside it, to the floor (the gateway's own statements driven straight through asyncpg).

    python -m tests.bench [--quick] [--workers N] [--soak-seconds S] [--out bench-results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import asyncpg
import psutil

from gateway import embedded
from gateway.db.migrate import migrate
from gateway.db.pool import connect
from tests.processes import GatewayProcess, answers_ok, free_port, stop_on_sigterm
from tests.ids import token

KEY = "sk_bench_0123456789abcdef"
WHSEC = "whsec_bench_0123456789"
CONFIG = f"""
[[processors]]
id = "mock"
kind = "mock"

[[processors]]
id = "slow"
kind = "mock"
latency_seconds = 0.2

[[processors]]
id = "stripe"
kind = "stripe"
base_url = "http://127.0.0.1:9"
api_key = "sk_bench_unused"
webhook_secrets = ["{WHSEC}"]

[[clients]]
id = "bench"
api_key = "{KEY}"
scopes = ["transactions:write", "transactions:read", "refunds:write", "refunds:read", "admin"]
"""

# What each busy session of the bench's database is waiting for ("running": nothing).
BUSY_SESSIONS = """
SELECT coalesce(wait_event, 'running') FROM pg_stat_activity
WHERE state = 'active' AND backend_type = 'client backend' AND datname = current_database()
  AND pid <> pg_backend_pid()"""
WAL_WRITTEN = "SELECT wal_bytes, wal_fpi FROM pg_stat_wal"


class Bench:
    def __init__(self, args: argparse.Namespace, folder: Path):
        self.args, self.folder = args, folder
        self.seconds = 2.0 if args.quick else args.seconds
        self.warmup = 0.5 if args.quick else 3.0
        self.profiles: dict[str, dict] = {}

    async def seed(self, processor: str, count: int, amount: int) -> Path:
        """Register `count` payments straight into the database; returns a plan file for the load."""
        rows = [(f"tx_bench_{token(24)}", processor, f"ch_{token(32)}", f"INV-{token()}",
                 amount, "EUR") for _ in range(count)]
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.copy_records_to_table("transactions", records=rows, columns=[
                "id", "processor_id", "psp_reference", "invoice_id", "amount", "currency"])
        finally:
            await conn.close()
        plan = self.folder / f"plan-{uuid.uuid4().hex[:8]}.json"
        plan.write_text(json.dumps({"transactions": [{"id": r[0], "invoice_id": r[3]} for r in rows],
                                    "amount": 100, "webhook_secret": WHSEC}))
        return plan

    def run_tool(self, module: str, *args: str, seconds: float) -> dict:
        """Run a tool process to its end; its result line, with `cpu_share`: the CPU time it took as a
        share of the machine's (wall time x cores), so a ratio is known to compare services and not
        load generators."""
        before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
        out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                             timeout=seconds * 2 + 120)
        after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic() - started
        if out.returncode != 0:
            raise RuntimeError(f"{module} failed:\n{out.stderr[-3000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return {**json.loads(out.stdout.strip().splitlines()[-1]),
                "cpu_share": round(cpu / (wall * (os.cpu_count() or 1)), 3)}

    def load(self, plan: Path, *, kind: str = "refunds", concurrency: int = 64, seconds: float | None = None,
             rate: float = 0, url: str | None = None) -> dict:
        seconds = seconds or self.seconds
        return self.run_tool("tests.bench.load", "--url", url or self.gateway.url, "--key", KEY, "--plan", str(plan),
                             "--kind", kind, "--concurrency", str(concurrency), "--seconds", str(seconds),
                             "--rate", str(rate), seconds=seconds)

    def reference(self, plan: Path, **options) -> dict:
        """The same load against the reference service."""
        return self.load(plan, url=self.reference_url, **options)

    async def bracketed(self, processor: str, count: int, amount: int, run, **options) -> tuple[dict, dict]:
        """`run()` (the gateway's run) between two runs of the reference under the same load, each on
        payments of its own: this machine's pace drifts, so the reference's figure is their mean."""
        before = self.reference(await self.seed(processor, count, amount), **options)
        result = run()
        after = self.reference(await self.seed(processor, count, amount), **options)
        runs = [before, after]
        return result, {"rps": round(sum(r["rps"] for r in runs) / 2, 1), "runs": runs}

    def floor(self, plan: Path, *, kind: str = "refunds", concurrency: int = 64) -> dict:
        return self.run_tool("tests.bench.floor", "--dsn", self.dsn, "--plan", str(plan), "--kind", kind,
                             "--concurrency", str(concurrency), "--seconds", str(self.seconds), seconds=self.seconds)

    def profiled(self, name: str, run) -> dict:
        """`run()`, the gateway sampled meanwhile with --profile (summary in self.profiles)."""
        profiler = self.profile(name)
        result = run()
        self.profiles[name] = self.profile_summary(profiler, name)
        return result

    def profile(self, name: str) -> subprocess.Popen | None:
        """With --profile, py-spy on the gateway for one measured run: collapsed stacks in
        bench-profile-<name>.txt, summarised by `profile_summary`."""
        if not self.args.profile:
            return None
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        return subprocess.Popen([py_spy, "record", "--pid", str(self.gateway.proc.pid), "--duration",
                                 str(int(self.seconds)), "--format", "raw", "--subprocesses", "--nonblocking",
                                 "-o", f"bench-profile-{name}.txt"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    @staticmethod
    def profile_summary(profiler: subprocess.Popen | None, name: str) -> dict:
        """Where the gateway's samples ended (the innermost frame), by package: what its time goes to."""
        if profiler is None:
            return {}
        profiler.wait(timeout=120)
        buckets: Counter[str] = Counter()
        path = Path(f"bench-profile-{name}.txt")
        for line in path.read_text().splitlines() if path.exists() else []:
            stack, _, count = line.rpartition(" ")
            buckets[_package(stack.rsplit(";", 1)[-1])] += int(count)
        total = sum(buckets.values()) or 1
        return {"profile": {k: round(v / total, 3) for k, v in buckets.most_common(10)}}

    async def settle(self) -> None:
        """Before each scenario: VACUUM ANALYZE and a checkpoint. Each starts from a database in a
        steady state, as a production one is (statistics that match the tables, so the plans made
        from them do; no dead rows or dirty pages of the run before), not from the last run's debris."""
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute("VACUUM ANALYZE")
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()

    async def open_loop(self, rate: float, count: int) -> tuple[dict, dict]:
        """Scenario 1b: refunds at a fixed rate on the gateway, then on the reference, each from a
        settled database and watched (see `watched`). Returns the gateway's run, and what was
        watched of both with the reference's latencies, to tell the database's part of a tail from
        the service's."""
        await self.settle()
        plan = await self.seed("mock", count, 1_000_000)
        gateway, watched = await self.watched(lambda: self.load(plan, rate=rate))
        await self.settle()
        plan = await self.seed("mock", count, 1_000_000)
        reference, reference_watched = await self.watched(lambda: self.reference(plan, rate=rate))
        return gateway, {**watched, "reference_open_loop": {
            "p50_ms": reference["p50_ms"], "p99_ms": reference["p99_ms"], **reference_watched}}

    async def watched(self, run) -> tuple[dict, dict]:
        """`run()` (a load, run in a thread), with Postgres watched meanwhile: the WAL written per
        request answered, the full-page images in it (a page's first change after a checkpoint
        writes the whole page), and `wal_flush_wait_share`: of the database's busy sessions, sampled
        every 10 ms, the share waiting for the WAL to reach the disk (a commit waits for its flush:
        LWLock WALWrite, IO WalSync and WalWrite)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            wal_before = await conn.fetchrow(WAL_WRITTEN)
            waits: Counter[str] = Counter()
            running = asyncio.get_running_loop().run_in_executor(None, run)
            while not running.done():
                waits.update(r[0] for r in await conn.fetch(BUSY_SESSIONS))
                await asyncio.wait([running], timeout=0.01)
            result = await running
            wal_after = await conn.fetchrow(WAL_WRITTEN)
        finally:
            await conn.close()
        busy = sum(waits.values())
        flush = waits["WALWrite"] + waits["WalSync"] + waits["WalWrite"]
        requests = max(1, result["requests"])
        return result, {"wal_bytes_per_request": round(float(wal_after[0] - wal_before[0]) / requests),
                        "wal_full_pages_per_request": round((wal_after[1] - wal_before[1]) / requests, 2),
                        "wal_flush_wait_share": round(flush / busy, 2) if busy else 0.0}

    def rss_mb(self) -> float:
        """Resident memory of the gateway: its process and any worker processes."""
        proc = psutil.Process(self.gateway.proc.pid)
        return round(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20, 1)

    async def scenarios(self) -> list[dict]:
        results = []
        per_run = 200_000 if not self.args.quick else 20_000

        # 1. Refunds through the zero-latency mock, 64 clients, each on its own transaction.
        await self.settle()
        self.load(await self.seed("mock", 2_000, 1_000_000), seconds=self.warmup)
        self.reference(await self.seed("mock", 2_000, 1_000_000), seconds=self.warmup)
        floor1 = self.floor(await self.seed("mock", per_run // 4, 1_000_000))
        plan1 = await self.seed("mock", per_run // 4, 1_000_000)
        gateway1, ref1 = await self.bracketed("mock", per_run // 4, 1_000_000,
                                              lambda: self.profiled("1", lambda: self.load(plan1)))
        results.append(row("1. refunds, mock 0 ms, 64 clients", gateway1, ref1, floor1["rps"], floor1,
                           extra=self.profiles.get("1")))
        rate = max(1.0, ref1["rps"] / 2)
        open1, watched1 = await self.open_loop(rate, per_run // 4)
        results.append(row(f"1b. same, open loop at {rate:.0f}/s (half the reference)", open1, None, rate,
                           extra=watched1))

        # 2. Processor latency 200 ms, 512 clients: nothing may be held across the call. Its floor is
        # the most the latency allows, or the gateway's own rate at 0 ms if that is lower.
        floor2 = min(512 / 0.2, gateway1["rps"])
        await self.settle()
        self.load(await self.seed("slow", 2_000, 1_000_000), concurrency=512, seconds=self.warmup)
        plan2 = await self.seed("slow", per_run // 4, 1_000_000)
        gateway2, ref2 = await self.bracketed(
            "slow", per_run // 4, 1_000_000, lambda: self.profiled("2", lambda: self.load(plan2, concurrency=512)),
            concurrency=512)
        results.append(row("2. refunds, mock 200 ms, 512 clients", gateway2, ref2, floor2,
                           extra=self.profiles.get("2")))

        # 3. Partial refunds on 10 hot transactions: row-lock contention, never over-refunded. The
        # balance is sized to run out within the first tenth of the run at the gateway's own pace in
        # scenario 1 (not the floor's: a slow or busy machine must still exhaust it), so both refunds
        # under contention and refusals of an exhausted balance are measured.
        per_transaction = max(1, int(gateway1["rps"] * self.seconds / 100))
        if self.args.quick:  # a 2 s run on a busy machine proves the harness: a small balance, surely spent
            per_transaction = min(per_transaction, 3)
        room = 10 * per_transaction
        await self.settle()
        hot = await self.seed("mock", 10, per_transaction * 100)  # refunds of 1.00: `room` in all
        gateway3, ref3 = await self.bracketed("mock", 10, per_transaction * 100, lambda: self.load(hot))
        gateway3.pop("plan_wrapped")  # ten transactions, refunded over and over: by design
        conn = await asyncpg.connect(self.dsn)
        try:
            ids = [t["id"] for t in json.loads(hot.read_text())["transactions"]]
            over = await conn.fetchval(
                "SELECT count(*) FROM transactions t WHERE id = ANY($1) AND (refunded_amount + reserved_amount > amount "
                "OR refunded_amount <> (SELECT coalesce(sum(amount), 0) FROM refunds r WHERE r.transaction_id = t.id "
                "AND r.status = 'succeeded'))", ids)
        finally:
            await conn.close()
        bad = {k: v for k, v in gateway3["statuses"].items() if k not in ("201", "422")}
        succeeded = gateway3["statuses"].get("201", 0)
        results.append(row("3. partial refunds on 10 hot transactions", gateway3, ref3, None,
                           extra={"over_refunded": over, "unexpected_statuses": bad, "refunds_made": succeeded,
                                  "balance_for": room, "refunds_per_s": round(succeeded / gateway3["seconds"], 1)}))

        # 4. Signed Stripe-like webhooks: verify, store, apply. Settled after the floor's run, whose
        # payments the gateway's statistics then know.
        plan4 = await self.seed("mock", 1, 1)
        self.load(plan4, kind="webhooks", seconds=self.warmup)
        floor4 = self.floor(plan4, kind="webhooks")
        await self.webhook_backlog_drained()
        await self.settle()
        gateway4 = self.load(plan4, kind="webhooks")
        drained = await self.webhook_backlog_drained()
        # The floor stores and applies; the gateway answers once stored and applies after. So the
        # ratio is taken end to end: events accepted over the time until the last was applied.
        accepted = gateway4["statuses"].get("200", 0)
        applied_rps = round(accepted / (gateway4["seconds"] + drained), 1) if drained is not None else 0.0
        results.append(row("4. signed webhooks, 64 clients", gateway4, None, floor4["rps"], floor4,
                           extra={"backlog_drained_seconds": drained, "applied_per_s": applied_rps},
                           measured_rps=applied_rps))

        # 5. Soak at a fixed rate: resident memory at the start and at the end.
        soak_seconds = 4.0 if self.args.quick else self.args.soak_seconds
        soak_rate = max(1.0, round(ref1["rps"] / 4))
        await self.settle()
        self.load(await self.seed("mock", 2_000, 1_000_000), rate=soak_rate, seconds=self.warmup)
        rss_start = self.rss_mb()
        soak = self.load(await self.seed("mock", int(soak_rate * soak_seconds) + 1_000, 1_000_000), rate=soak_rate,
                         seconds=soak_seconds)
        rss_end = self.rss_mb()
        results.append(row(f"5. soak {soak_seconds:.0f} s at {soak_rate:.0f}/s", soak, None, None,
                           extra={"rss_start_mb": rss_start, "rss_end_mb": rss_end,
                                  "rss_growth": round(rss_end / rss_start - 1, 3)}))
        return results

    async def with_workers(self, workers: int) -> list[dict]:
        """Scenarios 1, 1b and 2 again, on a gateway of `workers` server processes."""
        results = []
        per_run = 200_000 if not self.args.quick else 20_000
        await self.settle()
        self.load(await self.seed("mock", 2_000, 1_000_000), seconds=self.warmup)
        plan1 = await self.seed("mock", per_run // 4, 1_000_000)
        gateway1, ref1 = await self.bracketed("mock", per_run // 4, 1_000_000, lambda: self.load(plan1))
        results.append(row(f"1w. refunds, mock 0 ms, 64 clients, {workers} workers", gateway1, ref1, None))
        rate = max(1.0, ref1["rps"] / 2)
        open1, watched1 = await self.open_loop(rate, per_run // 4)
        results.append(row(f"1bw. same, open loop at {rate:.0f}/s, {workers} workers", open1, None, rate,
                           extra=watched1))
        await self.settle()
        self.load(await self.seed("slow", 2_000, 1_000_000), concurrency=512, seconds=self.warmup)
        plan2 = await self.seed("slow", per_run // 4, 1_000_000)
        gateway2, ref2 = await self.bracketed("slow", per_run // 4, 1_000_000,
                                              lambda: self.load(plan2, concurrency=512), concurrency=512)
        results.append(row(f"2w. refunds, mock 200 ms, 512 clients, {workers} workers", gateway2, ref2,
                           min(512 / 0.2, gateway1["rps"])))
        return results

    async def webhook_backlog_drained(self) -> float | None:
        conn = await asyncpg.connect(self.dsn)
        started = time.monotonic()
        try:
            while time.monotonic() - started < 120:
                left = await conn.fetchval("SELECT count(*) FROM webhook_events WHERE status IN ('received', 'failed')")
                if left == 0:
                    return round(time.monotonic() - started, 2)
                await asyncio.sleep(0.2)
            return None
        finally:
            await conn.close()

    async def main(self) -> dict:
        pg = embedded.start(self.folder / "pg", delete_on_stop=True)
        try:
            admin = await asyncpg.connect(pg.uri)
            await admin.execute("CREATE DATABASE bench")
            version = await admin.fetchval("SHOW server_version")
            await admin.close()
            self.dsn = pg.uri.replace("/postgres?", "/bench?")
            conn = await connect(self.dsn)
            await migrate(conn)
            await conn.close()
            port = free_port()
            self.reference_url = f"http://127.0.0.1:{port}"
            reference = subprocess.Popen([sys.executable, "-m", "tests.bench.reference", "--dsn", self.dsn,
                                          "--port", str(port), "--key", KEY], stdout=subprocess.DEVNULL)
            try:
                results = await self.on_gateway(1, self.scenarios)
                if self.args.workers > 1:
                    results += await self.on_gateway(self.args.workers, lambda: self.with_workers(self.args.workers))
            finally:
                reference.terminate()
                reference.wait(timeout=20)
        finally:
            pg.stop()
        return {"machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(), "postgres": version},
                "gateway_workers": [1, self.args.workers] if self.args.workers > 1 else [1],
                "seconds_per_run": self.seconds, "scenarios": results}

    async def on_gateway(self, workers: int, scenarios) -> list[dict]:
        """Run `scenarios` on a gateway of `workers` server processes, started and stopped here."""
        self.gateway = GatewayProcess(self.folder, CONFIG, "serve", ["--workers", str(workers)],
                                      GATEWAY_DATABASE_URL=self.dsn, GATEWAY_LOG_LEVEL="info")
        try:
            self.gateway.wait_ready(60)
            wait_answering(self.reference_url)
            return await scenarios()
        finally:
            self.gateway.stop()


def _package(frame: str) -> str:
    """`execute (asyncpg/connection.py:350)` -> asyncpg; the gateway's own code by module; the
    standard library by module (`python:selectors`)."""
    where = frame[frame.rfind("(") + 1:].rsplit(":", 1)[0]
    if "site-packages/" in where:
        return where.split("site-packages/")[1].split("/")[0].split(".")[0]
    for own in ("/gateway/", "/adapters/"):  # an absolute path to the gateway's own code
        if own in where:
            where = own[1:] + where.rsplit(own, 1)[1]
    parts = where.split("/")
    if parts[0] in ("gateway", "adapters") and len(parts) > 1:
        return f"{parts[0]}/{parts[1].removesuffix('.py')}"
    if len(parts) > 1 and parts[0]:
        return parts[0].split(".")[0]
    if where.endswith(".py") or where.startswith("<frozen"):
        return "python:" + Path(where.strip("<>")).stem.removeprefix("frozen ")
    return "other"


def wait_answering(url: str, timeout: float = 30) -> None:
    """Wait for a service's /readyz (the reference's, started beside the gateway)."""
    deadline = time.monotonic() + timeout
    while not answers_ok(f"{url}/readyz"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready in {timeout}s")
        time.sleep(0.1)


def row(name: str, result: dict, reference: dict | None, floor_rps: float | None, floor: dict | None = None,
        extra: dict | None = None, measured_rps: float | None = None) -> dict:
    """One scenario's figures. `ratio_to_reference`: requests answered per second over the reference
    service's under the same load; `ratio`: `measured_rps` (default: requests answered per second)
    over the floor's. `load_cpu_share`: the load generator's share of the machine's CPU."""
    errors = sum(v for k, v in result["statuses"].items() if not k.startswith("2")) + sum(
        result["transport_errors"].values())
    measured = result["rps"] if measured_rps is None else measured_rps
    print(f"done: {name}: {result['rps']} req/s", file=sys.stderr, flush=True)
    return {"scenario": name, "rps": result["rps"], "p50_ms": result["p50_ms"], "p95_ms": result["p95_ms"],
            "p99_ms": result["p99_ms"], "errors": errors, "statuses": result["statuses"],
            "load_cpu_share": result["cpu_share"],
            "reference_rps": reference["rps"] if reference else None,
            "ratio_to_reference": round(result["rps"] / reference["rps"], 2) if reference else None,
            "floor_rps": round(floor_rps, 1) if floor_rps else None,
            "ratio": round(measured / floor_rps, 2) if floor_rps else None,
            **({"plan_wrapped": True} if result.get("plan_wrapped") else {}),
            **({"reference": reference} if reference else {}),
            **({"floor": floor} if floor else {}), **(extra or {})}


def table(report: dict) -> str:
    lines = [f"{'scenario':<52} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>8} {'errors':>7} {'ref/s':>7} "
             f"{'vs ref':>6} {'floor/s':>8} {'ratio':>6} {'load cpu':>8}"]
    for r in report["scenarios"]:
        lines.append(f"{r['scenario']:<52} {r['rps']:>7.1f} {r['p50_ms']:>7.1f} {r['p99_ms']:>8.1f} "
                     f"{r['errors']:>7} {r['reference_rps'] or '-':>7} {r['ratio_to_reference'] or '-':>6} "
                     f"{r['floor_rps'] or '-':>8} {r['ratio'] or '-':>6} {r['load_cpu_share']:>8}")
        notes = {k: v for k, v in r.items() if k in (
            "over_refunded", "unexpected_statuses", "refunds_made", "balance_for", "refunds_per_s",
            "backlog_drained_seconds", "applied_per_s", "wal_bytes_per_request", "wal_full_pages_per_request",
            "wal_flush_wait_share", "reference_open_loop", "rss_start_mb", "rss_end_mb", "rss_growth",
            "plan_wrapped", "profile")}
        if notes:
            lines.append(f"{'':<4}{json.dumps(notes)}")
    m = report["machine"]
    lines.append(f"machine: {m['cores']} cores, {m['platform']}, Python {m['python']}, Postgres {m['postgres']}; "
                 f"gateway worker processes: {report['gateway_workers']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    parser.add_argument("--quick", action="store_true", help="seconds, not minutes: proves the harness runs")
    parser.add_argument("--workers", type=int, default=2,
                        help="also run scenarios 1 and 2 on a gateway of this many server processes (1: skip)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured run")
    parser.add_argument("--soak-seconds", type=float, default=300.0)
    parser.add_argument("--out", default="bench-results.json")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the gateway in scenarios 1 and 2 (needs py-spy: pip install py-spy)")
    args = parser.parse_args()
    stop_on_sigterm()
    folder = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    try:
        report = asyncio.run(Bench(args, folder).main())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
