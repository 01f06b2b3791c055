"""Liveness, readiness, Prometheus metrics, and the API's own description (OpenAPI and a page)."""

from __future__ import annotations

import asyncio
import functools
import hmac
import html
import re

import orjson
from aiohttp import web

from gateway import errors, keys, metrics, openapi
from gateway.db.migrate import current_version, latest_version
from gateway.http import json_response, model_response
from gateway.models import Health, Readiness

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return model_response(Health(status="ok"))


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(2):
            async with request.app[keys.POOL].acquire() as conn:
                version = await current_version(conn)
    except Exception:
        raise errors.ServiceUnavailable("the database is unreachable", code="database_unavailable",
                                        headers={"Retry-After": "5"}) from None
    if version < latest_version():
        raise errors.ServiceUnavailable(f"migrations pending: at {version}, need {latest_version()}",
                                        code="migrations_pending")
    return model_response(Readiness(status="ready", schema_version=version))


@routes.get("/metrics")
async def prometheus_metrics(request: web.Request) -> web.Response:
    return await render_metrics(request.app, request)


async def render_metrics(app: web.Application, request: web.Request) -> web.Response:
    """Open like /healthz (it holds counts by processor and status, never an id or a secret),
    unless `metrics_token` is set. `app` is the gateway's application: `psp-gateway worker
    --metrics-port` answers from a listener of its own (gateway.cli)."""
    settings = app[keys.SETTINGS]
    if settings.metrics_token is not None:
        expected = f"Bearer {settings.metrics_token.get_secret_value()}".encode()
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            raise errors.Unauthorized("GET /metrics needs Authorization: Bearer <metrics token>")
    body = await metrics.exposition(app[keys.POOL], app[keys.DATABASE_GAUGES],
                                    stuck_after_seconds=settings.stuck_after_seconds,
                                    outbox=bool(settings.callback_url),
                                    timeout=settings.metrics_database_timeout_seconds)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


@functools.cache
def _document() -> dict:
    return openapi.build()


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return json_response(_document())


# The page: every operation with its parameters, bodies, answers, problem codes and examples, the
# callbacks and the schemas, drawn from the document itself. No script, nothing from elsewhere.
_DOCS_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
                 "X-Content-Type-Options": "nosniff"}
_STYLE = ("body{font:15px/1.45 sans-serif;margin:2em auto;max-width:70em;padding:0 1em}pre{background:#f6f6f6;"
          "padding:.6em;overflow:auto;font-size:13px}section{border-top:1px solid #ccc;margin-top:1.5em}"
          "td,th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}"
          "code{background:#f0f0f0}h2 code{font-size:1em}")
_SCHEMA_REF = re.compile(r"&quot;#/components/(schemas|examples)/(\w+)&quot;")
_CODE = re.compile(r"`([^`]+)`")


def _text(text: str) -> str:
    return _CODE.sub(r"<code>\1</code>", html.escape(text))


def _linked(text: str, codes) -> str:
    """Text with each problem code in it linked to its example."""
    for c in codes:
        text = text.replace(f"<code>{c}</code>", f"<a href='#examples-{c}'><code>{c}</code></a>")
    return text


def _json(value: object) -> str:
    text = html.escape(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())
    return "<pre>" + _SCHEMA_REF.sub(r'<a href="#\1-\2">\2</a>', text) + "</pre>"


def _media(content: dict) -> str:
    parts = []
    for media, body in content.items():
        parts.append(f"<p><code>{html.escape(media)}</code></p>{_json(body['schema'])}")
        parts += [f"<details><summary>{html.escape(name)}</summary>{_json(ex['value'])}</details>"
                  for name, ex in body.get("examples", {}).items()]
    return "".join(parts)


def _operation(anchor: str, title: str, op: dict) -> str:
    out = [f"<section id='{anchor}'><h2><code>{html.escape(title)}</code> {html.escape(op['summary'])}</h2>"]
    if "description" in op:
        out.append(f"<p>{_text(op['description'])}</p>")
    if op.get("parameters"):
        out.append("<table><tr><th>Parameter</th><th>In</th><th>Required</th><th>Schema</th><th>About</th></tr>")
        out += [f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{p['in']}</td>"
                f"<td>{'yes' if p['required'] else ''}</td><td>{_json(p['schema'])}</td>"
                f"<td>{_text(p.get('description', ''))}</td></tr>"
                for p in op["parameters"]]
        out.append("</table>")
    if "requestBody" in op:
        out.append(f"<h3>Body</h3>{_media(op['requestBody']['content'])}")
    for status, answer in op["responses"].items():
        content = answer.get("content", {})
        problems = content.get("application/problem+json", {}).get("examples", {})
        about = _linked(_text(answer["description"]), problems)
        out.append(f"<h3>{status}</h3><p>{about}</p>{'' if problems else _media(content)}")
    return "".join(out) + "</section>"


def _docs_page(doc: dict) -> str:
    ops = [(o["operationId"], f"{method.upper()} {path}", o) for path, item in doc["paths"].items()
           for method, o in item.items()]
    hooks = [(o["operationId"], f"{method.upper()} {{callback_url}} ({name})", o)
             for name, item in doc["webhooks"].items() for method, o in item.items()]
    components = doc["components"]
    toc = "".join(f"<li><a href='#{a}'>{html.escape(t)}</a> {html.escape(o['summary'])}</li>" for a, t, o in ops)
    code = components["schemas"]["Problem"]["properties"]["code"]
    codes = "".join(f"<tr id='examples-{c}'><td><code>{c}</code></td><td>{e['value']['status']}</td>"
                    f"<td>{_text(e['summary'])}<details><summary>example</summary>{_json(e['value'])}</details></td>"
                    "</tr>" for c, e in components["examples"].items())
    schemas = "".join(f"<h3 id='schemas-{name}'>{name}</h3>{_json(schema)}"
                      for name, schema in components["schemas"].items())
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>psp-gateway API</title>"
            f"<style>{_STYLE}</style></head><body><h1>psp-gateway API</h1><p>{_text(doc['info']['description'])}"
            "</p><p>The same as OpenAPI 3.1: <a href='/openapi.json'>/openapi.json</a>. Authenticate with "
            "<code>Authorization: Bearer &lt;key&gt;</code> or <code>X-API-Key</code>.</p><h2>Operations</h2>"
            f"<ul>{toc}</ul><p><a href='#callbacks'>Callbacks</a> · <a href='#errors'>Problem codes</a> · "
            "<a href='#schemas'>Schemas</a></p>" + "".join(_operation(*o) for o in ops)
            + "<section id='callbacks'><h2>Callbacks to the billing core</h2></section>"
            + "".join(_operation(*h) for h in hooks)
            + f"<section id='errors'><h2>Problem codes</h2><p>{_linked(_text(code['description']), code['enum'])}"
            f"</p><table><tr><th>code</th><th>status</th><th>meaning</th></tr>{codes}</table></section>"
            f"<section id='schemas'><h2>Schemas</h2>{schemas}</section></body></html>")


@functools.cache
def _page() -> str:
    return _docs_page(_document())


@routes.get("/problems/{code}")
async def problem_type(request: web.Request) -> web.Response:
    """A problem's `type`: its code's entry on /docs."""
    code = request.match_info["code"]
    if code not in openapi.ERROR_CODES:
        raise errors.NotFound(f"no problem code {code!r}", code="not_found")
    raise web.HTTPFound(f"/docs#examples-{code}")


@routes.get("/docs")
async def docs(request: web.Request) -> web.Response:
    return web.Response(text=_page(), content_type="text/html", charset="utf-8", headers=_DOCS_HEADERS)
