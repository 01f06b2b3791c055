"""The finance export: every refund settled in a period, one row each, as CSV a spreadsheet opens as
is, or as JSON lines, read from a cursor and handed out in batches to whoever writes them (an HTTP
answer's temporary file, the command's output), so that a month of refunds takes constant memory."""

from __future__ import annotations

import csv
import io
import tempfile
from datetime import datetime
from typing import IO, Any, Awaitable, Callable, Iterable, Literal, Mapping

import asyncpg
import orjson

from gateway.db import store
from gateway.domain import money

Format = Literal["csv", "jsonl"]
COLUMNS = ("refund_id", "settled_at", "status", "method", "amount", "currency", "amount_decimal", "transaction_id",
           "processor", "psp_reference", "psp_refund_id", "invoice_id", "credit_note_id", "customer_id",
           "external_reference", "failure_code", "next_action", "created_at", "reversed_at")
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
BOM = "\ufeff"  # so that a spreadsheet reads the CSV as UTF-8
_FORMULA = ("=", "+", "-", "@", "\t", "\r")  # a cell starting so is run as a formula by a spreadsheet
_METHOD = {"offline": "offline", "external": "external"}
BATCH = 500  # rows read from the cursor, and written, at a time
SPOOL_IN_MEMORY = 4 * 2**20  # a spooled export larger than this goes to a temporary file


def _when(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One settled refund as exported: amounts in minor units and as a decimal, times in UTC."""
    return {"refund_id": record["refund_id"], "settled_at": _when(record["settled_at"]), "status": record["status"],
            "method": _METHOD.get(record["origin"], "processor"), "amount": record["amount"],
            "currency": record["currency"], "amount_decimal": money.decimal_amount(record["amount"], record["currency"]),
            "transaction_id": record["transaction_id"], "processor": record["processor"],
            "psp_reference": record["psp_reference"], "psp_refund_id": record["psp_refund_id"],
            "invoice_id": record["invoice_id"], "credit_note_id": record["credit_note_id"],
            "customer_id": record["customer_id"], "external_reference": record["external_reference"],
            "failure_code": record["failure_code"], "next_action": record["next_action"],
            "created_at": _when(record["created_at"]), "reversed_at": _when(record["reversed_at"])}


def _cell(value: Any) -> Any:
    """Ids and references come from outside: text a spreadsheet would run as a formula is quoted."""
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    return "" if value is None else value


def header(fmt: Format) -> bytes:
    if fmt == "jsonl":
        return b""
    out = io.StringIO()
    csv.writer(out).writerow(COLUMNS)
    return (BOM + out.getvalue()).encode()


def chunk(rows: Iterable[Mapping[str, Any]], fmt: Format) -> bytes:
    """A batch of exported rows, encoded (CSV lines end in CRLF, as the csv module writes them)."""
    if fmt == "jsonl":
        return b"".join(orjson.dumps(r) + b"\n" for r in rows)
    out = io.StringIO()
    writer = csv.writer(out)
    for r in rows:
        writer.writerow([_cell(r[c]) for c in COLUMNS])
    return out.getvalue().encode()


async def stream(conn: asyncpg.Connection, since: datetime, until: datetime, fmt: Format,
                 write: Callable[[bytes], Awaitable[None]]) -> int:
    """Write the period's export through `write`, batch by batch, from one consistent snapshot of
    the database; returns how many refunds it held."""
    count = 0
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await write(header(fmt))
        batch = []
        async for record in store.export_cursor(conn, since, until, prefetch=BATCH):
            batch.append(row(record))
            if len(batch) >= BATCH:
                await write(chunk(batch, fmt))
                count, batch = count + len(batch), []
        await write(chunk(batch, fmt))
    return count + len(batch)


async def write_to(pool: asyncpg.Pool, since: datetime, until: datetime, fmt: Format, out: IO[bytes]) -> int:
    """Write the period's export into a file; returns how many refunds it held."""
    async def write(data: bytes) -> None:
        out.write(data)
    async with pool.acquire() as conn:
        return await stream(conn, since, until, fmt, write)


async def spooled(pool: asyncpg.Pool, since: datetime, until: datetime, fmt: Format) -> IO[bytes]:
    """The period's export in a temporary file (in memory up to SPOOL_IN_MEMORY), read back from its
    start. The database connection is given back once the file is written: a client that reads
    the answer slowly holds no connection, and no transaction stays open while it reads."""
    out = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    try:
        await write_to(pool, since, until, fmt, out)
        out.seek(0)
    except BaseException:
        out.close()
        raise
    return out
