"""Random ids for tests that never read as a card number (the gateway refuses those in any text)."""

from __future__ import annotations

import uuid


def token(length: int = 16) -> str:
    """`length` random hex characters with a letter after every eight: no run of 13 digits or more."""
    raw = (uuid.uuid4().hex + uuid.uuid4().hex)[:length]
    return "x".join(raw[i:i + 8] for i in range(0, len(raw), 8))
