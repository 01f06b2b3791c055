"""The `psp-gateway` command: serve, worker, migrate, and the operator's check-config, refunds and
webhooks (gateway.commands)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import importlib.metadata
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from typing import Iterator

import uvloop
from aiohttp import web
from pydantic import SecretStr

from gateway import embedded, metrics, tracing
from gateway.app import create_app
from gateway.commands import check_config
from gateway.commands import reconcile as reconcile_commands
from gateway.commands import refunds as refund_commands
from gateway.commands import webhooks as webhook_commands
from gateway.db.migrate import migrate
from gateway.db.pool import connect
from gateway.logging import configure, register_secrets
from gateway.middleware import error_middleware
from gateway.routes import ops
from gateway.settings import ConfigError, Settings, load_settings, missing_parts, unknown_variables


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


def _fast_loop() -> None:
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class CannotListen(Exception):
    """The address is taken (or not ours to take): one line for the operator, not a traceback."""


async def _freeze_heap(app: web.Application) -> None:
    """Once started, everything made so far (modules, models, settings, the pool) is moved out of
    the cyclic garbage collector's sight: it lives as long as the process, and each full pass
    over it stalled the event loop for 60 to 75 ms (the open-loop p99 of `make bench`)."""
    gc.collect()
    gc.freeze()


def _serve(settings: Settings, *, reuse_port: bool = False, banner: bool = True) -> None:
    _fast_loop()
    app = create_app(settings)
    app.on_startup.append(_freeze_heap)  # last: after the pool and the adapters are made
    try:
        web.run_app(app, host=settings.host, port=settings.port, reuse_port=reuse_port,
                    print=(lambda _: print(_banner(settings), flush=True)) if banner else None,
                    access_log=None, shutdown_timeout=settings.shutdown_grace_seconds)
    except OSError as e:
        if e.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        reason = os.strerror(e.errno)
        raise CannotListen(f"cannot listen on {settings.host}:{settings.port}: {reason[:1].lower()}{reason[1:]} "
                           "(set GATEWAY_PORT or --port)") from None


def _serve_child(settings: Settings) -> None:
    configure(settings.log_format, settings.log_level)
    _serve(settings, reuse_port=True, banner=False)


@contextlib.contextmanager
def _shared_metrics() -> Iterator[str]:
    """A folder for prometheus-client's multiprocess mode: processes started inside inherit it, and
    a scrape answered by any of them adds up the counters of all. Removed once they have stopped."""
    folder = tempfile.mkdtemp(prefix="psp-gateway-metrics-")
    os.environ[metrics.MULTIPROCESS_DIR] = folder
    try:
        yield folder
    finally:
        os.environ.pop(metrics.MULTIPROCESS_DIR, None)
        shutil.rmtree(folder, ignore_errors=True)


def _serve_many(settings: Settings, workers: int) -> int:
    """N processes sharing the port (SO_REUSEPORT): the kernel spreads connections across them.
    The parent only supervises: a signal stops them all, and so does one child dying."""
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_serve_child, args=(settings,), name=f"psp-gateway-{n}")
                for n in range(workers)]
    for child in children:
        child.start()
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.is_alive():
                child.terminate()  # SIGTERM: each shuts down gracefully

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(_banner(settings) + f"\n  worker processes: {workers} (pids {', '.join(str(c.pid) for c in children)})",
          flush=True)
    while any(c.is_alive() for c in children):
        for child in children:
            child.join(timeout=0.5)
            if not child.is_alive() and not stopping:
                print(f"psp-gateway: {child.name} exited with {child.exitcode}; stopping the others",
                      file=sys.stderr, flush=True)
                stop()
    return 0 if stopping else 1


def _metrics_only(gateway: web.Application) -> web.Application:
    """GET /metrics of `gateway`, and /healthz for a liveness probe: a worker's listener serves no API."""
    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/metrics", lambda request: ops.render_metrics(gateway, request))
    app.router.add_get("/healthz", ops.healthz)
    return app


async def _work(settings: Settings, metrics_port: int | None) -> None:
    """The background work alone: the same application, started without the HTTP API; with
    `metrics_port`, a listener on settings.host that answers GET /metrics only."""
    runner = web.AppRunner(create_app(settings), handle_signals=False)
    await runner.setup()
    scrape: web.AppRunner | None = None
    if metrics_port is not None:
        scrape = web.AppRunner(_metrics_only(runner.app), handle_signals=False, access_log=None)
        await scrape.setup()
        await web.TCPSite(scrape, settings.host, metrics_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    listening = f"; metrics on http://{settings.host}:{metrics_port}/metrics" if scrape else ""
    print(f"psp-gateway worker running (janitor, pending checks, webhook inbox, callbacks){listening}", flush=True)
    try:
        await stop.wait()
    finally:
        if scrape is not None:
            await scrape.cleanup()
        await runner.cleanup()


async def _migrate(dsn: str) -> list[int]:
    conn = await connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def _operate(args: argparse.Namespace, settings: Settings) -> int:
    """The operator's commands, on the configured database or the embedded one `make run` uses. Logs
    go to stderr, warnings only unless GATEWAY_LOG_LEVEL is set, so that stdout holds the answer;
    for people (no --json) they read as lines of text, not JSON, unless GATEWAY_LOG_FORMAT says so."""
    level = settings.log_level if "log_level" in settings.model_fields_set else "warning"
    log_format = (settings.log_format if "log_format" in settings.model_fields_set or getattr(args, "json", False)
                  else "console")
    configure(log_format, level, stream=sys.stderr)
    if settings.database_url is None:
        print(f"psp-gateway: GATEWAY_DATABASE_URL is unset: using the embedded Postgres under {settings.data_dir} "
              "(as `make run` does)", file=sys.stderr)
    with database(settings) as settings:
        return args.operate(args, settings)


def _version() -> str:
    try:
        return importlib.metadata.version("psp-gateway")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _config_option(parser: argparse.ArgumentParser, default: object = None) -> None:
    parser.add_argument("--config", metavar="PATH", default=default,
                        help="the TOML configuration file (instead of GATEWAY_CONFIG)")


def main(argv: list[str] | None = None) -> int:
    """The command; a reader that stops reading (`check-config | head`) ends it quietly."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except CannotListen as e:
        print(f"psp-gateway: {e}", file=sys.stderr)
        return 1


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="psp-gateway", description="Refund gateway for payment processors")
    parser.add_argument("--version", action="version", version=f"psp-gateway {_version()}")
    _config_option(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API and background work")
    serve.add_argument("--host", help="listen address (default GATEWAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default GATEWAY_PORT or 8080)")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port (default 1)")
    worker = sub.add_parser("worker", help="run only the background work (no API), next to or instead of serve")
    worker.add_argument("--metrics-port", type=int,
                        help="answer GET /metrics and /healthz on this port (and GATEWAY_HOST); off by default")
    sub.add_parser("migrate", help="apply database migrations and exit")
    check_config.add_parser(sub)
    refund_commands.add_parser(sub)
    webhook_commands.add_parser(sub)
    reconcile_commands.add_parser(sub)
    for command in sub.choices.values():  # `psp-gateway serve --config x` as well as `psp-gateway --config x serve`
        _config_option(command, default=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.config:
        os.environ["GATEWAY_CONFIG"] = args.config
    for name in unknown_variables():
        print(f"psp-gateway: warning: {name} is set but no setting reads it (misspelt?)", file=sys.stderr)
    if args.command == "check-config":
        return check_config.run(args)  # it reports a bad configuration its own way

    overrides = {k: v for k, v in (("host", getattr(args, "host", None)), ("port", getattr(args, "port", None)))
                 if v is not None}
    try:
        settings = load_settings(**overrides)
        if args.command in ("serve", "worker") and tracing.wanted(settings):
            tracing.require_sdk()  # now, with a message, not as a traceback in every process
    except ConfigError as e:
        print(f"psp-gateway: {e}", file=sys.stderr)
        return 2
    missing = missing_parts(settings) if args.command in ("serve", "worker") else []
    if missing:
        print("psp-gateway: the configuration cannot serve refunds:", file=sys.stderr)
        for problem in missing:
            print(f"  {problem}", file=sys.stderr)
        return 2
    register_secrets(settings.secret_values())
    if args.command in ("refunds", "webhooks", "reconcile"):
        return _operate(args, settings)
    configure(settings.log_format, settings.log_level)

    with database(settings) as settings:
        if args.command == "migrate":
            applied = asyncio.run(_migrate(settings.database_url.get_secret_value()))
            print(f"applied migrations: {applied or 'none (up to date)'}")
        elif args.command == "worker":
            _fast_loop()
            asyncio.run(_work(settings, args.metrics_port))
        elif args.workers > 1:
            with _shared_metrics():
                return _serve_many(settings, args.workers)
        else:
            _serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
