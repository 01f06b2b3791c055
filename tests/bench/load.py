"""The load generator, run as its own process: closed loop (N clients back to back) or open
loop (a fixed arrival rate, latency measured from the intended send time), against one of
the gateway's endpoints. Prints one JSON line of results.

    python -m tests.bench.load --url http://127.0.0.1:8080 --key KEY --plan plan.json \\
        --kind refunds --concurrency 64 --seconds 15 [--rate 500]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import sys
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp
import uvloop

from tests.ids import token


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class Plan:
    """What each request sends: refunds on pre-registered transactions, or signed webhooks."""

    def __init__(self, kind: str, plan: dict[str, Any]):
        self.kind = kind
        self.transactions = plan.get("transactions", [])
        self.amount = plan.get("amount", 100)
        self.whsec = plan.get("webhook_secret", "").encode()
        self._next = 0
        self.wrapped = False

    def request(self) -> tuple[str, bytes, dict[str, str]]:
        if self.kind == "webhooks":
            body = json.dumps({
                "id": f"evt_{token(32)}", "object": "event", "type": "charge.succeeded",
                "created": int(time.time()), "data": {"object": {
                    "id": f"ch_{token(24)}", "object": "charge", "amount": 5000, "currency": "eur",
                    "payment_intent": None, "metadata": {"invoice_id": f"INV-{uuid.uuid4().hex[:12]}"}}}}).encode()
            t = int(time.time())
            sig = hmac.new(self.whsec, b"%d." % t + body, hashlib.sha256).hexdigest()
            return "/v1/webhooks/stripe", body, {"Stripe-Signature": f"t={t},v1={sig}"}
        if self._next >= len(self.transactions):
            self.wrapped = True  # a transaction refunded twice: the run outgrew its plan
        tx = self.transactions[self._next % len(self.transactions)]
        self._next += 1
        body = json.dumps({"invoice_id": tx["invoice_id"], "transaction_id": tx["id"], "amount": self.amount,
                           "currency": "EUR"}).encode()
        return "/v1/refunds", body, {}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with open(args.plan) as f:
        plan = Plan(args.kind, json.load(f))
    headers = {"Authorization": f"Bearer {args.key}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    async with aiohttp.ClientSession(args.url, headers=headers, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def one(intended: float) -> None:
            path, body, extra = plan.request()
            try:
                async with session.post(path, data=body, headers=extra) as response:
                    await response.read()
                    statuses[response.status] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                errors[type(e).__name__] += 1
                return
            latencies.append(time.perf_counter() - intended)

        started = time.perf_counter()
        deadline = started + args.seconds
        if args.rate:
            tasks = []
            n = 0
            while True:
                intended = started + n / args.rate
                if intended >= deadline:
                    break
                delay = intended - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(intended)))
                n += 1
            await asyncio.gather(*tasks)
        else:
            async def client() -> None:
                while time.perf_counter() < deadline:
                    await one(time.perf_counter())
            await asyncio.gather(*(client() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    done = sum(statuses.values())
    return {"requests": done, "seconds": round(elapsed, 3), "rps": round(done / elapsed, 1),
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
            "p95_ms": round(percentile(latencies, 0.95) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "transport_errors": dict(errors),
            "plan_wrapped": plan.wrapped}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--kind", choices=["refunds", "webhooks"], default="refunds")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=0)
    args = parser.parse_args()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    sys.exit(main())
