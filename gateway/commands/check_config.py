"""`psp-gateway check-config`: validate the configuration (GATEWAY_CONFIG and GATEWAY_* variables),
list its processors and clients without a secret, then try the database and each processor's
credentials (`--offline`: only validate). Exit 2: invalid; 1: a check failed; 0: all well."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import asyncpg

from adapters.base import CredentialCheck, CredentialStatus
from adapters.registry import build_adapters, close_adapters
from gateway.commands import output
from gateway.db.migrate import current_version, latest_version
from gateway.logging import scrub_text, without_credentials
from gateway.settings import ConfigError, Settings, load_settings, missing_parts

CHECK_SECONDS = 30.0  # the longest one processor's check may take, whatever its timeouts
DATABASE_SECONDS = 10.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("check-config", help="validate the configuration and try the database and credentials",
                            description=__doc__)
    parser.add_argument("--offline", action="store_true",
                        help="only validate: neither the database nor any processor is contacted")
    parser.add_argument("--json", action="store_true", help="machine-readable output (JSON on stdout)")


def run(args: argparse.Namespace) -> int:
    source = os.environ.get("GATEWAY_CONFIG")
    where = (f"{source} (GATEWAY_CONFIG) and GATEWAY_* variables" if source
             else "GATEWAY_* variables (no GATEWAY_CONFIG)")
    try:
        settings = load_settings()
        problems = missing_parts(settings)
    except ConfigError as e:
        problems = e.problems
    if problems:
        if args.json:
            output.print_json({"valid": False, "config": source, "problems": problems})
        else:
            print(f"invalid configuration, from {where}:", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
        return 2
    database, checks = ({"status": "not_checked", "detail": "--offline"}, {}) if args.offline else asyncio.run(
        _try(settings))
    if settings.database_url is None:
        database = {"status": "not_checked", "detail": f"GATEWAY_DATABASE_URL is unset: the embedded Postgres "
                                                       f"under {settings.data_dir} is used"}
    failed = database["status"] == "unreachable" or any(c.failed for c in checks.values())
    report = _report(settings, source, database, checks)
    if args.json:
        output.print_json({"valid": True, **report, "ok": not failed})
    else:
        _print(report, where)
    return 1 if failed else 0


async def _try(settings: Settings) -> tuple[dict[str, str], dict[str, CredentialCheck]]:
    adapters = build_adapters(settings.processors)
    try:
        database, *checks = await asyncio.gather(_database(settings),
                                                 *(_credentials(a) for a in adapters.values()))
    finally:
        await close_adapters(adapters)
    return database, dict(zip(adapters, checks))


async def _credentials(adapter: Any) -> CredentialCheck:
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            return await adapter.check_credentials()
    except TimeoutError:
        return CredentialCheck(CredentialStatus.UNREACHABLE, f"no answer in {CHECK_SECONDS:.0f} s")
    except Exception as e:  # an adapter's bug: say so, and carry on with the others
        return CredentialCheck(CredentialStatus.UNEXPECTED, f"the check itself failed: {type(e).__name__}")


async def _database(settings: Settings) -> dict[str, str]:
    if settings.database_url is None:
        return {"status": "not_checked", "detail": ""}
    try:
        conn = await asyncpg.connect(settings.database_url.get_secret_value(), timeout=DATABASE_SECONDS)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as e:
        return {"status": "unreachable", "detail": scrub_text(str(e)) or type(e).__name__}
    try:
        version = await current_version(conn)
    finally:
        await conn.close()
    latest = latest_version()
    schema = (f"schema at version {version}" if version >= latest
              else f"schema at version {version} of {latest}: `psp-gateway migrate` (or `serve`) applies the rest")
    return {"status": "ok", "detail": f"connected; {schema}"}


def _report(settings: Settings, source: str | None, database: dict[str, str],
            checks: dict[str, CredentialCheck]) -> dict[str, Any]:
    url = settings.database_url
    return {
        "config": source,
        "processors": [{"id": p.id, "kind": p.kind, "base_url": without_credentials(p.base_url) if p.base_url else None,
                        "credentials": (checks[p.id].status.value if p.id in checks else "not_checked"),
                        "detail": checks[p.id].detail if p.id in checks else "--offline"}
                       for p in settings.processors],
        "clients": [{"id": c.id, "scopes": list(c.scopes), "keys": len(c.digests()),
                     "rate_limit_per_second": c.rate_limit_per_second} for c in settings.clients],
        "database": {"url": without_credentials(url.get_secret_value()) if url else None, **database},
    }


def _print(report: dict[str, Any], where: str) -> None:
    print(f"configuration valid, from {where}")
    processors, clients = report["processors"], report["clients"]
    print(f"\nprocessors ({len(processors)})")
    if processors:
        print(output.indent(output.table(["id", "kind", "base url"], [[p["id"], p["kind"], p["base_url"]]
                                                              for p in processors])))
    print(f"\nAPI clients ({len(clients)}; keys are not shown)")
    if clients:
        print(output.indent(output.table(["id", "scopes", "keys", "rate limit/s"],
                                   [[c["id"], ", ".join(c["scopes"]), c["keys"], c["rate_limit_per_second"]]
                                    for c in clients])))
    db = report["database"]
    print(f"\ndatabase: {db['url'] or 'embedded'}: {db['status'].replace('_', ' ')}"
          + (f" ({db['detail']})" if db["detail"] else ""))
    if processors:
        print("\ncredentials")
        print(output.indent(output.table(["processor", "result", "detail"],
                                   [[p["id"], p["credentials"].replace("_", " "), p["detail"]] for p in processors])))
