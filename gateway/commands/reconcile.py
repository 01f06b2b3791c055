"""`psp-gateway reconcile --processor ID --since DATE [--until DATE] [--json]`: one reconciliation run
(gateway.reconcile) against the configured database, and its findings printed."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

from gateway import errors, reconcile
from gateway.commands import output
from gateway.commands.session import Session, json_flag, run, validated
from gateway.models import FindingOut, Moment
from gateway.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "reconcile", parents=[json_flag()], help="hold the gateway's refunds against a processor's for a period",
        description="Lists the processor's refunds made in [--since, --until) and compares them with the "
                    "gateway's, refund by refund. Each disagreement is stored as a finding (see "
                    "GET /admin/reconciliation/findings). Nothing is sent to the processor; a refund the "
                    "processor made that the gateway never recorded is recorded against its payment.")
    parser.add_argument("--processor", required=True, metavar="ID")
    parser.add_argument("--since", required=True, type=validated(Moment), help="a date or an ISO 8601 time (UTC)")
    parser.add_argument("--until", type=validated(Moment), help="a date or an ISO 8601 time (UTC); default now")
    parser.set_defaults(operate=reconcile_command)


def reconcile_command(args: argparse.Namespace, settings: Settings) -> int:
    async def command(s: Session) -> int:
        adapter = s.adapters.get(args.processor)
        if adapter is None:
            raise errors.InvalidRequest(f"no processor {args.processor!r} in this configuration",
                                        code="unknown_processor")
        until = args.until or datetime.now(timezone.utc)
        summary = await reconcile.run(s.pool, adapter, since=args.since, until=until)
        async with s.pool.acquire() as conn:
            rows = await conn.fetch("SELECT * FROM reconciliation_findings WHERE run_id = $1 ORDER BY id",
                                    summary.run_id) if summary.status == "finished" else []
        findings = [FindingOut.from_row(r) for r in rows]
        if args.json:
            output.print_json({**summary.as_json(), "findings": [f.model_dump(mode="json") for f in findings]})
        else:
            print(output.fields(f"reconciliation run {summary.run_id}", [
                ("processor", summary.processor_id), ("period", f"{summary.since.isoformat()} to "
                                                                 f"{summary.until.isoformat()}"),
                ("status", summary.status), ("error", summary.error),
                ("processor's refunds", summary.processor_refunds), ("gateway's refunds", summary.gateway_refunds),
                ("new findings", sum(summary.new_findings.values()))]))
            if findings:
                print(output.table(["id", "kind", "refund", "psp refund", "action"],
                                   [[f.id, f.kind, f.refund_id, f.psp_refund_id, f.action] for f in findings]))
        return 0 if summary.status == "finished" else 1
    return run(settings, command, json_output=args.json)

