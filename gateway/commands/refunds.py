"""`psp-gateway refunds list | show | replay | resolve | export`: the admin API's refund actions and the
finance export, run against the configured database by an operator at a shell, audited as `cli:<os user>`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from gateway import errors, finance_export, operations
from gateway.commands import output
from gateway.commands.session import Session, bounded_int, json_flag, run, validated
from gateway.db import store
from gateway.domain.refunds import Status
from gateway.models import ExportQuery, Reason, Ref, RefundOut, TransactionOut
from gateway.settings import Settings

HISTORY = 100  # events and processor calls `show` prints: the newest ones
RESOLUTIONS = ("refunded_offline", "failed", "canceled")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("refunds", help="list, show, replay and resolve refunds (the admin API's actions)",
                            description="Refunds in the configured database (GATEWAY_DATABASE_URL, or the "
                                        "embedded Postgres under GATEWAY_DATA_DIR), acted on as the admin API "
                                        "does; every change is audited as cli:<os user>.")
    actions = parser.add_subparsers(dest="action", required=True)
    json = json_flag()
    reason = validated(Reason)

    listing = actions.add_parser("list", parents=[json], help="refunds, newest first")
    listing.add_argument("--stuck", action="store_true",
                         help="only stuck ones: requires_attention, or still pending longer than "
                              "GATEWAY_STUCK_AFTER_SECONDS after it was created")
    listing.add_argument("--status", choices=[s.value for s in Status])
    listing.add_argument("--processor", metavar="ID")
    listing.add_argument("--limit", type=bounded_int(1, 500), default=50, help="at most this many (default 50)")
    listing.add_argument("--starting-after", metavar="REFUND_ID", help="the next page: the last id of this one")
    listing.set_defaults(operate=list_refunds)

    show = actions.add_parser("show", parents=[json], help="a refund, its transaction, processor calls and history")
    show.add_argument("id")
    show.set_defaults(operate=show_refund)

    replay = actions.add_parser(
        "replay", parents=[json], help="resync with the processor, resend with the same key only if needed",
        description="Replay one refund, or every stuck one (--all-stuck): the processor is asked first, and "
                    "the refund is resent, with its own idempotency key, only if the processor has no record "
                    "of it. A final refund (succeeded, failed, ...) is refused.")
    replay.add_argument("id", nargs="?", help="the refund (or --all-stuck)")
    replay.add_argument("--all-stuck", action="store_true", help="every stuck refund (see `refunds list --stuck`)")
    replay.add_argument("--processor", metavar="ID", help="with --all-stuck: only this processor's")
    replay.add_argument("--limit", type=bounded_int(1, 500), default=100,
                        help="with --all-stuck: at most this many, newest first (default 100)")
    replay.add_argument("--dry-run", action="store_true", help="with --all-stuck: list what would be replayed")
    replay.add_argument("--reason", required=True, type=reason, help="why, for the audit (required)")
    replay.set_defaults(operate=replay_refunds)

    resolve = actions.add_parser("resolve", parents=[json], help="settle a refund outside the processor")
    resolve.add_argument("id")
    resolve.add_argument("--as", dest="resolution", required=True, choices=RESOLUTIONS,
                         help="refunded_offline counts as refunded; failed and canceled release the amount")
    resolve.add_argument("--reason", required=True, type=reason, help="why, for the audit (required)")
    resolve.add_argument("--external-reference", type=validated(Ref), metavar="REF",
                         help="the offline refund's reference (a bank transfer's); required with refunded_offline")
    resolve.set_defaults(operate=resolve_refund)

    export = actions.add_parser(
        "export", help="every refund settled in a period, as CSV (or JSON lines)",
        description="The finance export, as GET /admin/exports/refunds gives it: every refund settled (succeeded, "
                    "refunded offline, failed or canceled) in [--from, --to), streamed.")
    export.add_argument("--from", dest="since", required=True, help="a date (UTC midnight) or an ISO 8601 time")
    export.add_argument("--to", dest="until", required=True, help="the period's end, excluded")
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    export.add_argument("--output", metavar="FILE", help="write here (default: standard output)")
    export.set_defaults(operate=export_refunds)


# --- export -------------------------------------------------------------------------------------

def export_refunds(args: argparse.Namespace, settings: Settings) -> int:
    try:
        query = ExportQuery.model_validate({"from": args.since, "to": args.until, "format": args.format})
    except ValidationError as e:
        output.error(f"{e.errors()[0]['msg']}")
        return 2

    async def command(s: Session) -> int:
        out = open(args.output, "wb") if args.output else sys.stdout.buffer
        try:
            count = await finance_export.write_to(s.pool, query.since, query.until, query.format, out)
        finally:
            if args.output:
                out.close()
            else:
                out.flush()
        if args.output:
            print(f"{count} refunds settled from {query.since.isoformat()} to {query.until.isoformat()} written to "
                  f"{args.output}", file=sys.stderr)
        return 0
    return run(settings, command, json_output=False)


# --- list ---------------------------------------------------------------------------------------

def list_refunds(args: argparse.Namespace, settings: Settings) -> int:
    async def command(s: Session) -> int:
        older_than = s.settings.stuck_after_seconds
        async with s.pool.acquire() as conn:
            rows = await store.list_refunds(conn, stuck_older_than=older_than if args.stuck else None,
                                            status=args.status, processor_id=args.processor,
                                            starting_after=args.starting_after, limit=args.limit)
            counts = await store.stuck_counts(conn, older_than)
        refunds = [RefundOut.from_row(r) for r in rows[:args.limit]]
        has_more = len(rows) > args.limit
        if args.json:
            output.print_json({"data": [r.model_dump(mode="json") for r in refunds], "has_more": has_more,
                               "stuck_counts": counts, "stuck_total": sum(counts.values())})
            return 0
        if refunds:
            print(output.table(
                ["id", "status", "stage", "amount", "processor", "invoice", "failure", "updated"],
                [[r.id, r.status, r.stage, output.amount(r.amount, r.currency), r.processor, r.invoice_id,
                  r.failure_code, r.updated_at] for r in refunds]))
        else:
            print("no refunds match")
        if has_more:
            print(f"more: --starting-after {refunds[-1].id}")
        if args.stuck or counts:
            reasons = ", ".join(f"{reason} {count}" for reason, count in counts.items())
            print(f"stuck in all: {sum(counts.values())}" + (f" ({reasons})" if reasons else ""))
        return 0
    return run(settings, command, json_output=args.json)


# --- show ---------------------------------------------------------------------------------------

def show_refund(args: argparse.Namespace, settings: Settings) -> int:
    async def command(s: Session) -> int:
        async with s.pool.acquire() as conn:
            row = await store.get_refund(conn, args.id)
            if row is None:
                raise errors.NotFound(f"no refund {args.id!r}", code="refund_not_found")
            transaction = await store.get_transaction(conn, row["transaction_id"])
            attempts = (await store.recent_refund_attempts(conn, [row["id"]], HISTORY)).get(row["id"], [])
            events = (await store.recent_refund_events(conn, [row["id"]], HISTORY)).get(row["id"], [])
        refund, tx = RefundOut.from_row(row), TransactionOut.from_row(transaction)
        if args.json:
            output.print_json({"refund": refund.model_dump(mode="json"), "transaction": tx.model_dump(mode="json"),
                               "attempts": [_attempt(a) for a in attempts], "events": [_event(e) for e in events]})
            return 0
        print(_refund_block(refund))
        print()
        print(output.fields(f"transaction {tx.id}", [
            ("payment", f"{tx.psp_reference} at {tx.processor}"),
            ("invoice", tx.invoice_id),
            ("amount", output.amount(tx.amount, tx.currency)),
            ("refunded", output.amount(tx.refunded_amount, tx.currency)),
            ("reserved", output.amount(tx.reserved_amount, tx.currency)),
            ("refundable", output.amount(tx.refundable_amount, tx.currency)),
        ]))
        print(f"\nprocessor calls ({len(attempts)}{', the newest' if len(attempts) == HISTORY else ''})")
        if attempts:
            print(output.indent(output.table(
                ["started", "call", "outcome", "error", "code", "ms", "message"],
                [[a["started_at"], a["call"], a["outcome"], a["error_class"], a["processor_code"], a["latency_ms"],
                  a["message"]] for a in attempts])))
        print(f"\nhistory ({len(events)}{', the newest' if len(events) == HISTORY else ''})")
        print(output.indent(output.table(
            ["at", "event", "from", "to", "detail"],
            [[e["created_at"], e["event"], _state(e["from_status"], e["from_stage"]),
              _state(e["to_status"], e["to_stage"]), _detail(e["detail"])] for e in events])))
        return 0
    return run(settings, command, json_output=args.json)


def _refund_block(r: RefundOut) -> str:
    failure = f"{r.failure_code}: {r.failure_message}" if r.failure_message else r.failure_code
    return output.fields(f"refund {r.id}", [
        ("status", f"{r.status} (stage {r.stage})"),
        ("amount", output.amount(r.amount, r.currency)),
        ("processor", r.processor),
        ("psp refund id", r.psp_refund_id),
        ("invoice", r.invoice_id),
        ("credit note", r.credit_note_id),
        ("reason", r.reason),
        ("method", r.method),
        ("external reference", r.external_reference),
        ("retries refund", r.previous_refund_id),
        ("failure", failure),
        ("next action", r.next_action if r.next_action != "none" else None),
        ("processor calls", r.attempts),
        ("created", r.created_at),
        ("updated", r.updated_at),
    ])


def _attempt(row: Any) -> dict[str, Any]:
    return {k: row[k] for k in ("started_at", "call", "outcome", "error_class", "processor_code", "latency_ms",
                                "message")}


def _event(row: Any) -> dict[str, Any]:
    return {k: row[k] for k in ("created_at", "event", "from_status", "to_status", "from_stage", "to_stage",
                                "detail", "request_id")}


def _state(status: str | None, stage: str | None) -> str:
    return f"{status}/{stage}" if status else "-"


def _detail(detail: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (detail or {}).items() if v is not None)



# --- replay -------------------------------------------------------------------------------------

def replay_refunds(args: argparse.Namespace, settings: Settings) -> int:
    if bool(args.id) == args.all_stuck:
        return output.usage_error("refunds replay: give a refund id or --all-stuck, not both")
    if args.id and (args.dry_run or args.processor):
        return output.usage_error("refunds replay: --dry-run and --processor go with --all-stuck")
    if args.id:
        return run(settings, lambda s: _replay_one(s, args), json_output=args.json)
    return run(settings, lambda s: _replay_stuck(s, args), json_output=args.json)


async def _replay_one(s: Session, args: argparse.Namespace) -> int:
    result = await operations.replay(s.pool, s.executor, args.id, actor=s.actor, reason=args.reason,
                                     lease_seconds=s.settings.lease_seconds, request_id=s.request_id)
    if args.json:
        output.print_json(result)
        return 0
    print(f"{args.id}: found {result['found']}; {result['action']}")
    print(f"now {result['status']} (stage {result['stage']})")
    return 0


async def _replay_stuck(s: Session, args: argparse.Namespace) -> int:
    candidates = await operations.replay_candidates(s.pool, limit=args.limit,
                                                    stuck_older_than=s.settings.stuck_after_seconds,
                                                    processor=args.processor)
    request = {"filter": {"stuck": True, "processor": args.processor}, "dry_run": args.dry_run, "limit": args.limit}
    if args.dry_run:
        await operations.record_dry_run(s.pool, candidates, actor=s.actor, reason=args.reason, request=request,
                                        request_id=s.request_id)
        async with s.pool.acquire() as conn:
            rows = await store.list_refunds(conn, ids=candidates, starting_after=None, limit=len(candidates))
        if args.json:
            output.print_json({"dry_run": True, "would_replay": candidates, "count": len(candidates)})
            return 0
        print(f"would replay {len(candidates)} stuck refund{'' if len(candidates) == 1 else 's'} (dry run)")
        if rows:
            print(output.table(["id", "status", "stage", "amount", "processor", "failure", "updated"],
                               [[r["id"], r["status"], r["stage"], output.amount(r["amount"], r["currency"]),
                                 r["processor_id"], r["failure_code"], r["updated_at"]] for r in rows]))
        return 0
    with tqdm(total=len(candidates), desc="replaying", unit="refund", file=sys.stderr, disable=None) as bar:
        results = await operations.replay_many(s.pool, s.executor, candidates, actor=s.actor, reason=args.reason,
                                               lease_seconds=s.settings.lease_seconds, request_id=s.request_id,
                                               on_done=lambda _: bar.update())
    refused = sum(1 for r in results if "error" in r)
    if args.json:
        output.print_json({"dry_run": False, "results": results, "count": len(results)})
    else:
        print(f"replayed {len(results) - refused} of {len(candidates)} stuck refunds"
              + (f"; {refused} refused" if refused else ""))
        if results:
            print(output.table(["id", "found", "action", "now"],
                               [[r["id"], r.get("found"), r.get("action") or f"refused: {r['detail']}",
                                 _state(r.get("status"), r.get("stage"))] for r in results]))
    return 1 if refused else 0


# --- resolve ------------------------------------------------------------------------------------

def resolve_refund(args: argparse.Namespace, settings: Settings) -> int:
    if args.resolution == "refunded_offline" and not args.external_reference:
        return output.usage_error("refunds resolve: --as refunded_offline needs --external-reference "
                                  "(the offline refund's)")

    async def command(s: Session) -> int:
        row = await operations.resolve(s.pool, args.id, args.resolution, actor=s.actor, reason=args.reason,
                                       external_reference=args.external_reference, request_id=s.request_id)
        refund = RefundOut.from_row(row)
        if args.json:
            output.print_json(refund.model_dump(mode="json"))
            return 0
        reference = f" (external reference {args.external_reference})" if args.external_reference else ""
        print(f"{refund.id}: resolved as {refund.status}{reference}")
        print(_refund_block(refund))
        return 0
    return run(settings, command, json_output=args.json)
