"""Stripe's form encoding: `metadata[refund_id]=rf_1` bracket keys turned into nested dicts."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from adapters.stripe_sim.errors import invalid_param

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


def parse_form(text: str) -> dict[str, Any]:
    """`a[b][c]=v` -> {"a": {"b": {"c": "v"}}}; `expand[]=x` appends to a list. Indexed lists
    (`items[0][price]`) stay dicts keyed "0", "1": nothing the simulator reads uses them."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        match = _KEY.match(key)
        if match is None:
            raise invalid_param(f"Invalid parameter name: {key}", key)
        parts = [match.group(1), *_PART.findall(match.group(2))]
        append = len(parts) > 1 and parts[-1] == ""
        if append:
            parts.pop()
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise invalid_param(f"Invalid hash: {key}", key)
        leaf, current = parts[-1], node.get(parts[-1])
        if append:
            if not isinstance(node.setdefault(leaf, []), list):
                raise invalid_param(f"Invalid array: {key}", key)
            node[leaf].append(value)
        elif isinstance(current, (dict, list)):
            raise invalid_param(f"Invalid string: {key} is also sent as a hash or an array", key)
        else:
            node[leaf] = value
    return root
