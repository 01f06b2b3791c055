"""The finance export over HTTP and from the command: every refund settled in the period, as CSV a
spreadsheet opens as is and as JSON lines, streamed in bounded memory."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
import tracemalloc
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from aiohttp import web

from gateway import keys
from gateway.finance_export import COLUMNS
from tests.conftest import ADMIN_KEY, WRITER_KEY, Api, make_settings, start_api

FORMULA_NOTE = '=HYPERLINK("http://evil.example","x")'


@pytest.fixture
async def api(database_url):
    client = await start_api(make_settings(database_url, durable_retry_initial_seconds=30,
                                           durable_retry_max_seconds=60,
                                           processors=[{"id": "mock", "kind": "mock", "pending_settle_seconds": 60}]))
    try:
        yield Api(client)
    finally:
        await client.close()


def _period() -> dict[str, str]:
    now = datetime.now(timezone.utc)
    return {"from": (now - timedelta(hours=1)).isoformat(), "to": (now + timedelta(hours=1)).isoformat()}


async def _settled_and_not(api: Api) -> tuple[dict[str, dict], set[str]]:
    """Refunds in every status; returns the settled ones (by id) and the ids of the others."""
    tx = await api.transaction(amount=100_000, currency="EUR", customer_id="cus_Ärger")
    settled = {}
    for amount, extra in ((1_050, {"credit_note_id": FORMULA_NOTE}), (4_001, {"credit_note_id": "Gutschrift-Ä"}),
                          (2_000, {"method": "offline", "external_reference": "SEPA-7"})):
        refund = await api.refund(tx, amount, **extra)
        settled[refund["id"]] = refund
    api.mock.fail_next(amount=3_333, times=1_000)
    waiting = await api.refund(tx, 3_333)
    canceled = await (await api.post(f"/v1/refunds/{waiting['id']}/cancel")).json()
    settled[canceled["id"]] = canceled
    pending = await api.refund(tx, 7_001)  # pending at the processor: not settled
    outside = await api.refund(tx, 500)
    async with api.app[keys.POOL].acquire() as conn:  # settled last year
        await conn.execute("UPDATE refund_events SET created_at = created_at - interval '1 year' WHERE refund_id = $1",
                           outside["id"])
    return settled, {pending["id"], outside["id"]}


async def _settled_in_bulk(api: Api, prefix: str, count: int) -> None:
    """`count` refunds succeeded now on one payment, written straight to the database (ids `prefix`1...)."""
    tx = await api.transaction(amount=10**9)
    async with api.app[keys.POOL].acquire() as conn:
        await conn.execute("""
            WITH r AS (
                INSERT INTO refunds (id, transaction_id, processor_id, invoice_id, amount, currency, status, stage,
                                     idempotency_key)
                SELECT $3 || n, $1, 'mock', $2, 100 + n, 'EUR', 'succeeded', 'done', $3 || n
                FROM generate_series(1, $4::int) AS n RETURNING id)
            INSERT INTO refund_events (refund_id, event, from_status, to_status, from_stage, to_stage, detail)
            SELECT id, 'processor_answer', 'pending', 'succeeded', 'sending', 'done', '{}' FROM r""",
                           tx["id"], tx["invoice_id"], prefix, count)


async def test_the_csv_holds_exactly_the_periods_settled_refunds_and_opens_as_is(api):
    settled, others = await _settled_and_not(api)
    resp = await api.get("/admin/exports/refunds", key=ADMIN_KEY, params={**_period(), "format": "csv"})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in resp.headers["Content-Disposition"]
    raw = await resp.read()
    assert raw.startswith("\ufeff".encode()) and b"\r\n" in raw
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert tuple(rows[0]) == COLUMNS
    by_id = {r["refund_id"]: r for r in rows}
    assert set(by_id) == set(settled) and not set(by_id) & others
    first = next(r for r in rows if r["amount"] == "1050")
    assert (first["status"], first["amount_decimal"], first["currency"], first["method"]) == (
        "succeeded", "10.50", "EUR", "processor")
    assert first["credit_note_id"] == "'" + FORMULA_NOTE  # never run as a formula
    declined = next(r for r in rows if r["amount"] == "4001")
    assert (declined["status"], declined["failure_code"], declined["credit_note_id"]) == (
        "failed", "expired_or_canceled_card", "Gutschrift-Ä")
    offline = next(r for r in rows if r["method"] == "offline")
    assert (offline["status"], offline["external_reference"]) == ("refunded_offline", "SEPA-7")
    assert {r["customer_id"] for r in rows} == {"cus_Ärger"}
    assert all(r["settled_at"].endswith("Z") for r in rows)


async def test_json_lines_hold_the_same_refunds(api):
    settled, _ = await _settled_and_not(api)
    resp = await api.get("/admin/exports/refunds", key=ADMIN_KEY, params={**_period(), "format": "jsonl"})
    lines = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    assert {line["refund_id"] for line in lines} == set(settled)
    assert all(isinstance(line["amount"], int) and tuple(line) == COLUMNS for line in lines)


@pytest.mark.parametrize(("params", "field"), [
    ({"to": "2026-01-01"}, "from"), ({"from": "2026-02-01", "to": "2026-01-01"}, "to"),
    ({"from": "2026-01-01", "to": "2026-01-01"}, "to"), ({"from": "2024-01-01", "to": "2026-01-01"}, "to"),
    ({"from": "2025-01-01", "to": "2026-01-02T23:00:00Z"}, "to"),  # 366 days and 23 hours
    ({"from": "2026-01-01", "to": "2026-02-01", "format": "xls"}, "format"),
    ({"from": "yesterday", "to": "2026-02-01"}, "from")])
async def test_a_bad_period_or_format_is_refused_naming_it(api, params, field):
    resp = await api.get("/admin/exports/refunds", key=ADMIN_KEY, params=params)
    problem = await resp.json()
    assert resp.status == 422 and problem["code"] == "validation_error", problem
    assert problem["errors"][0]["field"] == field


async def test_the_export_is_for_operators_only(api):
    assert (await api.get("/admin/exports/refunds", key=WRITER_KEY, params=_period())).status == 403


async def test_ten_thousand_refunds_stream_in_bounded_memory(api):
    await _settled_in_bulk(api, "rf_bulk_", 10_000)
    tracemalloc.start()
    try:
        resp = await api.get("/admin/exports/refunds", key=ADMIN_KEY, params=_period())
        rows = chunks = 0
        async for piece in resp.content.iter_any():
            chunks += 1
            rows += piece.count(b"\r\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == 10_001  # the header and every refund
    assert chunks > 5, chunks
    assert peak < 20 * 2**20, f"{peak / 2**20:.1f} MiB"


async def test_a_client_reading_slowly_holds_no_database_connection(api, monkeypatch):
    # The answer's first rows are held back, as a client that reads slowly holds them back. While
    # they are, no session may sit in the export's read: the rows are all read, and the connection
    # given back, before the first byte of them is sent.
    await _settled_in_bulk(api, "rf_slow_", 1_200)
    sending, release = asyncio.Event(), asyncio.Event()
    write = web.StreamResponse.write

    async def slow_write(self, data):
        if b"rf_slow_" in data and not release.is_set():
            sending.set()
            await release.wait()
        return await write(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", slow_write)
    download = asyncio.ensure_future(api.get("/admin/exports/refunds", key=ADMIN_KEY, params=_period()))
    try:
        await asyncio.wait_for(sending.wait(), 30)
        async with api.app[keys.POOL].acquire() as conn:
            reading = await conn.fetch("""
                SELECT state, query FROM pg_stat_activity
                WHERE datname = current_database() AND pid <> pg_backend_pid()
                  AND query LIKE '%AS settled_at FROM refund_events%' AND state <> 'idle'""")
        assert reading == [], "a session stays in the export while its answer waits for the client"
    finally:
        release.set()
    resp = await download
    assert resp.status == 200
    assert (await resp.read()).count(b"rf_slow_") == 1200


async def test_the_command_writes_the_export_to_a_file(api, database_url, tmp_path):
    settled, _ = await _settled_and_not(api)
    config = tmp_path / "gateway.toml"
    config.write_text('[[processors]]\nid = "mock"\nkind = "mock"\n')
    out = tmp_path / "refunds.csv"
    period = _period()
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", "refunds", "export", "--from", period["from"], "--to",
                         period["to"], "--output", str(out)], capture_output=True, text=True, timeout=60,
        env={**os.environ, "GATEWAY_CONFIG": str(config), "GATEWAY_DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"), newline="")))
    # The same as the API gives.
    resp = await api.get("/admin/exports/refunds", key=ADMIN_KEY, params={**period, "format": "jsonl"})
    served = {orjson.loads(line)["refund_id"] for line in (await resp.read()).splitlines()}
    assert {r["refund_id"] for r in rows} == served == set(settled)
    assert f"{len(rows)} refunds settled" in done.stderr
