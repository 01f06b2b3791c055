"""What the processor simulators share: fault rules that fire by chance and by count, and serving
a simulator in-process on a loopback port."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import AsyncIterator

from aiohttp import web


@dataclass
class ChanceRule:
    """Fires with `probability` (default 1), at most `count` more times (default unlimited)."""

    probability: float = 1.0
    count: int | None = None

    def __post_init__(self) -> None:
        # Control bodies are JSON from anywhere: a bad value is refused now, not in the middle of a request.
        self.probability = float(self.probability)
        self.count = None if self.count is None else int(self.count)

    def fires(self, rng: random.Random) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if self.probability < 1.0 and rng.random() >= self.probability:
            return False
        if self.count is not None:
            self.count -= 1
        return True


@contextlib.asynccontextmanager
async def serve_on_loopback(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `app` until the block ends; yields its base URL (a free port when `port` is 0)."""
    runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()
