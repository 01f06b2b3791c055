"""All SQL the service runs, as constants with $n parameters, in functions that take a connection."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

import asyncpg

Row = asyncpg.Record

# --- transactions -----------------------------------------------------------------------------

# The transaction and its own reference (services claimed it already, before they got here).
INSERT_TRANSACTION = """
WITH t AS (
    INSERT INTO transactions (id, processor_id, psp_reference, invoice_id, customer_id, amount, currency,
                              captured_at, settled_at, metadata)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    RETURNING *
), ref AS (
    INSERT INTO transaction_references (processor_id, reference, transaction_id)
    SELECT processor_id, psp_reference, id FROM t
    ON CONFLICT (processor_id, reference) DO NOTHING
)
SELECT * FROM t"""

MOVE_REFERENCES = """
UPDATE transaction_references SET transaction_id = $4
WHERE processor_id = $1 AND reference = ANY($2::text[]) AND transaction_id = $3"""
# One lock per id of a payment, held until the transaction ends: a registration of the payment
# and a webhook that finds it unknown take them, so the webhook either sees the registration or
# is parked before the registration wakes parked events. In the order of the lock keys, for everyone.
LOCK_PAYMENT_REFERENCES = """
SELECT pg_advisory_xact_lock(k) FROM (
    SELECT DISTINCT hashtextextended($1 || ':' || reference, 0) AS k FROM unnest($2::text[]) AS reference
    ORDER BY k
) AS keys"""
# Every id of one payment, claimed for a transaction about to be written. In one order for
# everyone: two registrations of one payment under different ids wait for each other (the
# second then finds the first's transaction) instead of deadlocking.
# The payment's locks (LOCK_PAYMENT_REFERENCES) are taken first, as a one-time filter before any
# row, then the claims. Which ids are claimed is decided by the unique index, not by this
# statement's snapshot: a registration that committed one of them while the locks were awaited is
# seen, and that id is not claimed.
LOCK_AND_CLAIM_REFERENCES = """
INSERT INTO transaction_references (processor_id, reference, transaction_id)
SELECT $1, reference, $3 FROM unnest($2::text[]) AS reference
WHERE (SELECT count(*) FROM (""" + LOCK_PAYMENT_REFERENCES + """) AS locked) >= 0
ORDER BY reference
ON CONFLICT (processor_id, reference) DO NOTHING
RETURNING reference"""

GET_TRANSACTION = "SELECT * FROM transactions WHERE id = $1"
LOCK_TRANSACTION = "SELECT * FROM transactions WHERE id = $1 FOR UPDATE"
# The payment a refund is made on, with whether a dispute is open on it and its row version (`xmin`:
# a refund is written only while the payment is as it was read, see INSERT_REFUND); locked or not.
TRANSACTION_FOR_REFUND = """
SELECT t.*, t.xmin AS row_version,
       EXISTS (SELECT 1 FROM disputes d WHERE d.transaction_id = t.id AND d.status = 'open') AS disputed
FROM transactions t WHERE t.id = $1"""
LOCK_TRANSACTION_FOR_REFUND = TRANSACTION_FOR_REFUND + " FOR UPDATE OF t"
TRANSACTIONS_BY_INVOICE = "SELECT * FROM transactions WHERE invoice_id = $1 ORDER BY id"
TRANSACTIONS_BY_REFERENCE = """
SELECT t.* FROM transaction_references r JOIN transactions t ON t.id = r.transaction_id
WHERE r.reference = $1 ORDER BY t.id"""

MOVE_BALANCE = """
UPDATE transactions
SET reserved_amount = reserved_amount + $2, refunded_amount = refunded_amount + $3, updated_at = now()
WHERE id = $1"""


async def insert_transaction(conn, *, id: str, processor_id: str, psp_reference: str, invoice_id: str,
                             customer_id: str | None, amount: int, currency: str, captured_at: datetime | None,
                             settled_at: datetime | None, metadata: dict[str, str]) -> Row:
    return await conn.fetchrow(INSERT_TRANSACTION, id, processor_id, psp_reference, invoice_id, customer_id, amount,
                               currency, captured_at, settled_at, metadata)


async def move_references(conn, processor_id: str, references: Sequence[str], from_id: str, to_id: str) -> None:
    await conn.execute(MOVE_REFERENCES, processor_id, list(references), from_id, to_id)


async def lock_and_claim_references(conn, processor_id: str, references: Sequence[str],
                                    transaction_id: str) -> list[str]:
    """Take the payment's locks (as lock_payment_references does), then claim its ids for
    `transaction_id`, in one round trip; returns the ids claimed here."""
    return [r["reference"] for r in await conn.fetch(LOCK_AND_CLAIM_REFERENCES, processor_id, list(references),
                                                     transaction_id)]


async def lock_payment_references(conn, processor_id: str, references: Sequence[str]) -> None:
    """Waits for whoever holds a lock on one of these ids (a registration not committed yet)."""
    await conn.execute(LOCK_PAYMENT_REFERENCES, processor_id, list(references))


async def get_transaction(conn, transaction_id: str) -> Row | None:
    return await conn.fetchrow(GET_TRANSACTION, transaction_id)


async def lock_transaction(conn, transaction_id: str) -> Row | None:
    return await conn.fetchrow(LOCK_TRANSACTION, transaction_id)


async def transaction_for_refund(conn, transaction_id: str, *, lock: bool) -> Row | None:
    """The payment, with `disputed` (whether a dispute is open on it) and `row_version`; `lock`:
    locked to the end of the caller's transaction."""
    return await conn.fetchrow(LOCK_TRANSACTION_FOR_REFUND if lock else TRANSACTION_FOR_REFUND, transaction_id)


async def transactions_by_invoice(conn, invoice_id: str) -> list[Row]:
    return await conn.fetch(TRANSACTIONS_BY_INVOICE, invoice_id)


async def transactions_by_reference(conn, psp_reference: str) -> list[Row]:
    return await conn.fetch(TRANSACTIONS_BY_REFERENCE, psp_reference)


async def move_balance(conn, transaction_id: str, reserved: int, refunded: int) -> None:
    if reserved or refunded:
        await conn.execute(MOVE_BALANCE, transaction_id, reserved, refunded)


# --- refunds ----------------------------------------------------------------------------------

# What a callback keeps of a refund's row: the columns the billing core is shown (RefundOut.from_row)
# and those compared with the next state (ledger._no_news). Not the lease, the internal key or the
# schedule: they are nobody's business outside, and every byte here is written twice (the row and
# the WAL) for each state of each refund.
REFUND_SNAPSHOT_COLUMNS = (
    "id", "status", "stage", "amount", "currency", "transaction_id", "processor_id", "invoice_id", "credit_note_id",
    "reason", "psp_refund_id", "failure_code", "failure_message", "attempts", "metadata", "created_at", "updated_at",
    "reversed_at", "duplicate_psp_refund_ids", "origin", "external_reference", "previous_refund_id", "next_action")

# The callback for a refund's new state, written by the statement that writes the state: the refund
# as it now is (`u`, a snapshot rendered for the billing core when read: callbacks.event_body), its
# version and the event's type ($T; NULL: none here, ledger.publish writes it after, with the credit
# note's state). `$P` is the status it came from.
_OUTBOX_CTE = """, outbox AS (
    INSERT INTO outbox_events (refund_id, version, type, payload, request_id)
    SELECT u.id, u.version, $T::text, jsonb_build_object(
        'type', $T::text, 'refund_id', u.id, 'version', u.version, 'previous_status', $P::text,
        'refund', jsonb_build_object(""" + ", ".join(f"'{c}', u.{c}" for c in REFUND_SNAPSHOT_COLUMNS) + """),
        'credit_note', NULL), $R::text
    FROM u WHERE $T::text IS NOT NULL
    ON CONFLICT (refund_id, version) DO NOTHING
)"""


def _outbox(type_param: int, previous_param: str, request_param: int) -> str:
    return (_OUTBOX_CTE.replace("$T", f"${type_param}").replace("$P", previous_param)
            .replace("$R", f"${request_param}"))


# The refund, its amount on the payment (reserved while it runs, refunded for one recorded as
# refunded outside the processor), its first event, its callback ($20, see _OUTBOX_CTE) and the
# Idempotency-Key that asked for it ($21, $22: the client and the key), in one statement; written
# only while the payment's row is the version the checks read ($23, its xmin: any change to the
# row, a balance move, a settlement, a void or a dispute, makes a new one), no dispute is open on
# it ($24: an offline refund is a record, not held by one) and the key points at nothing yet (it is
# locked before the payment, as everywhere). Otherwise nothing is written and no row returned.
INSERT_REFUND = """
WITH k AS (
    SELECT 1 FROM idempotency_keys WHERE client_id = $21::text AND key = $22::text AND resource_id IS NULL
    FOR UPDATE
), balance AS (
    UPDATE transactions t
    SET reserved_amount = reserved_amount + CASE WHEN $10 = 'pending' THEN $6 ELSE 0 END,
        refunded_amount = refunded_amount + CASE WHEN $10 = 'refunded_offline' THEN $6 ELSE 0 END,
        updated_at = now()
    WHERE t.id = $2 AND t.xmin = $23::xid AND ($21::text IS NULL OR EXISTS (SELECT 1 FROM k))
      AND ($24::bool OR NOT EXISTS (SELECT 1 FROM disputes d WHERE d.transaction_id = t.id AND d.status = 'open'))
    RETURNING t.id
), u AS (
    INSERT INTO refunds (id, transaction_id, processor_id, invoice_id, credit_note_id, amount, currency, reason,
                         metadata, status, stage, idempotency_key, lease_expires_at, origin, external_reference,
                         previous_refund_id, requested_by)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
           CASE WHEN $11 = 'sending' THEN now() + make_interval(secs => $13) END, $16, $17, $18, $19
    FROM balance
    RETURNING *
), event AS (
    INSERT INTO refund_events (refund_id, event, from_status, to_status, from_stage, to_stage, detail, request_id)
    SELECT u.id, 'created', NULL, $10, NULL, $11, $14, $15 FROM u
), idempotency AS (
    UPDATE idempotency_keys SET resource_id = u.id FROM u WHERE client_id = $21::text AND key = $22::text
)""" + _outbox(20, "NULL", 15) + """
SELECT * FROM u"""

GET_REFUND = "SELECT * FROM refunds WHERE id = $1"
LOCK_REFUND = "SELECT * FROM refunds WHERE id = $1 FOR UPDATE"
# Several refunds, locked in the order of their ids (the rows are locked as the sort hands them on).
LOCK_REFUNDS = "SELECT id FROM refunds WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"
LOCK_REFUND_AT_ONCE = "SELECT id FROM refunds WHERE id = $1 FOR UPDATE NOWAIT"
# The refund and its payment, both locked (the refund's row first), with `payment_room`: how much
# more the payment can have refunded (its amount less what is refunded and charged back).
LOCK_REFUND_AND_PAYMENT = """
SELECT r.*, t.amount - t.refunded_amount - t.charged_back_amount AS payment_room
FROM refunds r JOIN transactions t ON t.id = r.transaction_id WHERE r.id = $1 FOR UPDATE"""
REFUND_BY_PSP_ID = "SELECT * FROM refunds WHERE processor_id = $1 AND psp_refund_id = $2"
# The payment known by any of these ids; the first id that names one wins.
TRANSACTION_BY_ANY_REFERENCE = """
SELECT t.* FROM unnest($2::text[]) WITH ORDINALITY AS given (reference, n)
JOIN transaction_references r ON r.processor_id = $1 AND r.reference = given.reference
JOIN transactions t ON t.id = r.transaction_id
ORDER BY given.n"""

INSERT_EXTERNAL_REFUND = """
INSERT INTO refunds (id, transaction_id, processor_id, invoice_id, amount, currency, status, stage,
                     idempotency_key, psp_refund_id, failure_code, failure_message, origin, processor_snapshot_at,
                     next_action)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'external:' || $3 || ':' || $9, $9, $10, $11, 'external', $12, $13)
RETURNING *"""
# A credit note's refunds, oldest first; the lock serialises the commands for one credit note (its
# retries, its refunds over several payments), taken before any payment's row lock.
CREDIT_NOTE_REFUNDS = """
SELECT * FROM refunds WHERE invoice_id = $1 AND credit_note_id = $2 ORDER BY created_at, id"""
CREDIT_NOTE_INVOICES = """
SELECT DISTINCT invoice_id FROM refunds WHERE credit_note_id = $1 ORDER BY invoice_id LIMIT 2"""
LOCK_CREDIT_NOTE = "SELECT pg_advisory_xact_lock(hashtextextended('credit_note:' || $1 || ':' || $2, 0))"
# Whether a later refund follows this one (a retry of a failed one).
REFUND_FOLLOWED = "SELECT EXISTS (SELECT 1 FROM refunds WHERE previous_refund_id = $1)"
# An invoice's payments, each locked, in one order for everyone.
LOCK_INVOICE_TRANSACTIONS = """
SELECT t.*, t.xmin AS row_version,
       EXISTS (SELECT 1 FROM disputes d WHERE d.transaction_id = t.id AND d.status = 'open') AS disputed
FROM transactions t WHERE t.invoice_id = $1 ORDER BY t.id FOR UPDATE OF t"""
# A sale voided while unsettled (BridgePay allows one void per sale): the void says it was not settled.
TOUCH_TRANSACTION = "UPDATE transactions SET updated_at = now() WHERE id = $1"
MARK_VOIDED = "UPDATE transactions SET voided_at = now(), settled_at = NULL, updated_at = now() WHERE id = $1"
MARK_SETTLED = "UPDATE transactions SET settled_at = now(), updated_at = now() WHERE id = $1 RETURNING *"

# Compare-and-set: the update only lands if nobody moved the refund since we read it. The same
# statement moves the transaction's balance and, when an event name is given, records the event.
# A refund's move: its columns ($4..$13, $19..$25)...
_REFUND_STATE_SET = """
    SET status = $4, stage = $5,
        psp_refund_id = coalesce($6, psp_refund_id),
        failure_code = $7, failure_message = $8,
        attempts = attempts + $9,
        version = version + $11,
        -- The processor's time of the newest webhook snapshot applied ($19; NULL: not a webhook).
        processor_snapshot_at = greatest(processor_snapshot_at, $19::timestamptz),
        reversed_at = CASE WHEN $20::bool THEN now() ELSE reversed_at END,
        lease_expires_at = CASE WHEN $5 = 'sending' THEN now() + make_interval(secs => $13) END,
        -- A move into `sending` is a new claim: the next fencing token. Taking over a `sending`
        -- refund (its lease expired) means its last call may have been sent until that expiry.
        lease_token = lease_token + CASE WHEN $5 = 'sending' THEN 1 ELSE 0 END,
        last_sent_at = CASE WHEN $3 = 'sending' AND $5 = 'sending'
                            THEN greatest(last_sent_at, lease_expires_at, $21::timestamptz)
                            ELSE greatest(last_sent_at, $21::timestamptz) END,
        verify_at = coalesce($22::timestamptz, verify_at),
        duplicate_psp_refund_ids = coalesce($23::text[], duplicate_psp_refund_ids),
        next_action = $24, external_reference = coalesce($25, external_reference),
        -- A refund pending at its processor is re-checked less often as it ages (a tenth of its
        -- age, at least $10 seconds, at most an hour): card refunds can stay pending for days.
        -- A refund waiting for a retry is due after its backoff ($12).
        next_attempt_at = CASE
            WHEN $5 = 'pending_at_processor' THEN now() + make_interval(secs =>
                least(3600, greatest($10, extract(epoch FROM now() - created_at)::float8 / 10)))
            WHEN $12::float8 IS NOT NULL THEN now() + make_interval(secs => $12::float8)
        END,
        updated_at = now()
"""
# ...and what goes with it: the event row ($16; NULL: none), the attempt rows ($27..$33) and the
# callback ($26, see _OUTBOX_CTE), all from the moved row `u`.
_RECORDED_WITH_IT = """, event AS (
    INSERT INTO refund_events (refund_id, event, from_status, to_status, from_stage, to_stage, detail, request_id)
    SELECT u.id, $16, $2, $4, $3, $5, $17, $18 FROM u WHERE $16::text IS NOT NULL
), attempt AS (
    INSERT INTO refund_attempts (refund_id, call, started_at, latency_ms, outcome, error_class, processor_code,
                                 message)
    SELECT u.id, a.call, a.started_at, a.latency_ms, a.outcome, a.error_class, a.processor_code, a.message
    FROM u, unnest($27::text[], $28::timestamptz[], $29::int[], $30::text[], $31::text[], $32::text[], $33::text[])
            WITH ORDINALITY AS a (call, started_at, latency_ms, outcome, error_class, processor_code, message, n)
    ORDER BY a.n  -- in the order the calls were made: their ids say so
)""" + _outbox(26, "$2", 18)
# Under the refund's lock (ledger.apply): the compare-and-set on its state, the balance move on its
# payment ($14 reserved, $15 refunded), and what goes with it.
UPDATE_REFUND_STATE = """
WITH u AS (
    UPDATE refunds""" + _REFUND_STATE_SET + """    WHERE id = $1 AND status = $2 AND stage = $3
    RETURNING *
), balance AS (
    UPDATE transactions t
    SET reserved_amount = reserved_amount + $14, refunded_amount = refunded_amount + $15, updated_at = now()
    FROM u WHERE t.id = u.transaction_id AND ($14 <> 0 OR $15 <> 0)
)""" + _RECORDED_WITH_IT + """
SELECT * FROM u"""
# With no lock held before (ledger.record_unlocked): the same move, made only while the refund is
# the version the caller knows ($34) under the caller's claim ($35), and only if its payment ($36)
# has room for what it makes refunded (the over-refund guard); the refund's row is locked first,
# then the payment's, as everywhere. No row: nothing was written.
RECORD_IF_UNCHANGED = """
WITH known AS (
    SELECT id FROM refunds
    WHERE id = $1 AND status = $2 AND stage = $3 AND version = $34 AND lease_token = $35
    FOR UPDATE
), balance AS (
    UPDATE transactions t
    SET reserved_amount = reserved_amount + $14, refunded_amount = refunded_amount + $15, updated_at = now()
    FROM known WHERE t.id = $36 AND ($15 <= 0 OR t.amount - t.refunded_amount - t.charged_back_amount >= $15)
    RETURNING t.id
), u AS (
    UPDATE refunds""" + _REFUND_STATE_SET + """    FROM balance WHERE refunds.id = $1
    RETURNING refunds.*
)""" + _RECORDED_WITH_IT + """
SELECT * FROM u"""

# Refunds whose processor call must be made again or resolved: a retry that is due, an unknown
# outcome that is due, or a call whose lease expired (the process died in the middle of it).
# The claim leases them, so that any number of workers can share the work.
CLAIM_RECOVERY = """
WITH due AS (
    SELECT id, stage FROM refunds
    WHERE status = 'pending' AND (
        (stage IN ('not_sent', 'outcome_unknown') AND next_attempt_at <= now())
        OR (stage = 'sending' AND lease_expires_at < now()))
    ORDER BY coalesce(next_attempt_at, lease_expires_at)
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE refunds r SET stage = 'sending', lease_expires_at = now() + make_interval(secs => $2), updated_at = now(),
    lease_token = r.lease_token + 1,
    -- An expired lease: its holder's last call may have been sent until the lease ran out.
    last_sent_at = CASE WHEN r.stage = 'sending' THEN greatest(r.last_sent_at, r.lease_expires_at)
                        ELSE r.last_sent_at END
FROM due WHERE r.id = due.id
RETURNING r.*, due.stage AS prior_stage"""

# Resent refunds at processors without idempotency keys whose look-up for a second execution is
# due; the claim pushes the next look-up out (a lease), so that workers never check one at once.
CLAIM_DUE_VERIFY = """
WITH due AS (
    SELECT id FROM refunds WHERE verify_at <= now()
    ORDER BY verify_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE refunds r SET verify_at = now() + make_interval(secs => $2)
FROM due WHERE r.id = due.id
RETURNING r.*"""
CLEAR_VERIFY = "UPDATE refunds SET verify_at = NULL WHERE id = $1"

INSERT_EVENT = """
INSERT INTO refund_events (refund_id, event, from_status, to_status, from_stage, to_stage, detail, request_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"""

INSERT_ATTEMPTS = """
INSERT INTO refund_attempts (refund_id, call, started_at, latency_ms, outcome, error_class, processor_code, message)
SELECT $1, * FROM unnest($2::text[], $3::timestamptz[], $4::int[], $5::text[], $6::text[], $7::text[], $8::text[])"""
# Every processor call (refunds and look-ups) made for a refund since an operator last replayed
# it: what its durable retries spend. A replay starts a new budget (RESET_RETRY_BUDGET).
PROCESSOR_CALLS = """
SELECT count(*) FROM refund_attempts a JOIN refunds r ON r.id = a.refund_id
WHERE a.refund_id = $1 AND a.id > r.budget_after_attempt"""
RESET_RETRY_BUDGET = """
UPDATE refunds SET budget_after_attempt = coalesce((SELECT max(id) FROM refund_attempts WHERE refund_id = $1), 0)
WHERE id = $1"""
# Whether `$2` more refunded keeps the payment within its amount; locks it (after the refund, as
# every balance move does).
REFUND_FITS = """
SELECT refunded_amount + charged_back_amount + $2 <= amount FROM transactions WHERE id = $1 FOR UPDATE"""

# Refunds pending at their processor whose next check is due; the claim pushes the next check
# out (a lease), so that concurrent pollers never check the same refund at once.
CLAIM_DUE_PENDING = """
WITH due AS (
    SELECT id FROM refunds
    WHERE stage = 'pending_at_processor' AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE refunds r SET next_attempt_at = now() + make_interval(secs => $2)
FROM due WHERE r.id = due.id
RETURNING r.*"""


async def insert_refund(conn, *, id: str, transaction_id: str, processor_id: str, invoice_id: str,
                        credit_note_id: str | None, amount: int, currency: str, reason: str | None,
                        metadata: dict[str, str], status: str, stage: str, idempotency_key: str,
                        lease_seconds: float, request_id: str | None, event_detail: dict[str, Any],
                        origin: str = "gateway", external_reference: str | None = None,
                        previous_refund_id: str | None = None, requested_by: str | None = None,
                        callback: str | None = None, key: tuple[str, str] | None = None,
                        payment_version: int, disputes_hold: bool = True) -> Row | None:
    """The refund, or None if the payment is no longer the version read (`payment_version`), a
    dispute holds it (`disputes_hold`) or the key points elsewhere (see INSERT_REFUND).
    `callback`: the type of the event to write with it (None: written after); `key`: the (client,
    Idempotency-Key) that asked for it, which is pointed at it."""
    client_id, key_value = key or (None, None)
    return await conn.fetchrow(INSERT_REFUND, id, transaction_id, processor_id, invoice_id, credit_note_id, amount,
                               currency, reason, metadata, status, stage, idempotency_key, lease_seconds,
                               event_detail, request_id, origin, external_reference, previous_refund_id,
                               requested_by, callback, client_id, key_value, payment_version, not disputes_hold)


async def get_refund(conn, refund_id: str) -> Row | None:
    return await conn.fetchrow(GET_REFUND, refund_id)


async def lock_refund(conn, refund_id: str) -> Row | None:
    return await conn.fetchrow(LOCK_REFUND, refund_id)


async def lock_refunds(conn, refund_ids: Sequence[str]) -> None:
    await conn.execute(LOCK_REFUNDS, list(refund_ids))


async def lock_refund_at_once(conn, refund_id: str) -> None:
    """Lock the refund's row if it is free; asyncpg.LockNotAvailableError if another holds it."""
    await conn.execute(LOCK_REFUND_AT_ONCE, refund_id)


async def lock_refund_and_payment(conn, refund_id: str) -> Row | None:
    return await conn.fetchrow(LOCK_REFUND_AND_PAYMENT, refund_id)


# Calls made for a refund whose answer moved nothing (superseded, or fenced by a newer claim):
# still counted, and still sends that a processor without idempotency keys may carry out.
ADD_ATTEMPTS = """
UPDATE refunds SET attempts = attempts + $2, last_sent_at = greatest(last_sent_at, $3::timestamptz),
    verify_at = coalesce($4::timestamptz, verify_at)
WHERE id = $1 RETURNING *"""


async def add_attempts(conn, refund_id: str, calls: int, sent_at: datetime | None = None,
                       verify_at: datetime | None = None) -> Row:
    return await conn.fetchrow(ADD_ATTEMPTS, refund_id, calls, sent_at, verify_at)


# The event that last moved a refund into `status` ($2): an operator's settlement, say.
LAST_MOVED_BY = """
SELECT event FROM refund_events WHERE refund_id = $1 AND to_status = $2 AND from_status IS DISTINCT FROM $2
ORDER BY id DESC LIMIT 1"""


async def last_moved_by(conn, refund_id: str, status: str) -> str | None:
    return await conn.fetchval(LAST_MOVED_BY, refund_id, status)


async def refund_by_psp_id(conn, processor_id: str, psp_refund_id: str) -> Row | None:
    return await conn.fetchrow(REFUND_BY_PSP_ID, processor_id, psp_refund_id)


async def transactions_by_any_reference(conn, processor_id: str, references: Sequence[str]) -> list[Row]:
    """The transactions the ids name, in the order of the ids."""
    return await conn.fetch(TRANSACTION_BY_ANY_REFERENCE, processor_id, list(references))


async def insert_external_refund(conn, *, id: str, transaction_id: str, processor_id: str, invoice_id: str,
                                 amount: int, currency: str, status: str, stage: str, psp_refund_id: str,
                                 failure_code: str | None, failure_message: str | None,
                                 snapshot_at: datetime | None = None, next_action: str | None = None) -> Row:
    return await conn.fetchrow(INSERT_EXTERNAL_REFUND, id, transaction_id, processor_id, invoice_id, amount,
                               currency, status, stage, psp_refund_id, failure_code, failure_message, snapshot_at,
                               next_action)


async def credit_note_refunds(conn, invoice_id: str, credit_note_id: str) -> list[Row]:
    return await conn.fetch(CREDIT_NOTE_REFUNDS, invoice_id, credit_note_id)


async def credit_note_invoices(conn, credit_note_id: str) -> list[str]:
    """The invoices that have refunds for this credit note id (at most two: one, or too many)."""
    return [r["invoice_id"] for r in await conn.fetch(CREDIT_NOTE_INVOICES, credit_note_id)]


async def lock_credit_note(conn, invoice_id: str, credit_note_id: str) -> None:
    await conn.execute(LOCK_CREDIT_NOTE, invoice_id, credit_note_id)


async def refund_followed(conn, refund_id: str) -> bool:
    return await conn.fetchval(REFUND_FOLLOWED, refund_id)


# A client's refunds through a processor today (UTC), counted under a lock per client and day.
LOCK_CLIENT_DAY = "SELECT pg_advisory_xact_lock(hashtextextended('refunds_today:' || $1, 0))"
REFUNDS_TODAY = """
SELECT count(*) FROM refunds
WHERE requested_by = $1 AND origin = 'gateway' AND created_at >= date_trunc('day', now(), 'UTC')"""


async def lock_client_day(conn, client_id: str) -> None:
    await conn.execute(LOCK_CLIENT_DAY, client_id)


async def refunds_today(conn, client_id: str) -> int:
    return await conn.fetchval(REFUNDS_TODAY, client_id)


async def touch_transaction(conn, transaction_id: str) -> None:
    """A new version of the payment's row, for a change kept elsewhere (a dispute)."""
    await conn.execute(TOUCH_TRANSACTION, transaction_id)


async def lock_invoice_transactions(conn, invoice_id: str) -> list[Row]:
    return await conn.fetch(LOCK_INVOICE_TRANSACTIONS, invoice_id)


async def mark_voided(conn, transaction_id: str) -> None:
    await conn.execute(MARK_VOIDED, transaction_id)


async def mark_settled(conn, transaction_id: str) -> Row:
    return await conn.fetchrow(MARK_SETTLED, transaction_id)


def _state_args(refund_id: str, *, from_status: str, from_stage: str, status: str, stage: str,
                psp_refund_id: str | None, failure_code: str | None, failure_message: str | None, attempts: int,
                recheck_seconds: float, version_step: int, retry_in: float | None = None,
                lease_seconds: float = 0.0, reserved_delta: int = 0, refunded_delta: int = 0,
                event: str | None = None, request_id: str | None = None, event_detail: dict[str, Any] | None = None,
                snapshot_at: datetime | None = None, reversed: bool = False, sent_at: datetime | None = None,
                verify_at: datetime | None = None, duplicate_ids: Sequence[str] | None = None,
                next_action: str | None = None, external_reference: str | None = None, callback: str | None = None,
                calls: Sequence[Any] = ()) -> tuple:
    return (refund_id, from_status, from_stage, status, stage, psp_refund_id, failure_code, failure_message, attempts,
            recheck_seconds, version_step, retry_in, lease_seconds, reserved_delta, refunded_delta, event,
            event_detail or {}, request_id, snapshot_at, reversed, sent_at, verify_at,
            list(duplicate_ids) if duplicate_ids is not None else None, next_action, external_reference, callback,
            *_attempt_columns(calls))


async def update_refund_state(conn, refund_id: str, **state: Any) -> Row | None:
    """One statement: the compare-and-set, the balance move, the event row, the attempt rows of
    `calls` (execution.Attempt) and, with `callback` (its type), the callback (_OUTBOX_CTE)."""
    return await conn.fetchrow(UPDATE_REFUND_STATE, *_state_args(refund_id, **state))


async def record_if_unchanged(conn, refund_id: str, *, version: int, lease_token: int, transaction_id: str,
                              **state: Any) -> Row | None:
    """update_refund_state for a refund the caller holds unlocked (RECORD_IF_UNCHANGED): None when
    it is no longer that version under that claim, or its payment has no room for it."""
    return await conn.fetchrow(RECORD_IF_UNCHANGED, *_state_args(refund_id, **state), version, lease_token,
                               transaction_id)


async def claim_recovery(conn, limit: int, lease_seconds: float) -> list[Row]:
    return await conn.fetch(CLAIM_RECOVERY, limit, lease_seconds)


async def claim_due_verify(conn, limit: int, lease_seconds: float) -> list[Row]:
    return await conn.fetch(CLAIM_DUE_VERIFY, limit, lease_seconds)


async def clear_verify(conn, refund_id: str) -> None:
    await conn.execute(CLEAR_VERIFY, refund_id)


async def insert_event(conn, refund_id: str, event: str, *, from_status: str | None, to_status: str,
                       from_stage: str | None, to_stage: str, detail: dict[str, Any] | None = None,
                       request_id: str | None = None) -> None:
    await conn.execute(INSERT_EVENT, refund_id, event, from_status, to_status, from_stage, to_stage, detail or {},
                       request_id)


def _attempt_columns(attempts: Sequence[Any]) -> tuple[list, ...]:
    return ([a.call for a in attempts], [a.started_at for a in attempts], [a.latency_ms for a in attempts],
            [a.outcome for a in attempts], [a.error_class for a in attempts], [a.processor_code for a in attempts],
            [a.message for a in attempts])


async def insert_attempts(conn, refund_id: str, attempts: Sequence[Any]) -> None:
    if attempts:
        await conn.execute(INSERT_ATTEMPTS, refund_id, *_attempt_columns(attempts))


async def processor_calls(conn, refund_id: str) -> int:
    return await conn.fetchval(PROCESSOR_CALLS, refund_id)


async def reset_retry_budget(conn, refund_id: str) -> None:
    await conn.execute(RESET_RETRY_BUDGET, refund_id)


async def refund_fits(conn, transaction_id: str, refunded: int) -> bool:
    return await conn.fetchval(REFUND_FITS, transaction_id, refunded)


async def claim_due_pending(conn, limit: int, lease_seconds: float) -> list[Row]:
    return await conn.fetch(CLAIM_DUE_PENDING, limit, lease_seconds)


# --- idempotency keys -------------------------------------------------------------------------

CLAIM_KEY = """
INSERT INTO idempotency_keys (client_id, key, method, path, request_hash, locked_until)
VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
ON CONFLICT (client_id, key) DO NOTHING
RETURNING client_id"""

# A first request that died mid-way leaves its key locked; once the lock expires a retry takes over.
# One still in create_refund holds the key row (LOCK_KEY): the takeover waits for it and reads the
# refund it committed.
TAKE_OVER_KEY = """
UPDATE idempotency_keys SET locked_until = now() + make_interval(secs => $3)
WHERE client_id = $1 AND key = $2 AND status_code IS NULL AND locked_until < now()
RETURNING resource_id"""

GET_KEY = "SELECT * FROM idempotency_keys WHERE client_id = $1 AND key = $2"
# Taken first in create_refund, before any payment's row lock (so in one order by everyone).
LOCK_KEY = "SELECT resource_id FROM idempotency_keys WHERE client_id = $1 AND key = $2 FOR UPDATE"
# A stored answer is never replaced: after a takeover both holders answer (naming the same refund),
# and a replay, once given, must not change.
STORE_RESPONSE = """
UPDATE idempotency_keys SET status_code = $3, content_type = $4, response_body = $5
WHERE client_id = $1 AND key = $2 AND status_code IS NULL"""
# A key that names a committed refund is never deleted (a retry would make another): its lock
# ends instead, so that the retry takes it over at once and answers with that refund.
RELEASE_KEY = """
WITH released AS (
    DELETE FROM idempotency_keys
    WHERE client_id = $1 AND key = $2 AND status_code IS NULL AND resource_id IS NULL)
UPDATE idempotency_keys SET locked_until = now()
WHERE client_id = $1 AND key = $2 AND status_code IS NULL AND resource_id IS NOT NULL"""


async def claim_key(conn, client_id: str, key: str, method: str, path: str, request_hash: bytes,
                    lock_seconds: float) -> bool:
    return await conn.fetchval(CLAIM_KEY, client_id, key, method, path, request_hash, lock_seconds) is not None


async def take_over_key(conn, client_id: str, key: str, lock_seconds: float) -> tuple[bool, str | None]:
    row = await conn.fetchrow(TAKE_OVER_KEY, client_id, key, lock_seconds)
    return (row is not None, row["resource_id"] if row else None)


async def get_key(conn, client_id: str, key: str) -> Row | None:
    return await conn.fetchrow(GET_KEY, client_id, key)


async def lock_key(conn, client_id: str, key: str) -> Row | None:
    return await conn.fetchrow(LOCK_KEY, client_id, key)


async def store_response(conn, client_id: str, key: str, status: int, content_type: str, body: bytes) -> None:
    await conn.execute(STORE_RESPONSE, client_id, key, status, content_type, body)


async def release_key(conn, client_id: str, key: str) -> None:
    await conn.execute(RELEASE_KEY, client_id, key)


# --- webhook events ---------------------------------------------------------------------------

INSERT_WEBHOOK_EVENT = """
INSERT INTO webhook_events (processor_id, event_id, event_type, headers, body, event, match_keys)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (processor_id, event_id) DO NOTHING
RETURNING id"""

# A verified event whose body the adapter could not read: kept raw with no parsed event, failed with
# the reason. Its receipt was its first attempt; the inbox parses it again with the usual backoff.
INSERT_UNREADABLE_WEBHOOK_EVENT = """
INSERT INTO webhook_events (processor_id, event_id, event_type, headers, body, event, match_keys, status,
                            last_error, attempts, next_attempt_at)
VALUES ($1, $2, $3, $4, $5, NULL, '{}', 'failed', $6, 1, now() + interval '2 seconds')
ON CONFLICT (processor_id, event_id) DO NOTHING
RETURNING id"""
WEBHOOK_EVENT_BODY = "SELECT body FROM webhook_events WHERE id = $1"
# A stored body parsed at last: what the adapter made of it, as a readable event would have had.
SET_WEBHOOK_EVENT_PARSED = "UPDATE webhook_events SET event_type = $2, event = $3, match_keys = $4 WHERE id = $1"

# Events to (re)process, in due order; the claim pushes the next attempt out (a lease), so that
# concurrent workers never process one event at once. Parked (`unmatched`) events are swept too,
# with backoff (FINISH_WEBHOOK_EVENT), in case no registration woke them; after the others, so
# that a backlog of them never holds up a fresh event. Each part reads its own index in order and
# is read only as far as the limit needs: a claim reads about as many rows as it takes, however
# long the backlog.
CLAIM_DUE_WEBHOOK_EVENTS = """
WITH fresh AS (
    SELECT id FROM webhook_events WHERE status IN ('received', 'failed') AND next_attempt_at <= now()
    ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED
), parked AS (
    SELECT id FROM webhook_events WHERE status = 'unmatched' AND next_attempt_at <= now()
    ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED
), due AS (
    (SELECT id FROM fresh) UNION ALL (SELECT id FROM parked) LIMIT $1
)
UPDATE webhook_events w SET next_attempt_at = now() + make_interval(secs => $2), attempts = w.attempts + 1
FROM due WHERE w.id = due.id
RETURNING w.id, w.processor_id, w.event_id, w.event, w.attempts"""

# Returns how long the event waited, from being stored to now (seconds, by the database's clock).
# A parked event is looked at again after a backoff (2 s, doubling, at most an hour), for ever:
# its registration's wake-up is the quick path, this the net under it.
FINISH_WEBHOOK_EVENT = """
UPDATE webhook_events SET status = $2, last_error = $3, processed_at = now(),
    next_attempt_at = CASE WHEN $2 = 'unmatched'
                           THEN now() + make_interval(secs => least(3600, 2 ^ least(attempts, 12)))
                           ELSE next_attempt_at END
WHERE id = $1
RETURNING extract(epoch FROM processed_at - received_at)::float8"""

# A failed event is retried with exponential backoff, capped at an hour.
FAIL_WEBHOOK_EVENT = """
UPDATE webhook_events
SET status = 'failed', last_error = $2,
    next_attempt_at = now() + make_interval(secs => least(3600, 2 ^ least(attempts, 12)))
WHERE id = $1"""

# Parked events that name a payment or refund that has just appeared: process them again.
WAKE_UNMATCHED = """
UPDATE webhook_events SET status = 'received', next_attempt_at = now()
WHERE status = 'unmatched' AND processor_id = $1 AND match_keys && $2::text[]"""


async def insert_webhook_event(conn, *, processor_id: str, event_id: str, event_type: str, headers: dict[str, str],
                               body: bytes, event: dict[str, Any], match_keys: list[str]) -> int | None:
    return await conn.fetchval(INSERT_WEBHOOK_EVENT, processor_id, event_id, event_type, headers, body, event,
                               match_keys)


async def insert_unreadable_webhook_event(conn, *, processor_id: str, event_id: str, event_type: str,
                                         headers: dict[str, str], body: bytes, error: str) -> int | None:
    return await conn.fetchval(INSERT_UNREADABLE_WEBHOOK_EVENT, processor_id, event_id, event_type, headers, body,
                               error)


async def webhook_event_body(conn, event_row_id: int) -> bytes:
    return await conn.fetchval(WEBHOOK_EVENT_BODY, event_row_id)


async def set_webhook_event_parsed(conn, event_row_id: int, event_type: str, event: dict[str, Any],
                                   match_keys: list[str]) -> None:
    await conn.execute(SET_WEBHOOK_EVENT_PARSED, event_row_id, event_type, event, match_keys)


async def claim_due_webhook_events(conn, limit: int, lease_seconds: float) -> list[Row]:
    return await conn.fetch(CLAIM_DUE_WEBHOOK_EVENTS, limit, lease_seconds)


async def finish_webhook_event(conn, event_row_id: int, status: str, note: str | None = None) -> float | None:
    """Returns the seconds the event waited between being stored and this."""
    return await conn.fetchval(FINISH_WEBHOOK_EVENT, event_row_id, status, note)


async def fail_webhook_event(conn, event_row_id: int, error: str) -> None:
    await conn.execute(FAIL_WEBHOOK_EVENT, event_row_id, error)


async def wake_unmatched(conn, processor_id: str, keys: Sequence[str]) -> int:
    result = await conn.execute(WAKE_UNMATCHED, processor_id, list(keys))
    return int(result.split()[-1])


async def webhook_event(conn, processor_id: str, event_id: str) -> Row | None:
    return await conn.fetchrow("SELECT * FROM webhook_events WHERE processor_id = $1 AND event_id = $2",
                               processor_id, event_id)


# --- outbox (callbacks to the billing core) ----------------------------------------------------

# request_id: the request (or round of background work) that caused the change, sent as X-Request-ID.
INSERT_OUTBOX = """
INSERT INTO outbox_events (refund_id, version, type, payload, request_id) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (refund_id, version) DO NOTHING"""

# The earliest undelivered event of each refund that is due: never a later version before an
# earlier one is delivered. The claim leases it by pushing its next attempt out.
CLAIM_OUTBOX = """
WITH due AS (
    SELECT e.id FROM outbox_events e
    WHERE e.delivered_at IS NULL AND e.next_attempt_at <= now()
      AND NOT EXISTS (SELECT 1 FROM outbox_events p
                      WHERE (p.refund_id = e.refund_id OR p.dispute_id = e.dispute_id)
                        AND p.version < e.version AND p.delivered_at IS NULL)
    ORDER BY e.id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox_events o SET next_attempt_at = now() + make_interval(secs => $2), attempts = o.attempts + 1
FROM due WHERE o.id = due.id
RETURNING o.*"""

MARK_DELIVERED = "UPDATE outbox_events SET delivered_at = now(), last_error = NULL WHERE id = $1"
MARK_UNDELIVERED = """
UPDATE outbox_events SET last_error = $2,
    next_attempt_at = now() + make_interval(secs => least($3, $4 * 2 ^ least(attempts - 1, 16)))
WHERE id = $1"""
INSERT_DELIVERY = """
INSERT INTO callback_deliveries (outbox_id, url, status_code, error, latency_ms) VALUES ($1, $2, $3, $4, $5)"""
# GET /v1/events, in commit order: ids are drawn before commit, so they commit out of order. A row
# is served only when its transaction, and every one older, has ended (xid below the snapshot's
# xmin); anything that commits later has a larger xid and lands after the cursor. The cursor is
# an event id, read as that event's (xid, id).
EVENTS_FROM_START = """
SELECT * FROM outbox_events WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY xid, id LIMIT $1"""
EVENTS_AFTER = """
SELECT e.* FROM outbox_events e, outbox_events c
WHERE c.id = $1 AND (e.xid, e.id) > (c.xid, c.id) AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY e.xid, e.id LIMIT $2"""
EVENT_EXISTS = "SELECT EXISTS (SELECT 1 FROM outbox_events WHERE id = $1)"


# What the billing core was last told about a refund: the data of its newest event.
# The refund as its newest callback described it (a snapshot of the row; `data` in events written
# before snapshots were kept).
LAST_PUBLISHED = """
SELECT coalesce(payload -> 'refund', payload -> 'data') FROM outbox_events
WHERE refund_id = $1 ORDER BY version DESC LIMIT 1"""


async def last_published(conn, refund_id: str) -> dict[str, Any] | None:
    return await conn.fetchval(LAST_PUBLISHED, refund_id)


async def insert_outbox(conn, refund_id: str, version: int, type: str, payload: dict[str, Any],
                       request_id: str | None = None) -> None:
    await conn.execute(INSERT_OUTBOX, refund_id, version, type, payload, request_id)


async def claim_outbox(conn, limit: int, lease_seconds: float) -> list[Row]:
    return await conn.fetch(CLAIM_OUTBOX, limit, lease_seconds)


async def mark_delivered(conn, outbox_id: int) -> None:
    await conn.execute(MARK_DELIVERED, outbox_id)


async def mark_undelivered(conn, outbox_id: int, error: str, *, initial: float, maximum: float) -> None:
    await conn.execute(MARK_UNDELIVERED, outbox_id, error, maximum, initial)


async def insert_delivery(conn, outbox_id: int, url: str, status_code: int | None, error: str | None,
                          latency_ms: int) -> None:
    await conn.execute(INSERT_DELIVERY, outbox_id, url, status_code, error, latency_ms)


async def events_after(conn, after: int, limit: int) -> list[Row] | None:
    """Up to limit + 1 events after the event `after` (0: from the start); None if there is no such event."""
    if after == 0:
        return await conn.fetch(EVENTS_FROM_START, limit + 1)
    rows = await conn.fetch(EVENTS_AFTER, after, limit + 1)
    if not rows and not await conn.fetchval(EVENT_EXISTS, after):
        return None
    return rows


# --- operators --------------------------------------------------------------------------------

INSERT_AUDIT = """
INSERT INTO admin_audit (actor, action, target, reason, request, result, request_id)
VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id"""

# Rejections come from anyone who can reach the endpoint: keep at most $6 an hour per processor,
# so that a flood of forgeries cannot fill the database (the log still sees every one).
INSERT_REJECTION = """
INSERT INTO webhook_rejections (processor_id, reason, headers, body, body_bytes)
SELECT $1, $2, $3, $4, $5
WHERE (SELECT count(*) FROM webhook_rejections
       WHERE processor_id = $1 AND received_at > now() - interval '1 hour') < $6"""


async def insert_audit(conn, *, actor: str, action: str, target: str | None, reason: str | None,
                       request: dict[str, Any], result: dict[str, Any], request_id: str | None) -> int:
    return await conn.fetchval(INSERT_AUDIT, actor, action, target, reason, request, result, request_id)


async def insert_rejection(conn, processor_id: str, reason: str, headers: dict[str, str], body: bytes,
                           hourly_cap: int = 1000) -> None:
    await conn.execute(INSERT_REJECTION, processor_id, reason, headers, body[:64 * 1024], len(body), hourly_cap)


# Stuck: needs attention, or pending for longer than the threshold (parameter $n) since it was
# created. Not since updated_at: background work (a claim, a re-check, a retry) touches that on
# every round, and a refund going round for days would never be listed.
STUCK_WHERE = """(status = 'requires_attention'
 OR (status = 'pending' AND created_at < now() - make_interval(secs => ${n}::float8)))"""

# Why a stuck refund is stuck: its failure code when it needs attention, else where it waits.
STUCK_COUNTS = f"""
SELECT CASE WHEN status = 'requires_attention' THEN 'requires_attention:' || coalesce(failure_code, 'unknown')
            ELSE 'pending:' || stage END AS reason, count(*) AS count
FROM refunds WHERE {STUCK_WHERE.format(n=1)}
GROUP BY 1 ORDER BY 2 DESC, 1"""

UPDATE_AUDIT_RESULT = "UPDATE admin_audit SET result = $2 WHERE id = $1"

CLAIM_WEBHOOK_EVENT = """
UPDATE webhook_events SET status = 'received', next_attempt_at = now() + make_interval(secs => $2),
    attempts = attempts + 1
WHERE id = $1 AND (status <> 'received' OR next_attempt_at <= now())
RETURNING id, processor_id, event_id, event, attempts"""

REQUEUE_WEBHOOK_EVENTS = """
UPDATE webhook_events SET status = 'received', next_attempt_at = now()
WHERE status = $1 AND ($2::text IS NULL OR processor_id = $2)"""


_FILTERABLE = frozenset({"invoice_id", "status", "processor_id", "failure_code", "credit_note_id", "stage"})


class _Filters:
    """WHERE clauses with numbered parameters, in order, and the newest-first page after a cursor."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def add(self, template: str, value: Any) -> None:
        """`template` names its parameter `${n}`: `"status = ${n}"`."""
        self.args.append(value)
        self.clauses.append(template.format(n=len(self.args)))

    def page(self, starting_after: Any, limit: int, ending_before: Any = None) -> str:
        """WHERE ... ORDER BY id LIMIT: one more than `limit`, to tell whether there is more. Newest
        first after `starting_after`; with `ending_before`, the ones just newer than it, oldest
        first (`in_order` turns them round)."""
        if starting_after is not None:
            self.add("id < ${n}", starting_after)
        if ending_before is not None:
            self.add("id > ${n}", ending_before)
        self.args.append(limit + 1)
        where = f"WHERE {' AND '.join(self.clauses)} " if self.clauses else ""
        return f"{where}ORDER BY id {'ASC' if ending_before is not None else 'DESC'} LIMIT ${len(self.args)}"


def in_order(rows: list[Row], limit: int, ending_before: Any) -> list[Row]:
    """A page newest first, with the row that tells there is more (if any) last, either way."""
    if ending_before is None:
        return rows
    return list(reversed(rows[:limit])) + rows[limit:]


async def list_refunds(conn, *, starting_after: str | None, limit: int, stuck_older_than: float | None = None,
                       ids: Sequence[str] | None = None, statuses: Sequence[str] | None = None,
                       ending_before: str | None = None, **equal: str | None) -> list[Row]:
    """Newest first, filtered by equality on the given columns (None: no filter), by ids or
    statuses, and, with `stuck_older_than`, to stuck refunds."""
    filters = _Filters()
    if stuck_older_than is not None:
        filters.add(STUCK_WHERE, stuck_older_than)
    for column, values in (("id", ids), ("status", statuses)):
        if values is not None:
            filters.add(f"{column} = ANY(${{n}}::text[])", list(values))
    for column, value in equal.items():
        assert column in _FILTERABLE, column
        if value is not None:
            filters.add(f"{column} = ${{n}}", value)
    rows = await conn.fetch(f"SELECT * FROM refunds {filters.page(starting_after, limit, ending_before)}",
                            *filters.args)
    return in_order(rows, limit, ending_before)


async def stuck_counts(conn, older_than: float) -> dict[str, int]:
    return {r["reason"]: r["count"] for r in await conn.fetch(STUCK_COUNTS, older_than)}


# --- metrics (read at every scrape: only rows that are not final, through partial indexes) ---------

OPEN_REFUND_COUNTS = """
SELECT processor_id, status, stage, count(*) AS count FROM refunds
WHERE status IN ('pending', 'requires_attention')
GROUP BY 1, 2, 3"""

# With the age of the oldest of each: an inbox that stalls shows here before any event is applied.
OPEN_WEBHOOK_COUNTS = """
SELECT processor_id, status, count(*) AS count,
       greatest(0, extract(epoch FROM now() - min(received_at)))::float8 AS oldest_seconds
FROM webhook_events
WHERE status IN ('received', 'failed', 'unmatched')
GROUP BY 1, 2"""

# Refund events committed but not yet served by GET /v1/events: a transaction older than theirs
# is still open somewhere on the server (see EVENTS_AFTER).
EVENTS_HELD_BACK = """
SELECT count(*) AS count, coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_seconds
FROM outbox_events WHERE xid >= pg_snapshot_xmin(pg_current_snapshot())"""

OUTBOX_BACKLOG = """
SELECT count(*) AS count, coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_seconds
FROM outbox_events WHERE delivered_at IS NULL"""


async def open_refund_counts(conn) -> list[Row]:
    return await conn.fetch(OPEN_REFUND_COUNTS)


async def open_webhook_counts(conn) -> list[Row]:
    return await conn.fetch(OPEN_WEBHOOK_COUNTS)


async def outbox_backlog(conn) -> Row:
    return await conn.fetchrow(OUTBOX_BACKLOG)


async def events_held_back(conn) -> Row:
    return await conn.fetchrow(EVENTS_HELD_BACK)


async def update_audit_result(conn, audit_id: int, result: dict[str, Any]) -> None:
    await conn.execute(UPDATE_AUDIT_RESULT, audit_id, result)


async def list_webhook_events(conn, *, status: str | None, processor: str | None, starting_after: int | None,
                              limit: int, ending_before: int | None = None) -> list[Row]:
    filters = _Filters()
    for column, value in (("status", status), ("processor_id", processor)):
        if value is not None:
            filters.add(f"{column} = ${{n}}", value)
    rows = await conn.fetch(
        "SELECT id, processor_id, event_id, event_type, status, attempts, last_error, match_keys, received_at, "
        "processed_at, signature, event IS NOT NULL AS parsed "
        f"FROM webhook_events {filters.page(starting_after, limit, ending_before)}", *filters.args)
    return in_order(rows, limit, ending_before)


async def claim_webhook_event(conn, event_row_id: int, lease_seconds: float) -> Row | None:
    return await conn.fetchrow(CLAIM_WEBHOOK_EVENT, event_row_id, lease_seconds)


async def requeue_webhook_events(conn, status: str, processor: str | None) -> int:
    return int((await conn.execute(REQUEUE_WEBHOOK_EVENTS, status, processor)).split()[-1])


# --- the finance export ------------------------------------------------------------------------

# Every refund settled in [$1, $2): final (succeeded, refunded offline, failed, canceled), settled
# when the event that last moved it into its status was written. Read through a cursor.
EXPORT_REFUNDS = """
SELECT r.id AS refund_id, s.settled_at, r.status, r.origin, r.amount, r.currency, r.transaction_id,
       r.processor_id AS processor, t.psp_reference, r.psp_refund_id, r.invoice_id, r.credit_note_id,
       t.customer_id, r.external_reference, r.failure_code, r.next_action, r.created_at, r.reversed_at
FROM refunds r
JOIN transactions t ON t.id = r.transaction_id
CROSS JOIN LATERAL (SELECT max(e.created_at) AS settled_at FROM refund_events e
                    WHERE e.refund_id = r.id AND e.to_status = r.status) s
WHERE r.status IN ('succeeded', 'refunded_offline', 'failed', 'canceled')
  AND s.settled_at >= $1 AND s.settled_at < $2
ORDER BY s.settled_at, r.id"""


def export_cursor(conn, since: datetime, until: datetime, prefetch: int = 500):
    """The period's settled refunds, read in batches (inside the caller's transaction)."""
    return conn.cursor(EXPORT_REFUNDS, since, until, prefetch=prefetch)


# --- disputes ----------------------------------------------------------------------------------

LOCK_DISPUTE = "SELECT * FROM disputes WHERE processor_id = $1 AND psp_dispute_id = $2 FOR UPDATE"
INSERT_DISPUTE = """
INSERT INTO disputes (id, processor_id, psp_dispute_id, transaction_id, amount, currency, status, funds_withdrawn,
                      reason, source)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (processor_id, psp_dispute_id) DO NOTHING
RETURNING *"""
UPDATE_DISPUTE = """
UPDATE disputes SET status = $2, funds_withdrawn = $3, amount = $4, reason = coalesce($5, reason),
    version = version + 1, updated_at = now()
WHERE id = $1 RETURNING *"""
CHARGE_BACK = """
UPDATE transactions SET charged_back_amount = charged_back_amount + $2, updated_at = now() WHERE id = $1"""
# A payment's refunds that have not reached its processor: a dispute holds them.
UNSENT_REFUNDS = """
SELECT id FROM refunds WHERE transaction_id = $1 AND status = 'pending' AND stage = 'not_sent' ORDER BY id"""
HELD_REFUNDS = """
SELECT id FROM refunds WHERE transaction_id = $1 AND status = 'pending' AND stage = 'not_sent'
  AND failure_code = 'payment_disputed' ORDER BY id"""
INSERT_DISPUTE_OUTBOX = """
INSERT INTO outbox_events (dispute_id, version, type, payload, request_id) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (dispute_id, version) WHERE dispute_id IS NOT NULL DO NOTHING"""


async def lock_dispute(conn, processor_id: str, psp_dispute_id: str) -> Row | None:
    return await conn.fetchrow(LOCK_DISPUTE, processor_id, psp_dispute_id)


async def insert_dispute(conn, *, id: str, processor_id: str, psp_dispute_id: str, transaction_id: str, amount: int,
                         currency: str, status: str, funds_withdrawn: bool, reason: str | None,
                         source: str) -> Row | None:
    return await conn.fetchrow(INSERT_DISPUTE, id, processor_id, psp_dispute_id, transaction_id, amount, currency,
                               status, funds_withdrawn, reason, source)


async def update_dispute(conn, dispute_id: str, *, status: str, funds_withdrawn: bool, amount: int,
                         reason: str | None) -> Row:
    return await conn.fetchrow(UPDATE_DISPUTE, dispute_id, status, funds_withdrawn, amount, reason)


OPEN_DISPUTE = "SELECT EXISTS (SELECT 1 FROM disputes WHERE transaction_id = $1 AND status = 'open')"


async def payment_disputed(conn, transaction_id: str) -> bool:
    return await conn.fetchval(OPEN_DISPUTE, transaction_id)


async def charge_back(conn, transaction_id: str, amount: int) -> None:
    await conn.execute(CHARGE_BACK, transaction_id, amount)


async def unsent_refunds(conn, transaction_id: str) -> list[str]:
    return [r["id"] for r in await conn.fetch(UNSENT_REFUNDS, transaction_id)]


async def held_refunds(conn, transaction_id: str) -> list[str]:
    return [r["id"] for r in await conn.fetch(HELD_REFUNDS, transaction_id)]


async def insert_dispute_outbox(conn, dispute_id: str, version: int, type: str, payload: dict[str, Any],
                                request_id: str | None) -> None:
    await conn.execute(INSERT_DISPUTE_OUTBOX, dispute_id, version, type, payload, request_id)


async def list_disputes(conn, *, status: str | None, processor: str | None, starting_after: str | None,
                        limit: int) -> list[Row]:
    filters = _Filters()
    for column, value in (("status", status), ("processor_id", processor)):
        if value is not None:
            filters.add(f"{column} = ${{n}}", value)
    return await conn.fetch(f"SELECT * FROM disputes {filters.page(starting_after, limit)}", *filters.args)


# --- reconciliation ----------------------------------------------------------------------------

INSERT_RUN = """
INSERT INTO reconciliation_runs (processor_id, period_start, period_end, trigger) VALUES ($1, $2, $3, $4)
RETURNING *"""
FINISH_RUN = """
UPDATE reconciliation_runs SET status = $2, finished_at = now(), processor_refunds = $3, gateway_refunds = $4,
    counts = $5, error = $6
WHERE id = $1 RETURNING *"""
# Ours to hold against a listing: the refunds it names (by the processor's id, a duplicate's, or
# ours in its metadata), and every refund at the processor made in the period, with its payment's id.
REFUNDS_TO_RECONCILE = """
SELECT r.*, t.psp_reference AS payment_reference FROM refunds r JOIN transactions t ON t.id = r.transaction_id
WHERE r.processor_id = $1 AND (
    r.psp_refund_id = ANY($2::text[]) OR r.duplicate_psp_refund_ids && $2::text[] OR r.id = ANY($3::text[])
    OR (r.created_at >= $4 AND r.created_at < $5 AND r.origin <> 'offline'))"""
# A finding already open about the same thing is not added again.
INSERT_FINDING = """
INSERT INTO reconciliation_findings (run_id, processor_id, kind, key, refund_id, transaction_id, psp_refund_id,
                                     gateway, processor, action)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (processor_id, kind, key) WHERE status = 'open' DO NOTHING
RETURNING id"""
RESOLVE_FINDING = """
UPDATE reconciliation_findings SET status = 'resolved', resolved_at = now(), resolved_by = $2, resolution = $3
WHERE id = $1 AND status = 'open' RETURNING *"""
GET_FINDING = "SELECT * FROM reconciliation_findings WHERE id = $1"
OPEN_FINDING_COUNTS = """
SELECT processor_id, kind, count(*) AS count FROM reconciliation_findings WHERE status = 'open' GROUP BY 1, 2"""
# A processor's scheduled run, if due; the claim moves the next one out, so one replica runs it.
CLAIM_DUE_RECONCILIATION = """
UPDATE reconciliation_schedule SET next_run_at = now() + make_interval(secs => $2)
WHERE processor_id = $1 AND next_run_at <= now()
RETURNING processor_id"""
SCHEDULE_RECONCILIATION = """
INSERT INTO reconciliation_schedule (processor_id, next_run_at) SELECT p, now() FROM unnest($1::text[]) AS p
ON CONFLICT (processor_id) DO NOTHING"""
LAST_FINISHED_RUN = """
SELECT period_end FROM reconciliation_runs WHERE processor_id = $1 AND status = 'finished'
ORDER BY period_end DESC LIMIT 1"""


async def insert_run(conn, processor_id: str, since: datetime, until: datetime, trigger: str) -> Row:
    return await conn.fetchrow(INSERT_RUN, processor_id, since, until, trigger)


async def finish_run(conn, run_id: int, status: str, *, processor_refunds: int | None, gateway_refunds: int | None,
                     counts: dict[str, int], error: str | None = None) -> Row:
    return await conn.fetchrow(FINISH_RUN, run_id, status, processor_refunds, gateway_refunds, counts, error)


async def refunds_to_reconcile(conn, processor_id: str, psp_refund_ids: Sequence[str], refund_ids: Sequence[str],
                               since: datetime, until: datetime) -> list[Row]:
    return await conn.fetch(REFUNDS_TO_RECONCILE, processor_id, list(psp_refund_ids), list(refund_ids), since, until)


async def insert_finding(conn, run_id: int, processor_id: str, *, kind: str, key: str, refund_id: str | None,
                         transaction_id: str | None, psp_refund_id: str | None, gateway: dict[str, Any] | None,
                         processor: dict[str, Any] | None, action: str | None) -> int | None:
    """The new finding's id; None when one about the same thing is open already."""
    return await conn.fetchval(INSERT_FINDING, run_id, processor_id, kind, key, refund_id, transaction_id,
                               psp_refund_id, gateway, processor, action)


async def resolve_finding(conn, finding_id: int, actor: str, reason: str) -> Row | None:
    return await conn.fetchrow(RESOLVE_FINDING, finding_id, actor, reason)


async def get_finding(conn, finding_id: int) -> Row | None:
    return await conn.fetchrow(GET_FINDING, finding_id)


async def open_finding_counts(conn) -> list[Row]:
    return await conn.fetch(OPEN_FINDING_COUNTS)


async def list_findings(conn, *, status: str | None, processor: str | None, kind: str | None,
                        starting_after: int | None, limit: int) -> list[Row]:
    filters = _Filters()
    for column, value in (("status", status), ("processor_id", processor), ("kind", kind)):
        if value is not None:
            filters.add(f"{column} = ${{n}}", value)
    return await conn.fetch(f"SELECT * FROM reconciliation_findings {filters.page(starting_after, limit)}",
                            *filters.args)


async def list_runs(conn, *, processor: str | None, starting_after: int | None, limit: int) -> list[Row]:
    filters = _Filters()
    if processor is not None:
        filters.add("processor_id = ${n}", processor)
    return await conn.fetch(f"SELECT * FROM reconciliation_runs {filters.page(starting_after, limit)}",
                            *filters.args)


async def schedule_reconciliation(conn, processor_ids: Sequence[str]) -> None:
    await conn.execute(SCHEDULE_RECONCILIATION, list(processor_ids))


async def claim_due_reconciliation(conn, processor_id: str, interval_seconds: float) -> bool:
    """Whether this processor's scheduled run was due, and is now this caller's."""
    return await conn.fetchval(CLAIM_DUE_RECONCILIATION, processor_id, interval_seconds) is not None


async def last_reconciled_until(conn, processor_id: str) -> datetime | None:
    return await conn.fetchval(LAST_FINISHED_RUN, processor_id)


# --- operator console -------------------------------------------------------------------------

# The newest $2 rows of each refund in $1, oldest first: a refund re-checked for days collects
# many, and a page shows the last ones (each an index range scan on (refund_id, id)).
RECENT_REFUND_EVENTS = """
SELECT e.* FROM unnest($1::text[]) AS r(id)
CROSS JOIN LATERAL (SELECT * FROM refund_events WHERE refund_id = r.id ORDER BY id DESC LIMIT $2) e
ORDER BY e.refund_id, e.id"""

RECENT_REFUND_ATTEMPTS = """
SELECT a.* FROM unnest($1::text[]) AS r(id)
CROSS JOIN LATERAL (SELECT * FROM refund_attempts WHERE refund_id = r.id ORDER BY id DESC LIMIT $2) a
ORDER BY a.refund_id, a.id"""

CURRENT_HOUR = "SELECT date_trunc('hour', now(), 'UTC')"

# Refunds reaching an outcome, per processor, hour (UTC) and outcome, over the last $1 hours (the
# current one included): each move into succeeded, failed or requires_attention counts in the
# hour it happened. Read through refund_events_outcome_idx; at most $1 x processors x 3 rows.
OUTCOMES_BY_HOUR = """
SELECT r.processor_id, date_trunc('hour', e.created_at, 'UTC') AS hour, e.to_status AS status, count(*) AS count
FROM refund_events e JOIN refunds r ON r.id = e.refund_id
WHERE e.created_at >= date_trunc('hour', now(), 'UTC') - make_interval(hours => $1 - 1)
  AND e.to_status IN ('succeeded', 'failed', 'requires_attention')
  AND e.from_status IS DISTINCT FROM e.to_status
GROUP BY 1, 2, 3"""


def _by_refund(rows: list[Row]) -> dict[str, list[Row]]:
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(row["refund_id"], []).append(row)
    return grouped


async def recent_refund_events(conn, refund_ids: Sequence[str], per_refund: int) -> dict[str, list[Row]]:
    return _by_refund(await conn.fetch(RECENT_REFUND_EVENTS, list(refund_ids), per_refund))


async def recent_refund_attempts(conn, refund_ids: Sequence[str], per_refund: int) -> dict[str, list[Row]]:
    return _by_refund(await conn.fetch(RECENT_REFUND_ATTEMPTS, list(refund_ids), per_refund))


async def outcomes_by_hour(conn, hours: int) -> tuple[datetime, list[Row]]:
    """The current hour (UTC, from the database's clock) and the counts of the last `hours`."""
    assert 1 <= hours <= 168, hours
    return await conn.fetchval(CURRENT_HOUR), await conn.fetch(OUTCOMES_BY_HOUR, hours)
