"""The console page, rendered from rows already read: every value from the database goes through
html.escape, since invoice ids, reasons and processor messages come from outside."""

from __future__ import annotations

import functools
from datetime import datetime, timezone
from html import escape
from importlib import resources
from string import Template
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

import orjson

from gateway.auth import CONSOLE_PREFIX
from gateway.console import chart
from gateway.domain import money

Row = Mapping[str, Any]


@functools.cache
def asset(name: str) -> str:
    """A file shipped beside this module (the template, the script, the style sheet)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _text(value: Any) -> str:
    return "" if value is None else escape(str(value))


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _amount(amount: int, currency: str) -> str:
    try:
        return escape(money.format_amount(amount, currency))
    except ValueError:  # a currency the gateway no longer knows: show the minor units as they are
        return escape(f"{amount} {currency} (minor units)")


def _json(value: Any, limit: int = 300) -> str:
    text = orjson.dumps(value).decode() if value else ""
    return escape(text if len(text) <= limit else text[:limit] + "…")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} seconds"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str) -> str:
    """Cells must already be escaped."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _reason_input() -> str:
    return ('<label>Reason <input name="reason" required minlength="3" maxlength="1000" '
            'placeholder="why (kept in the audit log)"></label>')


def _refund(refund: Row, events: Sequence[Row], attempts: Sequence[Row], history_cap: int) -> str:
    rid = escape(refund["id"])
    url = f"{CONSOLE_PREFIX}/refunds/{escape(quote(refund['id'], safe=''))}"
    facts = [("Processor", _text(refund["processor_id"])), ("Amount", _amount(refund["amount"], refund["currency"])),
             ("Invoice", _text(refund["invoice_id"])), ("Credit note", _text(refund["credit_note_id"])),
             ("Payment", _text(refund["transaction_id"])), ("Processor's refund id", _text(refund["psp_refund_id"])),
             ("Origin", _text(refund["origin"])), ("External reference", _text(refund["external_reference"])),
             ("Retries refund", _text(refund["previous_refund_id"])),
             ("Failure", _text(refund["failure_code"])), ("Message", _text(refund["failure_message"])),
             ("Next action", _text(refund["next_action"])), ("Processor calls", _text(refund["attempts"])), ("Created", _when(refund["created_at"])),
             ("Last change", _when(refund["updated_at"]))]
    facts_html = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts if value)
    event_rows = [(_when(e["created_at"]), _text(e["event"]),
                   f'{_text(e["from_status"]) or "–"} / {_text(e["from_stage"]) or "–"}',
                   f'{_text(e["to_status"])} / {_text(e["to_stage"])}', _json(e["detail"])) for e in events]
    attempt_rows = [(_when(a["started_at"]), _text(a["call"]), _text(a["outcome"]), _text(a["error_class"]),
                     _text(a["processor_code"]), _text(a["latency_ms"]), _text(a["message"])) for a in attempts]
    capped = (f"<p class='help'>The last {history_cap} of each are shown.</p>"
              if max(len(events), len(attempts)) >= history_cap else "")
    history = (f"<details class='history'><summary>History: {len(events)} events, {len(attempts)} processor calls"
               f"</summary>{capped}<h4>Events</h4>"
               + _table(("When", "Event", "From", "To", "Detail"), event_rows, "events")
               + "<h4>Processor calls</h4>"
               + (_table(("Started", "Call", "Outcome", "Error", "Processor code", "ms", "Message"), attempt_rows,
                         "attempts") if attempt_rows else "<p class='help'>None.</p>")
               + "</details>")
    form = ("<form class='action'>" + _reason_input()
            + f"<button type='submit' class='replay' data-url='{url}/replay' data-fields='reason'>Replay</button>"
            "<span class='resolve'><select name='resolution' aria-label='Resolution'>"
            "<option value='failed'>failed</option><option value='canceled'>canceled</option>"
            "<option value='refunded_offline'>refunded offline</option></select>"
            "<input name='external_reference' maxlength='255' aria-label='External reference' "
            "placeholder='bank transfer reference (refunded offline)'>"
            f"<button type='submit' class='resolve' data-url='{url}/resolve' "
            "data-fields='reason resolution external_reference'>Resolve</button></span>"
            "<output aria-live='polite'></output></form>")
    return (f"<article class='refund' data-refund-id='{rid}'>"
            f"<h3><code>{rid}</code> <span class='status {_text(refund['status'])}' data-field='status'>"
            f"{_text(refund['status'])}</span> <span class='stage' data-field='stage'>{_text(refund['stage'])}</span>"
            f"</h3><dl>{facts_html}</dl>{history}{form}</article>")


def _webhook_event(event: Row) -> tuple[str, ...]:
    url = f"{CONSOLE_PREFIX}/webhook-events/{event['id']}/reprocess"
    form = ("<form class='action'>" + _reason_input()
            + f"<button type='submit' class='reprocess' data-url='{url}' data-fields='reason'>Reprocess</button>"
            "<output aria-live='polite'></output></form>")
    return (_text(event["id"]), _when(event["received_at"]), _text(event["processor_id"]),
            f"<code>{_text(event['event_id'])}</code>", _text(event["event_type"]),
            f"<span data-field='status'>{_text(event['status'])}</span>", _text(event["attempts"]),
            _text(", ".join(event["match_keys"] or [])), _text(event["last_error"]), form)


def _finding(finding: Row) -> tuple[str, ...]:
    facts = finding["processor"] or finding["gateway"] or {}
    amount = (_amount(facts["amount"], facts["currency"]) if isinstance(facts.get("amount"), int)
              and isinstance(facts.get("currency"), str) else "")
    return (_text(finding["id"]), _when(finding["created_at"]), _text(finding["processor_id"]),
            _text(finding["kind"]), f"<code>{_text(finding['refund_id'])}</code>",
            f"<code>{_text(finding['psp_refund_id'])}</code>", amount, _text(finding["action"]),
            _json({"gateway": finding["gateway"], "processor": finding["processor"]}))


def render(*, client_id: str, now: datetime, stuck_after_seconds: float, stuck: Sequence[Row], stuck_has_more: bool,
           stuck_counts: Mapping[str, int], events: Mapping[str, Sequence[Row]],
           attempts: Mapping[str, Sequence[Row]], history_cap: int, webhook_events: Sequence[Row],
           webhook_has_more: bool, processors: Sequence[str], current_hour: datetime, hours: int,
           outcomes: Iterable[Row], findings: Sequence[Row], findings_has_more: bool, awaiting: Sequence[Row],
           awaiting_has_more: bool) -> str:
    stuck_total = sum(stuck_counts.values())
    counts = "".join(f"<li><code>{escape(reason)}</code>: {n}</li>" for reason, n in stuck_counts.items())
    more = (f"<p class='help'>The newest {len(stuck)} are shown; all of them: "
            "<code>GET /admin/refunds?stuck=true</code>.</p>" if stuck_has_more else "")
    stuck_html = (more + "".join(_refund(r, events.get(r["id"], ()), attempts.get(r["id"], ()), history_cap)
                                 for r in stuck)) if stuck else "<p class='empty'>No stuck refunds.</p>"
    webhooks_html = (_table(("#", "Received", "Processor", "Event", "Type", "Status", "Tries", "Names",
                             "Last error", ""), map(_webhook_event, webhook_events), "webhook-events")
                     if webhook_events else "<p class='empty'>No unmatched or failed webhook events.</p>")
    if webhook_has_more:
        webhooks_html += ("<p class='help'>Only the newest are shown: "
                          "<code>GET /admin/webhook-events?status=unmatched</code> (or failed) lists them all.</p>")
    findings_html = (_table(("#", "Found", "Processor", "Kind", "Refund", "Processor's refund", "Amount", "Action",
                             "Both sides"), map(_finding, findings), "findings")
                     if findings else "<p class='empty'>No open findings.</p>")
    if findings_has_more:
        findings_html += ("<p class='help'>Only the newest are shown: "
                          "<code>GET /admin/reconciliation/findings?status=open</code> lists them all.</p>")
    awaiting_html = (_table(("Refund", "Waiting", "Amount", "Processor", "Invoice", "Asked by"),
                            [(f"<code>{_text(r['id'])}</code>", escape(_duration((now - r["created_at"]).total_seconds())),
                              _amount(r["amount"], r["currency"]), _text(r["processor_id"]), _text(r["invoice_id"]),
                              _text(r["requested_by"])) for r in awaiting], "awaiting")
                     if awaiting else "<p class='empty'>No refund awaits approval.</p>")
    if awaiting_has_more:
        awaiting_html += ("<p class='help'>Only the newest are shown: "
                          "<code>GET /admin/refunds?status=pending</code> lists them with their stage.</p>")
    buckets = chart.hour_buckets(current_hour, hours)
    by_processor = chart.counts_by_processor(outcomes)
    names = [*processors, *sorted(set(by_processor) - set(processors))]
    charts = []
    for name in names:
        counts_of = by_processor.get(name, {})
        summary = ", ".join(f"{n} {chart.LABELS[o]}" for o, n in chart.totals(buckets, counts_of).items())
        charts.append(f"<figure class='chart'><figcaption><strong>{escape(name)}</strong>: {escape(summary)}"
                      f"</figcaption>{chart.svg(name, buckets, counts_of)}</figure>")
    legend = ("<ul class='legend'>" + "".join(f"<li><span class='swatch {o}'></span>{escape(chart.LABELS[o])}</li>"
                                              for o in chart.OUTCOMES) + "</ul>")
    return Template(asset("page.html")).substitute(
        client=escape(client_id), generated_at=_when(now), stuck_total=stuck_total,
        stuck_after=escape(_duration(stuck_after_seconds)),
        stuck_counts=f"<ul class='reasons'>{counts}</ul>" if counts else "", stuck=stuck_html,
        webhook_total=f"{len(webhook_events)}{'+' if webhook_has_more else ''}", webhooks=webhooks_html,
        findings_total=f"{len(findings)}{'+' if findings_has_more else ''}", findings=findings_html,
        awaiting_total=f"{len(awaiting)}{'+' if awaiting_has_more else ''}", awaiting=awaiting_html,
        hours=hours, legend=legend, charts="".join(charts) or "<p class='empty'>No processors configured.</p>")
