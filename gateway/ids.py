"""Time-ordered identifiers (ULID-shaped), so that ordering by id is ordering by creation.

Twelve lines do not justify a dependency; the format is ULID's: 48 bits of milliseconds
and 80 random bits in Crockford base32.
"""

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str) -> str:
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, r = divmod(value, 32)
        chars.append(_ALPHABET[r])
    return f"{prefix}_{''.join(reversed(chars))}"
