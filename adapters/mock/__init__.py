"""The in-process mock processor: deterministic sandbox amounts, same protocol as the real adapters."""

from adapters.mock.client import MockAdapter, SCENARIOS

__all__ = ["MockAdapter", "SCENARIOS"]
