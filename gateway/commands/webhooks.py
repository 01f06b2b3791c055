"""`psp-gateway webhooks list | reprocess`: stored processor events, and applying them again (one, or
every unmatched or failed one) against the configured database, audited as `cli:<os user>`."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from gateway import errors, operations
from gateway.commands import output
from gateway.commands.session import Session, bounded_int, json_flag, run, validated
from gateway.db import store
from gateway.models import Reason
from gateway.settings import Settings

STATUSES = ("received", "applied", "unmatched", "failed", "ignored")
PAGE = 500


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("webhooks", help="list stored webhook events and apply them again",
                            description="Stored processor webhook events in the configured database. An event "
                                        "that names a payment the gateway did not know is `unmatched` until "
                                        "reprocessed; one that failed to apply is `failed`.")
    actions = parser.add_subparsers(dest="action", required=True)
    json = json_flag()

    listing = actions.add_parser("list", parents=[json], help="webhook events, newest first")
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--processor", metavar="ID")
    listing.add_argument("--limit", type=bounded_int(1, 500), default=50, help="at most this many (default 50)")
    listing.set_defaults(operate=list_events)

    reprocess = actions.add_parser(
        "reprocess", parents=[json], help="apply one event again, or every unmatched or failed one",
        description="Apply stored events again, now: one by its id (from `webhooks list`), or with --all "
                    "the newest --limit events with --status unmatched or failed, applied oldest first.")
    reprocess.add_argument("id", nargs="?", help="the event's id (a number), or --all")
    reprocess.add_argument("--all", action="store_true", help="every event with --status")
    reprocess.add_argument("--status", choices=("unmatched", "failed"), help="with --all: which events")
    reprocess.add_argument("--processor", metavar="ID", help="with --all: only this processor's")
    reprocess.add_argument("--limit", type=bounded_int(1, 10_000), default=1_000,
                           help="with --all: at most this many (default 1000)")
    reprocess.add_argument("--reason", required=True, type=validated(Reason),
                           help="why, for the audit (required)")
    reprocess.set_defaults(operate=reprocess_events)


def list_events(args: argparse.Namespace, settings: Settings) -> int:
    async def command(s: Session) -> int:
        async with s.pool.acquire() as conn:
            rows = await store.list_webhook_events(conn, status=args.status, processor=args.processor,
                                                   starting_after=None, limit=args.limit)
        events, has_more = rows[:args.limit], len(rows) > args.limit
        if args.json:
            output.print_json({"data": [dict(r) for r in events], "has_more": has_more})
            return 0
        if not events:
            print("no webhook events match")
            return 0
        print(output.table(["id", "processor", "event id", "type", "status", "attempts", "received", "last error"],
                           [[e["id"], e["processor_id"], e["event_id"], e["event_type"], e["status"], e["attempts"],
                             e["received_at"], e["last_error"]] for e in events]))
        if has_more:
            print(f"more than {args.limit}: narrow with --status or --processor, or raise --limit")
        return 0
    return run(settings, command, json_output=args.json)


def reprocess_events(args: argparse.Namespace, settings: Settings) -> int:
    if bool(args.id) == args.all:
        return output.usage_error("webhooks reprocess: give an event id or --all, not both")
    if args.all and not args.status:
        return output.usage_error("webhooks reprocess --all: say which events, with --status unmatched or failed")
    if args.id and (args.status or args.processor):
        return output.usage_error("webhooks reprocess: --status and --processor go with --all")
    if args.id:
        return run(settings, lambda s: _reprocess_one(s, args), json_output=args.json)
    return run(settings, lambda s: _reprocess_all(s, args), json_output=args.json)


async def _reprocess_one(s: Session, args: argparse.Namespace) -> int:
    result = await operations.reprocess_webhook_event(s.pool, args.id, actor=s.actor, reason=args.reason,
                                                      recheck_seconds=s.settings.pending_poll_seconds,
                                                      request_id=s.request_id, adapters=s.adapters)
    if args.json:
        output.print_json(result)
    else:
        print(f"webhook event {result['id']} ({result['event_id']}): {result['status']}")
    return 0


async def _reprocess_all(s: Session, args: argparse.Namespace) -> int:
    ids = await _event_ids(s, args.status, args.processor, args.limit)
    results = []
    # One at a time, oldest first: two events about one refund then land in the order they came.
    with tqdm(total=len(ids), desc="reprocessing", unit="event", file=sys.stderr, disable=None) as bar:
        for event_id in ids:
            try:
                results.append(await operations.reprocess_webhook_event(
                    s.pool, event_id, actor=s.actor, reason=args.reason,
                    recheck_seconds=s.settings.pending_poll_seconds, request_id=s.request_id,
                    adapters=s.adapters))
            except errors.NotFound as e:  # taken by a worker meanwhile: it applies it
                results.append({"id": event_id, "error": e.code, "detail": e.detail})
            bar.update()
    counts: dict[str, int] = {}
    for r in results:
        counts[r.get("status", "skipped")] = counts.get(r.get("status", "skipped"), 0) + 1
    if args.json:
        output.print_json({"results": results, "count": len(results), "statuses": counts})
        return 0
    summary = ", ".join(f"{status} {count}" for status, count in sorted(counts.items()))
    print(f"reprocessed {len(results)} {args.status} webhook event{'' if len(results) == 1 else 's'}"
          + (f": {summary}" if summary else ""))
    if results:
        print(output.table(["id", "event id", "now"],
                           [[r["id"], r.get("event_id"), r.get("status") or f"skipped: {r['detail']}"]
                            for r in results]))
    return 0


async def _event_ids(s: Session, status: str, processor: str | None, limit: int) -> list[int]:
    """Up to `limit` ids of events with `status`, oldest first (of the newest `limit`)."""
    ids: list[int] = []
    async with s.pool.acquire() as conn:
        while len(ids) < limit:
            page = min(PAGE, limit - len(ids))
            rows = await store.list_webhook_events(conn, status=status, processor=processor,
                                                   starting_after=ids[-1] if ids else None, limit=page)
            ids += [r["id"] for r in rows[:page]]
            if len(rows) <= page:
                break
    return sorted(ids)
