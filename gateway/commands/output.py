"""How the operator's commands print: aligned tables and key-value blocks for people, JSON for
programs (`--json`), errors as one line on stderr."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import orjson

from gateway.domain import money


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")


def error(message: str) -> None:
    print(f"psp-gateway: {message}", file=sys.stderr)


def usage_error(message: str) -> int:
    """Arguments that do not go together: exit 2, as argparse does."""
    error(message)
    return 2


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, datetime):
        return when(value)
    return str(value).replace("\n", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; None prints as `-`."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def fields(title: str, pairs: Sequence[tuple[str, Any]]) -> str:
    """A titled block of `name  value` lines."""
    width = max(len(name) for name, _ in pairs)
    return "\n".join([title, *(f"  {name.ljust(width)}  {cell(value)}" for name, value in pairs)])


def indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def when(moment: datetime) -> str:
    """UTC to the second, and how long ago: `2026-11-21 15:29:07Z (3 min ago)`."""
    moment = moment.astimezone(timezone.utc)
    seconds = int((datetime.now(timezone.utc) - moment).total_seconds())
    return f"{moment:%Y-%m-%d %H:%M:%S}Z ({ago(seconds)})"


def ago(seconds: int) -> str:
    if seconds < 0:
        return "in the future"
    for size, unit in ((86_400, "d"), (3_600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def amount(value: int, currency: str) -> str:
    return money.format_amount(value, currency)
