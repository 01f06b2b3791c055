"""structlog set-up: JSON in production, readable in a dev console; secrets and card numbers redacted."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(r"(api[_-]?key|authorization|password|secret|token|signature|card|pan|cvc|cvv)", re.I)
# Card-number-like digit runs (13-19 digits, spaces or dashes allowed), bearer tokens and key-shaped strings.
_PAN = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_BEARER = re.compile(r"(?i)\bbearer\s+[^\s,;\"']+")
_KEYLIKE = re.compile(r"\b(?:sk|rk|pk|whsec)_[A-Za-z0-9_]{6,}\b")


def _luhn_ok(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total, alt = total + d, not alt
    return total % 10 == 0


def scrub_text(text: str) -> str:
    def pan(m: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        return REDACTED if _luhn_ok(digits) else m.group(0)
    text = _BEARER.sub("Bearer " + REDACTED, text)
    text = _KEYLIKE.sub(REDACTED, text)
    return _PAN.sub(pan, text)


def scrub(value: Any, key: str = "") -> Any:
    if key and _SECRET_KEY.search(key) and not key.endswith(("_id", "_code")):
        return REDACTED
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def _redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    return {k: scrub(v, k) if k != "event" else scrub_text(str(v)) for k, v in event.items()}


def configure(log_format: str = "json", level: str = "info", stream: Any = None) -> None:
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=False) if log_format == "console"
                     else structlog.processors.JSONRenderer())
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
