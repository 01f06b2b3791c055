"""The money invariants a chaos run ends with: what the processors did, what the gateway recorded and
what the billing core was told must agree. Each check returns the violations it found, as text."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from tests.chaos.billing import Command

FINAL = {"succeeded", "failed", "canceled", "refunded_offline"}
DUPLICATE = "duplicate_at_processor"


@dataclass
class ProcessorRefund:
    """A refund (or void) as the processor's own books show it."""

    processor: str
    psp_reference: str  # the original payment
    refund_id: str | None  # ours, as the processor kept it (metadata or TransactionID)
    amount: int
    succeeded: bool


def stripe_refunds(world: Any) -> list[ProcessorRefund]:
    charges = world.charges
    return [ProcessorRefund("stripe", r["charge"], (r.get("metadata") or {}).get("refund_id"), r["amount"],
                            r["status"] == "succeeded") for r in world.refunds.values() if r["charge"] in charges]


def bridgepay_refunds(world: Any) -> list[ProcessorRefund]:
    return [ProcessorRefund("bridgepay", sale.gateway_trans_id, r.transaction_id or None, r.amount, True)
            for sale in world.sales.values() for r in sale.reversals]


def money(transactions: Iterable[Mapping[str, Any]], refunds: Iterable[Mapping[str, Any]],
          at_processor: list[ProcessorRefund]) -> list[str]:
    """Per transaction: the processor's refunded total equals the gateway's succeeded total and its
    refunded_amount; nothing is over-refunded on either side; no refund ran twice at a processor.
    A payment with a refund the gateway flagged as carried out twice is left to duplicates_flagged
    (and to a person): its totals differ by design."""
    violations = []
    succeeded: Counter[str] = Counter()
    flagged = {r["transaction_id"] for r in refunds if r["failure_code"] == DUPLICATE}
    flagged_refunds = {r["id"] for r in refunds if r["failure_code"] == DUPLICATE}
    for r in refunds:
        if r["status"] in ("succeeded", "refunded_offline"):
            succeeded[r["transaction_id"]] += r["amount"]
    processor_total: Counter[tuple[str, str]] = Counter()
    for p in at_processor:
        if p.succeeded:
            processor_total[(p.processor, p.psp_reference)] += p.amount
    for tx in transactions:
        at_psp = processor_total[(tx["processor_id"], tx["psp_reference"])]
        ours = succeeded[tx["id"]]
        if tx["id"] in flagged:
            continue
        if at_psp != ours or tx["refunded_amount"] != ours:
            violations.append(f"{tx['id']} ({tx['processor_id']} {tx['psp_reference']}): processor refunded {at_psp}, "
                              f"gateway succeeded {ours}, transaction refunded_amount {tx['refunded_amount']}")
        if tx["refunded_amount"] + tx["reserved_amount"] > tx["amount"] or at_psp > tx["amount"]:
            violations.append(f"{tx['id']}: over-refunded (amount {tx['amount']}, refunded {tx['refunded_amount']}, "
                              f"reserved {tx['reserved_amount']}, at the processor {at_psp})")
    executions = Counter(p.refund_id for p in at_processor if p.refund_id)
    violations += [f"refund {rid} executed {n} times at the processor" for rid, n in executions.items()
                   if n > 1 and rid not in flagged_refunds]
    return violations


def duplicates_flagged(refunds: Iterable[Mapping[str, Any]], at_processor: list[ProcessorRefund]) -> list[str]:
    """A refund the processor carried out more than once needs attention in the gateway with the
    code duplicate_at_processor (never succeeded, never anything quieter); and a refund flagged so
    was really carried out more than once."""
    executions = Counter(p.refund_id for p in at_processor if p.refund_id and p.succeeded)
    by_id = {r["id"]: r for r in refunds}
    violations = []
    for refund_id, n in executions.items():
        r = by_id.get(refund_id)
        if n > 1 and (r is None or (r["status"], r["failure_code"]) != ("requires_attention", DUPLICATE)):
            seen = "unknown to the gateway" if r is None else f"{r['status']} ({r['failure_code']})"
            violations.append(f"refund {refund_id} executed {n} times at the processor but is {seen}")
    violations += [f"refund {r['id']} is flagged {DUPLICATE} but ran {executions[r['id']]} time(s)"
                   for r in refunds if r["failure_code"] == DUPLICATE and executions[r["id"]] < 2]
    return violations


def final_states(refunds: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every refund is final, or waits for an operator with a reason."""
    violations = []
    for r in refunds:
        if r["status"] in FINAL:
            continue
        if r["status"] == "requires_attention" and (r["failure_code"] or r["failure_message"]):
            continue
        violations.append(f"refund {r['id']} ended {r['status']}/{r['stage']} "
                          f"(failure_code {r['failure_code']!r})")
    return violations


def webhooks(sent_event_ids: Iterable[str], deliveries: Iterable[Mapping[str, Any]],
             stored: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every event the processor sent is stored once, and no delivery was given up on."""
    stored_counts = Counter(row["event_id"] for row in stored)
    sent = set(sent_event_ids)
    violations = [f"event {e} was sent but is not stored" for e in sorted(sent - set(stored_counts))]
    violations += [f"event {e} stored {n} times" for e, n in stored_counts.items() if n > 1]
    violations += [f"delivery {d['id']} of {d['event_id']} ended {d['status']} after {d['attempts']} attempts"
                   for d in deliveries if d["status"] not in ("delivered", "dropped")]
    return violations


def callbacks(refunds: Iterable[Mapping[str, Any]], outbox: Iterable[Mapping[str, Any]],
              received: Mapping[str, set[int]], last_status: Mapping[str, tuple[int, str]]) -> list[str]:
    """Every state change the gateway published reached the billing core, and the last thing the
    billing core heard about each refund is its final state."""
    violations = []
    published: dict[str, set[int]] = defaultdict(set)
    for row in outbox:
        published[row["refund_id"]].add(row["version"])
        if row["delivered_at"] is None:
            violations.append(f"callback {row['refund_id']} v{row['version']} never delivered")
    for r in refunds:
        missing = published[r["id"]] - received.get(r["id"], set())
        if missing:
            violations.append(f"refund {r['id']}: versions {sorted(missing)} never reached the billing core")
        heard = last_status.get(r["id"])
        if heard is None or heard[1] != r["status"]:
            violations.append(f"refund {r['id']} is {r['status']} but the billing core last heard {heard}")
    return violations


def load_happened(*, commands: Sequence[Command], minimum_commands: int, processors: Iterable[str],
                  transactions: Iterable[Mapping[str, Any]], refunds: Iterable[Mapping[str, Any]],
                  faults_fired: Mapping[str, int], faults_expected: Iterable[str], webhooks_stored: int,
                  kills: int, kills_in_flight: int) -> list[str]:
    """The run did what it set out to do: with nothing sent, every other check passes on empty lists.
    Commands sent, refunds succeeded at each processor, every expected fault fired, webhooks stored,
    and (if any kill was asked for) a kill landed while refund commands were in flight."""
    violations = []
    if len(commands) < minimum_commands:
        violations.append(f"{len(commands)} refund commands sent, fewer than the {minimum_commands} expected")
    processor_of = {tx["id"]: tx["processor_id"] for tx in transactions}
    succeeded = Counter(processor_of.get(r["transaction_id"]) for r in refunds if r["status"] == "succeeded")
    violations += [f"no refund succeeded at {p}" for p in processors if not succeeded[p]]
    violations += [f"fault {kind!r} never fired" for kind in faults_expected if not faults_fired.get(kind)]
    if webhooks_stored <= 0:
        violations.append("no webhook event was stored")
    if kills > 0 and kills_in_flight <= 0:
        violations.append(f"none of the {kills} kills of the gateway happened with refund commands in flight")
    return violations


def answers(commands: Iterable[Command], refunds_by_id: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Duplicates got the first command's refund back (same key: the same answer; same credit note:
    the same refund, a clean conflict, or a retry of a declined one that names it), every command
    got a final answer, and every refund the billing core was given exists."""
    violations = []
    by_key: dict[str, list[Command]] = defaultdict(list)
    by_note: dict[tuple[str, str], set[str]] = defaultdict(set)
    for c in commands:
        if c.status is None:
            violations.append(f"command {c.key} ({c.kind}) never got a final answer")
            continue
        if c.status >= 500:
            violations.append(f"command {c.key} answered {c.status}")
        by_key[c.key].append(c)
        if c.refund_id is not None:
            if c.refund_id not in refunds_by_id:
                violations.append(f"command {c.key} was given refund {c.refund_id}, which does not exist")
            by_note[(c.transaction_id, c.body["credit_note_id"])].add(c.refund_id)
    for key, same in by_key.items():
        if len({(c.status, c.refund_id) for c in same}) > 1:
            violations.append(f"Idempotency-Key {key} answered differently: {[(c.status, c.refund_id) for c in same]}")
    for (_, note), ids in by_note.items():
        # A credit note has more than one refund only as retries: each after a failed or canceled one.
        rows = sorted((refunds_by_id[i] for i in ids if i in refunds_by_id), key=lambda r: r["created_at"])
        chained = all(later.get("previous_refund_id") == earlier["id"] and earlier["status"] in ("failed", "canceled")
                      for earlier, later in zip(rows, rows[1:]))
        if not chained:
            violations.append(f"credit note {note} has {len(ids)} refunds that are not retries: {sorted(ids)}")
    return violations
