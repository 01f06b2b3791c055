"""structlog set-up: JSON in production, readable in a dev console; secrets and card numbers redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog

REDACTED = "[redacted]"
# Field names whose values are secrets: matched on whole words of the name (api_key, webhook_secret,
# card_number), so that `company` or `expand` stay readable.
_SECRET_WORDS = frozenset({"password", "passwd", "secret", "secrets", "token", "signature", "authorization",
                           "card", "pan", "cvc", "cvv", "apikey", "credentials"})
_SECRET_NAMES = frozenset({"api_key", "x_api_key", "database_url", "dsn"})
# Card-number-like digit runs (13-19 digits, spaces or dashes allowed), bearer/basic credentials,
# key-shaped strings, passwords in URLs and `password=...` in free text.
# Digits, not word boundaries, delimit it: "evt_4111111111111111" holds a card number too.
_PAN = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
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


def scrub_text(text: str) -> str:
    def pan(m: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        return REDACTED if _luhn_ok(digits) else m.group(0)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1).capitalize()} {REDACTED}", text)
    text = _KEYLIKE.sub(REDACTED, text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    text = _ASSIGNED_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _PAN.sub(pan, text)


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


def _redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    return {k: scrub(v, k) if k != "event" else scrub_text(str(v)) for k, v in event.items()}


class _StdlibHandler(logging.StreamHandler):
    """The one handler configure() puts on the root logger (and replaces when called again)."""


def configure(log_format: str = "json", level: str = "info", stream: Any = None) -> None:
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=False) if log_format == "console"
                     else structlog.processors.JSONRenderer())
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
