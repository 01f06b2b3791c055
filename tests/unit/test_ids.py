"""Ids are ULID-shaped: 26 Crockford base32 digits of 48 bits of milliseconds and 80 random bits."""

from __future__ import annotations

import time

from gateway import ids
from gateway.ids import new_id


def _digits(value: int) -> str:
    """The 128-bit value in 26 base32 digits, most significant first: the format, written plainly."""
    out = []
    for _ in range(26):
        value, r = divmod(value, 32)
        out.append(ids._ALPHABET[r])
    return "".join(reversed(out))


def test_an_id_is_its_prefix_and_26_crockford_digits_of_time_then_randomness(monkeypatch):
    monkeypatch.setattr(ids.time, "time", lambda: 1_790_000_000.123)
    monkeypatch.setattr(ids.os, "urandom", lambda n: bytes(range(1, n + 1)))
    expected = _digits((1_790_000_000_123 << 80) | int.from_bytes(bytes(range(1, 11)), "big"))
    assert new_id("rf") == f"rf_{expected}"


def test_the_extremes_encode_as_the_format_says(monkeypatch):
    for millis, random in ((0, b"\0" * 10), (2**48 - 1, b"\xff" * 10)):
        monkeypatch.setattr(ids.time, "time", lambda m=millis: m / 1000)
        monkeypatch.setattr(ids.os, "urandom", lambda n, r=random: r)
        assert new_id("x") == "x_" + _digits((millis << 80) | int.from_bytes(random, "big"))


def test_ids_made_later_sort_later():
    first = new_id("rf")
    time.sleep(0.002)
    assert new_id("rf") > first
