"""Rejected webhooks are kept for investigation, bounded: a flood of forgeries cannot fill the database."""

from __future__ import annotations

from gateway.db import store


async def test_rejections_beyond_the_hourly_cap_are_not_stored(pool):
    async with pool.acquire() as conn:
        for _ in range(5):
            await store.insert_rejection(conn, "stripe", "bad signature", {"Stripe-Signature": "t=1,v1=x"},
                                         b"x" * 100_000, hourly_cap=3)
        await store.insert_rejection(conn, "other", "bad signature", {}, b"{}", hourly_cap=3)
        rows = await conn.fetch("SELECT processor_id, length(body) AS kept, body_bytes FROM webhook_rejections")
    assert sorted(r["processor_id"] for r in rows) == ["other", "stripe", "stripe", "stripe"]
    assert {(r["kept"], r["body_bytes"]) for r in rows if r["processor_id"] == "stripe"} == {(65536, 100_000)}
