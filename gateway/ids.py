"""Time-ordered identifiers (ULID-shaped), so that ordering by id is ordering by creation.

Twelve lines do not justify a dependency; the format is ULID's: 48 bits of milliseconds
and 80 random bits in Crockford base32.
"""

import base64
import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
# base64's base32 alphabet to Crockford's (lower case).
_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())


def new_id(prefix: str) -> str:
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    # 128 bits as 26 base32 digits (130 bits): shifted by 30 into 20 bytes, whose first 26 digits
    # are the 130 bits that hold the value.
    digits = base64.b32encode((value << 30).to_bytes(20, "big"))[:26].translate(_CROCKFORD)
    return f"{prefix}_{digits.decode()}"
