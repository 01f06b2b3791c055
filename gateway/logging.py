"""structlog set-up: JSON in production, readable in a dev console; secrets and card numbers redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit
from xml.sax.saxutils import escape as xml_escape

import orjson
import structlog

REDACTED = "[redacted]"
# Field names whose values are secrets: matched on whole words of the name (api_key, webhook_secret,
# card_number), so that `company` or `expand` stay readable.
_SECRET_WORDS = frozenset({"password", "passwd", "secret", "secrets", "token", "signature", "authorization",
                           "card", "pan", "cvc", "cvv", "apikey", "credentials"})
_SECRET_NAMES = frozenset({"api_key", "x_api_key", "database_url", "dsn"})
# Runs of digit groups joined by one space or dash: a card number is 13 to 19 digits of consecutive
# groups that pass Luhn ("4111 1111 1111 1111", "CN-4111111111111111-2"). Digits, not word
# boundaries, delimit a run: "evt_4111111111111111" holds a card number too.
_DIGIT_RUN = re.compile(r"\d+(?:[ -]\d+)*")
# 13 digits, each pair at most one space or dash apart: text without them holds no card number
# (checked first, in C: most text has none).
_THIRTEEN_DIGITS = re.compile(r"\d(?:[ -]?\d){12}")
_DIGIT_GROUP = re.compile(r"\d+")
# A hash or a MAC written in hex (a signature header, a digest): 32 or more hex characters, some of
# them letters, standing alone. Its digit runs are chance, not card numbers: one 64-character MAC
# in about sixty holds 13 or more digits in a row that pass Luhn.
_HEX_TOKEN = re.compile(r"(?<![0-9A-Za-z])(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{32,}(?![0-9A-Za-z])")
# Credential elements of the wire formats (BridgePay's SOAP, as XML or escaped inside XML).
_CREDENTIAL_ELEMENT = re.compile(
    r"(?i)((?:<|&lt;)(?:\w+:)?(?:password|passwd|pwd|username|user|userid)(?:\s[^<>&]*)?(?:>|&gt;))([^<&]*)")
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+[^\s,;\"']+")
_KEYLIKE = re.compile(r"\b(?:sk|rk|pk|whsec)_[A-Za-z0-9_]{6,}\b")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")
_ASSIGNED_SECRET = re.compile(r"(?i)\b(password|passwd|secret|api[_-]?key|token)(\"?\s*[:=]\s*\"?)[^\s,;\"'&]+")


def _luhn_ok(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total, alt = total + d, not alt
    return total % 10 == 0


def _is_secret_name(key: str) -> bool:
    name = key.lower().replace("-", "_")
    if name in _SECRET_NAMES:
        return True
    words = set(name.split("_"))
    if words & {"id", "code"} and name.endswith(("_id", "_code")):
        return False  # card_id, failure_code: references, not secrets
    return bool(words & _SECRET_WORDS)


def card_spans(text: str) -> list[tuple[int, int]]:
    """Where `text` holds a card number: consecutive digit groups of 13 to 19 digits passing Luhn,
    outside hex hashes and MACs."""
    if _THIRTEEN_DIGITS.search(text) is None:
        return []
    spans = []
    hex_tokens = [m.span() for m in _HEX_TOKEN.finditer(text)]
    for run in _DIGIT_RUN.finditer(text):
        if any(start <= run.start() and run.end() <= end for start, end in hex_tokens):
            continue
        groups = list(_DIGIT_GROUP.finditer(run.group(0)))
        i = 0
        while i < len(groups):
            found = None
            digits = ""
            for j in range(i, len(groups)):
                digits += groups[j].group(0)
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and _luhn_ok(digits):
                    found = j  # the longest from here
            if found is None:
                i += 1
                continue
            spans.append((run.start() + groups[i].start(), run.start() + groups[found].end()))
            i = found + 1
    return spans


def has_card_number(text: str) -> bool:
    return bool(card_spans(text))


# Every configured secret (processor keys and passwords, webhook and callback secrets, client keys,
# the database password), redacted by value wherever it turns up: a processor may echo what it was
# sent, in any shape. Registered once the settings are known (register_secrets).
_KNOWN_SECRETS: list[str] = []
_SHORTEST_SECRET = 6  # shorter values would redact ordinary words


def without_credentials(url: str) -> str:
    """A URL as it may be stored or shown: without its user part (a password, or a key given as the
    user name), anything secret-shaped in the rest redacted."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub_text(url)
    if "@" in parts.netloc:
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    return scrub_text(urlunsplit(parts))


def register_secrets(values: Iterable[str]) -> None:
    """Redact these values (and their XML- and URL-escaped forms) from now on."""
    found = set(_KNOWN_SECRETS)
    for value in values:
        if value and len(value) >= _SHORTEST_SECRET:
            found.update({value, xml_escape(value), quote(value, safe=""), quote_plus(value)})
    _KNOWN_SECRETS[:] = sorted(found, key=len, reverse=True)


def redact_known(text: str) -> str:
    """`text` with every configured secret replaced (by value, in any escaping)."""
    for secret in _KNOWN_SECRETS:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def scrub_stored(text: str) -> str:
    """What no stored text may hold, whatever its shape: a configured secret, a wire format's
    credential element, a card number. (scrub_text also redacts what merely looks like a key.)"""
    text = redact_known(text)
    text = _CREDENTIAL_ELEMENT.sub(lambda m: f"{m.group(1)}{REDACTED}" if m.group(2) else m.group(0), text)
    for start, end in reversed(card_spans(text)):
        text = text[:start] + REDACTED + text[end:]
    return text


def scrub_stored_value(value: Any) -> Any:
    """scrub_stored over the strings of a JSON-shaped value."""
    if isinstance(value, str):
        return scrub_stored(value)
    if isinstance(value, Mapping):
        return {scrub_stored(str(k)): scrub_stored_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_stored_value(v) for v in value]
    return value


def scrub_text(text: str) -> str:
    text = scrub_stored(text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1).capitalize()} {REDACTED}", text)
    text = _KEYLIKE.sub(REDACTED, text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    return _ASSIGNED_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)


def scrub(value: Any, key: str = "") -> Any:
    if key and _is_secret_name(key):
        return REDACTED
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        digits = str(abs(value))
        return REDACTED if 13 <= len(digits) <= 19 and _luhn_ok(digits) else value
    if isinstance(value, Mapping):
        return {str(k): scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [scrub(v) for v in value]
    return value


# Fields whose values the gateway makes or has checked on the way in (its ids, a client's id from
# the configuration, states, amounts, a request id it accepted only when it needs no redaction):
# never scrubbed, so that a log line pays for redaction only where outside text can be.
_OWN_FIELDS = frozenset({"timestamp", "level", "logger", "request_id", "client_id", "refund_id", "transaction_id",
                         "previous_refund_id", "outbox_id", "processor", "status", "from_status", "stage",
                         "from_stage", "cause", "amount", "currency", "version", "attempts", "calls", "count"})
# Event names already scrubbed: a structlog event name is a constant, so each is scrubbed once.
_SCRUBBED_EVENTS: dict[str, str] = {}


def _scrubbed_event(value: Any) -> str:
    text = str(value)
    found = _SCRUBBED_EVENTS.get(text)
    if found is None:
        found = scrub_text(text)
        if len(_SCRUBBED_EVENTS) < 1_000 and len(text) <= 64:  # a library's message varies: not kept
            _SCRUBBED_EVENTS[text] = found
    return found


def _redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    return {k: v if k in _OWN_FIELDS else _scrubbed_event(v) if k == "event" else scrub(v, k)
            for k, v in event.items()}


def _json(event: dict[str, Any], **_: Any) -> str:
    """A log line as JSON, by orjson (anything it cannot encode, as its str())."""
    return orjson.dumps(event, default=str).decode()


class _StdlibHandler(logging.StreamHandler):
    """The one handler configure() puts on the root logger (and replaces when called again)."""


def configure(log_format: str = "json", level: str = "info", stream: Any = None) -> None:
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=False) if log_format == "console"
                     else structlog.processors.JSONRenderer(serializer=_json))
    # The libraries' own loggers (aiohttp, asyncpg, httpx) go through the same redaction and format:
    # aiohttp's parser errors quote the raw header line, API key included. Their warnings and
    # errors only: their info lines are one per request.
    handler = _StdlibHandler(stream or sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.contextvars.merge_contextvars, structlog.stdlib.add_log_level,
                           structlog.stdlib.add_logger_name,
                           structlog.processors.TimeStamper(fmt="iso", utc=True)],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, _redact, renderer]))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level.upper()]))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
