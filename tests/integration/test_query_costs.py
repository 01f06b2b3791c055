"""The webhook inbox's claim, on real Postgres: it costs the same however long the backlog, with the
plan a long-lived pool connection keeps (a generic plan, made while the inbox had no backlog).

The test caches that plan first, then grows the backlog without ANALYZE (as a burst of webhooks
does between two autovacuum runs) and counts the pages the claim reads to pick its rows."""

from __future__ import annotations

import json

import asyncpg
import pytest

from gateway.db import store

GROWN = 20_000
FEW_PAGES = 100  # the index and heap pages of the rows taken; a sort of the backlog reads thousands


async def pages_picking(conn: asyncpg.Connection, name: str, arguments: str) -> int:
    """Shared pages the prepared statement `name`, executed with `arguments`, read in its CTEs:
    picking the rows, not writing them."""
    plan = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {name}({arguments})")
    plan = json.loads(plan) if isinstance(plan, str) else plan  # the pool's codec may have decoded it
    ctes = [n for n in plan[0]["Plan"].get("Plans", []) if n.get("Subplan Name", "").startswith("CTE ")]
    assert ctes
    return sum(n["Shared Hit Blocks"] + n["Shared Read Blocks"] for n in ctes)


async def add_events(conn: asyncpg.Connection, prefix: str, status: str, count: int, *, older_by: int = 0) -> None:
    """`count` events in `status`, due `older_by` + 1 to `older_by` + `count` seconds ago."""
    await conn.execute(
        "INSERT INTO webhook_events (processor_id, event_id, event_type, headers, body, event, match_keys, "
        "status, next_attempt_at) SELECT 'stripe', $1 || n, 'charge.succeeded', '{}', '', '{}', '{}', $2, "
        "now() - make_interval(secs => $3 + n) FROM generate_series(1, $4) AS n", prefix, status, older_by, count)


async def cache_generic_plan(conn: asyncpg.Connection, name: str, types: str, query: str, arguments: str) -> None:
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute(f"PREPARE {name}({types}) AS {query}")
    await conn.execute(f"EXPLAIN EXECUTE {name}({arguments})")  # the generic plan is made and kept


async def test_the_webhook_inbox_is_claimed_in_a_few_pages_however_long_its_backlog(pool):
    async with pool.acquire() as conn:
        await add_events(conn, "evt_done_", "applied", 5_000)
        await add_events(conn, "evt_small_", "received", 3)
        await conn.execute("ANALYZE webhook_events")
        await cache_generic_plan(conn, "claim", "int, float8", store.CLAIM_DUE_WEBHOOK_EVENTS, "1, 60")
        # A backlog: fresh events, and parked ones due for a sweep (older still, so due first by time).
        await add_events(conn, "evt_fresh_", "received", GROWN)
        await add_events(conn, "evt_parked_", "unmatched", GROWN, older_by=GROWN)
        measured = conn.transaction()
        await measured.start()
        assert await pages_picking(conn, "claim", "50, 60") < FEW_PAGES
        await measured.rollback()  # EXPLAIN ANALYZE claimed them: unclaimed again
        claimed = await conn.fetch("EXECUTE claim(50, 60)")
        assert len(claimed) == 50
        # Fresh events first: a backlog of parked ones never holds them up.
        assert all(r["event_id"].startswith("evt_fresh_") for r in claimed)


@pytest.mark.parametrize("fresh", [0, 20])
async def test_parked_events_fill_what_fresh_ones_leave_of_a_claim(pool, fresh):
    async with pool.acquire() as conn:
        await add_events(conn, "evt_fresh_", "received", fresh)
        await add_events(conn, "evt_parked_", "unmatched", 100)
        claimed = await store.claim_due_webhook_events(conn, 50, 60)
    assert sorted(r["event_id"].split("_")[1] for r in claimed) == ["fresh"] * fresh + ["parked"] * (50 - fresh)
