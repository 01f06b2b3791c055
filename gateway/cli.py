"""The `psp-gateway` command: serve, worker, migrate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Iterator

from aiohttp import web
from pydantic import SecretStr

from gateway import embedded
from gateway.app import create_app
from gateway.db.migrate import migrate
from gateway.db.pool import connect
from gateway.logging import configure
from gateway.settings import ConfigError, Settings, load_settings


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[Settings]:
    """Yield settings with a database URL: the configured one, or an embedded Postgres started here."""
    if settings.database_url is not None:
        yield settings
        return
    with embedded.running(settings.data_dir) as pg:
        yield settings.model_copy(update={"database_url": SecretStr(pg.uri)})


def _banner(settings: Settings) -> str:
    url = f"http://{settings.host}:{settings.port}"
    processors = ", ".join(f"{p.id} ({p.kind})" for p in settings.processors) or "none"
    clients = ", ".join(c.id for c in settings.clients) or "none"
    return (f"psp-gateway listening on {url}\n"
            f"  processors: {processors}\n  API clients: {clients} (keys are in the config file)\n"
            f"  try: curl {url}/readyz\n"
            f"  the README's curl session registers a payment and refunds it")


def _serve(settings: Settings) -> None:
    app = create_app(settings)
    web.run_app(app, host=settings.host, port=settings.port, print=lambda _: print(_banner(settings), flush=True),
                access_log=None, shutdown_timeout=settings.shutdown_grace_seconds)


async def _work(settings: Settings) -> None:
    """The background work alone: the same application, started without an HTTP listener."""
    runner = web.AppRunner(create_app(settings), handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("psp-gateway worker running (janitor, pending checks, webhook inbox, callbacks)", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def _migrate(dsn: str) -> list[int]:
    conn = await connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="psp-gateway", description="Refund gateway for payment processors")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API and background work")
    serve.add_argument("--host", help="listen address (default GATEWAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default GATEWAY_PORT or 8080)")
    sub.add_parser("worker", help="run only the background work (no HTTP), next to or instead of serve")
    sub.add_parser("migrate", help="apply database migrations and exit")
    args = parser.parse_args(argv)

    overrides = {k: v for k, v in (("host", getattr(args, "host", None)), ("port", getattr(args, "port", None)))
                 if v is not None}
    try:
        settings = load_settings(**overrides)
    except ConfigError as e:
        print(f"psp-gateway: {e}", file=sys.stderr)
        return 2
    configure(settings.log_format, settings.log_level)

    with database(settings) as settings:
        if args.command == "migrate":
            applied = asyncio.run(_migrate(settings.database_url.get_secret_value()))
            print(f"applied migrations: {applied or 'none (up to date)'}")
        elif args.command == "worker":
            asyncio.run(_work(settings))
        else:
            _serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
