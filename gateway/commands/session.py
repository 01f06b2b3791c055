"""What the `refunds` and `webhooks` commands share: a pool on the configured database (its schema
checked, never migrated from here), the processors' adapters and the RefundExecutor built as the
server builds them, who the operator is, and failures turned into a message and an exit code."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

import asyncpg
from pydantic import TypeAdapter, ValidationError

from adapters.base import ProcessorAdapter
from adapters.registry import build_adapters, close_adapters
from gateway import errors
from gateway.commands.output import error, print_json
from gateway.db.migrate import current_version, latest_version
from gateway.db.pool import create_pool
from gateway.execution import RefundExecutor
from gateway.ids import new_id
from gateway.logging import scrub_text
from gateway.settings import Settings

POOL_SIZE = 8  # a bulk replay runs operations.REPLAY_CONCURRENCY at once, each with one connection at a time


@dataclass(frozen=True)
class Session:
    settings: Settings
    pool: asyncpg.Pool
    executor: RefundExecutor
    actor: str  # `cli:<os user>`, written to the audit with every action
    request_id: str  # one per command, on every audit row and refund event it writes
    adapters: Mapping[str, ProcessorAdapter]  # the executor's: a stored webhook body is parsed again by its own


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (a container)
        return f"cli:uid-{os.getuid()}"


@contextlib.asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[Session]:
    assert settings.database_url is not None, "resolve the database (embedded or configured) first"
    pool = await create_pool(settings.database_url.get_secret_value(), min_size=1, max_size=POOL_SIZE,
                             statement_cache_size=settings.database_statement_cache_size)
    try:
        await _check_schema(pool)
        adapters = build_adapters(settings.processors)
        executor = RefundExecutor(pool, adapters, settings)
        try:
            yield Session(settings, pool, executor, actor(), new_id("cli"), adapters)
        finally:
            await executor.aclose(settings.shutdown_grace_seconds)
            await close_adapters(adapters)
    finally:
        await pool.close()


async def _check_schema(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        version = await current_version(conn)
    if version < latest_version():
        raise errors.ServiceUnavailable(f"the database schema is at version {version} and this gateway needs "
                                        f"{latest_version()}: run `psp-gateway migrate` first",
                                        code="migrations_pending")


def run(settings: Settings, command: Callable[[Session], Awaitable[int]], *, json_output: bool) -> int:
    """Run one command in a session. What an operator can cause (an unknown id, a refused replay,
    a database that is down) is one line on stderr, and with --json a problem on stdout, exit 1."""
    async def main() -> int:
        async with opened(settings) as session:
            return await command(session)

    try:
        return asyncio.run(main())
    except errors.GatewayError as e:
        problem = e.problem()
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        problem = errors.ServiceUnavailable(f"database: {scrub_text(str(e)) or type(e).__name__}",
                                            code="database_unavailable").problem()
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    error(f"{problem['detail']} [{problem['code']}]")
    if json_output:
        print_json({"error": problem})
    return 1


def validated(type_: Any) -> Callable[[str], Any]:
    """An argparse `type` that checks a value as the admin API's request models do."""
    adapter = TypeAdapter(type_)

    def check(value: str) -> Any:
        try:
            return adapter.validate_python(value)
        except ValidationError as e:
            raise argparse.ArgumentTypeError(e.errors()[0]["msg"]) from None
    return check


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    def check(value: str) -> int:
        if not value.isdigit() or not low <= int(value) <= high:
            raise argparse.ArgumentTypeError(f"a whole number from {low} to {high}")
        return int(value)
    return check


def json_flag() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="machine-readable output (JSON on stdout)")
    return parent
