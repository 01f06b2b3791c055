"""The configuration reference, docs/configuration.md, generated from the settings models:
`python -m gateway.config_reference > docs/configuration.md`. Names, variables, defaults and limits
come from the models. Meanings are written here, else taken from the field's comment in
gateway/settings.py; a field with neither stops the generator."""

from __future__ import annotations

import ast
import inspect
import sys
import tokenize
import types
import typing
from functools import cache
from io import StringIO

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from gateway.settings import (
    BridgePayProcessor,
    ClientConfig,
    MockProcessor,
    ProcessorBase,
    Settings,
    StripeProcessor,
)

COMMAND = "python -m gateway.config_reference > docs/configuration.md"

# Settings fields by section: field -> meaning. Every field of Settings is in exactly one section.
SETTINGS: list[tuple[str, dict[str, str]]] = [
    ("The file and the database", {
        "config": "The TOML file to read. Set it as a variable: the file cannot name itself.",
        "database_url": "The Postgres to use. Unset, the gateway starts an embedded Postgres under `data_dir`. "
                        "The embedded one is for development only.",
        "data_dir": "Where the embedded Postgres keeps its data.",
        "db_pool_min": "Database connections each process opens at start.",
        "db_pool_max": "Database connections each process holds at most. All processes together must fit "
                       "Postgres' `max_connections`.",
        "database_statement_cache_size": "Prepared statements asyncpg keeps per connection. "
                                         "Set `0` behind a transaction-mode pooler such as PgBouncer.",
        "migrate_on_start": "`serve` and `worker` apply migrations at start, under an advisory lock. "
                            "Set `false` behind a transaction-mode pooler. Then run `psp-gateway migrate` "
                            "against Postgres directly.",
    }),
    ("Listening and logs", {
        "host": "The address to listen on. `worker --metrics-port` listens there too.",
        "port": "The port the API listens on.",
        "log_format": "`json` for machines, `console` for people. `make run` uses `console`.",
        "log_level": "The lowest level that is logged.",
        "shutdown_grace_seconds": "After SIGTERM, how long requests and processor calls in flight may finish. "
                                  "A call still running then keeps its lease. The janitor takes it over "
                                  "once the lease runs out. Database connections still in use after it "
                                  "are closed.",
    }),
    ("Requests and limits", {
        "max_body_bytes": "The largest request body. A larger one gets 413.",
        "request_read_seconds": "A request's whole body must arrive within this time. "
                                "Later, the answer is 408 and the connection is closed.",
        "failed_sign_ins_per_minute": "Failed sign-ins per source address and minute, webhooks with a bad "
                                      "signature included. Over it, every request from that address gets 429.",
        "unauthenticated_per_second": "Requests per second and source address to routes without a key: "
                                      "health, metrics and docs. Over it, 429. Webhooks are not counted.",
        "refund_response_budget_seconds": "How long a refund POST waits for the processor. After it, the answer "
                                          "is a `pending` refund that keeps going.",
    }),
    ("Retries and stuck refunds", {
        "retry_max_attempts": "Quick retries of a transient processor fault: calls per request, "
                              "or per round of background work.",
        "retry_max_seconds": "Quick retries start no new call after this time.",
        "retry_initial_backoff_seconds": "The first wait between quick retries. It doubles each time, "
                                         "with jitter. A longer `Retry-After` from the processor wins.",
        "retry_max_backoff_seconds": "The longest wait between two quick retries.",
        "durable_retry_max_attempts": "Processor calls in all, look-ups included, before a refund needs "
                                      "attention. A replay starts a new count.",
        "durable_retry_initial_seconds": "The first wait before a retry that outlasts its request. "
                                         "It doubles each round, with jitter.",
        "durable_retry_max_seconds": "The longest wait between two durable retries.",
        "lease_seconds": "How long a run holds a refund before the janitor presumes its process dead. "
                         "It must exceed `retry_max_seconds` + 2 x `timeout_seconds` + 1 s for every processor. "
                         "The gateway refuses to start otherwise.",
        "stuck_after_seconds": "A refund still `pending` this long after its creation counts as stuck.",
    }),
    ("Background work", {
        "pending_poll_seconds": "How often refunds pending at their processor are looked for. "
                                "It is also the first wait before such a refund is looked up again. "
                                "Later waits are a tenth of its age, at most an hour.",
        "webhook_poll_seconds": "How often the inbox looks for stored webhooks to apply, at the latest. "
                                "A new webhook wakes it at once.",
        "janitor_poll_seconds": "How often the janitor looks for due retries, expired leases and "
                                "duplicate checks.",
    }),
    ("Callbacks", {
        "callback_url": "Where refund events are POSTed. Unset, events are only served by `GET /v1/events`. "
                        "Events are kept either way, so setting it later sends the whole history, "
                        "oldest first.",
        "callback_secrets": "The secrets that sign callbacks; in the variable, a JSON list. "
                            "Required with `callback_url`. The first one signs. "
                            "During a rotation list two: both sign.",
        "callback_timeout_seconds": "How long one callback POST may wait to connect, to send or to read.",
        "callback_initial_backoff_seconds": "The wait before a failed callback is tried again. "
                                            "It doubles with each failure.",
        "callback_max_backoff_seconds": "The longest wait between two tries of one callback.",
        "callback_poll_seconds": "How often the dispatcher looks for callbacks that are due.",
    }),
    ("Metrics and tracing", {
        "metrics_token": "Set, `GET /metrics` needs `Authorization: Bearer <token>`. "
                         "`/healthz` stays open.",
        "metrics_database_timeout_seconds": "How long a scrape waits for the gauges read from the database. "
                                            "Later, `/metrics` answers without them.",
        "otel_enabled": "Tracing on or off. Unset, it is on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.",
    }),
    ("Processors and clients", {
        "processors": "The processor accounts: `[[processors]]` tables in the file. The variable takes "
                      "the same as JSON. See [Processor accounts](#processor-accounts).",
        "clients": "The API clients: `[[clients]]` tables in the file. The variable takes the same as JSON. "
                   "See [API clients](#api-clients).",
    }),
]

PROCESSOR_COMMON = {
    "id": "The account's name. Refunds and payments carry it, and its webhooks go to `/v1/webhooks/{id}`.",
    "timeout_seconds": "The deadline of one processor call, whole: connect, send, wait and read.",
    "max_connections": "HTTP connections to the processor, at most, per process.",
    "max_answer_bytes": "The most of one answer that is read, counted after decompression. "
                        "More is a protocol error, and the refund needs attention.",
    "execution_window_seconds": "How long after a send a processor without idempotency keys may still "
                                "carry the request out. A look-up's \"no record\" counts only after it.",
    "reconcile_interval_seconds": "How often the background work holds this account's refunds against the "
                                  "processor's listing. Unset, only `psp-gateway reconcile` does.",
    "reconcile_lookback_seconds": "How far back a background run looks, at most: it covers the refunds made "
                                  "since the last run.",
    "max_refund_age_days": "A payment older than this many days takes no refund: 422 `refund_window_expired`. "
                           "Refund it offline. A client may set its own; the stricter wins. "
                           "See [Refund controls](refund-controls.md).",
    "approval_threshold": "A refund over this amount, in minor units, waits at stage `awaiting_approval` for an "
                          "operator. A client may set its own; the stricter wins.",
}

PROCESSORS: list[tuple[str, type[BaseModel], dict[str, str]]] = [
    ("Stripe", StripeProcessor, {
        "kind": "The processor. See [Stripe](processors/stripe.md).",
        "base_url": "Stripe's API, or a Stripe-compatible server such as the simulator.",
        "api_key": "The secret key: `sk_test_...` in test mode, `sk_live_...` live. "
                   "It must create and read refunds.",
        "webhook_secrets": "The webhook endpoint's signing secrets. Two during a rotation.",
    }),
    ("BridgePay", BridgePayProcessor, {
        "kind": "The processor. See [BridgePay](processors/bridgepay.md).",
        "base_url": "BridgePay's SOAP API. The test host is `https://www.bridgepaynetsecuretest.com`.",
        "reporting_base_url": "The Reporting API, when it is not at `base_url`.",
        "username": "The API user.",
        "password": "The API user's password.",
        "merchant_code": "The merchant code BridgePay gave the account.",
        "merchant_account_code": "The merchant account code BridgePay gave the account.",
    }),
    ("The mock", MockProcessor, {
        "kind": "The processor. See [The mock processor](processors/mock.md).",
        "base_url": "Accepted, and unused: the mock runs in the gateway's process.",
        "execution_window_seconds": "As above. The mock's abandoned calls are cancelled with it, "
                                    "so nothing can land later.",
        "pending_settle_seconds": "How long the amounts 7001 and 7002 stay `pending`.",
        "latency_seconds": "Added to every call.",
        "idempotency_keys": "`false` acts like a processor that carries out every resend, as BridgePay does. "
                            "The gateway then resends only after a look-up finds no record.",
        "lookup": "`false` acts like a processor that cannot find a refund again. An unknown outcome is then "
                  "resent with the same key if `idempotency_keys` is true. Otherwise it needs attention.",
        "webhook_secrets": "The secrets that verify mock webhooks, signed in `Mock-Signature`.",
    }),
]

CLIENT = {
    "id": "The client's name. It is the console's user name and the actor in the audit.",
    "api_key": "One key in clear, at least 16 characters.",
    "api_keys": "Several keys in clear, for a rotation.",
    "api_key_sha256": "Keys as SHA-256 hex digests, so that the file holds no secret. "
                      "Make one with `printf %s \"$KEY\" | sha256sum`.",
    "scopes": "What the client may do. `admin` reaches the admin API and the console.",
    "rate_limit_per_second": "Requests per second for this client, per process. Over it, 429 with "
                             "`Retry-After`. Unset, no limit.",
    "rate_limit_burst": "Requests allowed at once above the rate. Used only with `rate_limit_per_second`.",
    "max_refund_age_days": "As on a processor account, for this client's refunds. With both set, the stricter wins. "
                           "See [Refund controls](refund-controls.md).",
    "approval_threshold": "As on a processor account, for this client's refunds. With both set, the stricter wins.",
    "daily_refund_cap": "The most refunds through a processor that this client may ask for each day (UTC). "
                        "Over it, 422 `daily_limit_exceeded`.",
}

INTRO = """\
# Configuration

<!-- Generated by `{command}` from gateway/settings.py. Do not edit: change the models or
     gateway/config_reference.py, then run the command. tests/unit/test_docs.py checks it. -->

Settings come from two places.

- A TOML file, named by `GATEWAY_CONFIG`. `make run` uses `deploy/dev.toml`.
- `GATEWAY_*` environment variables. They win over the file.

Any value in the file may be written as `${{ENV_VAR}}`. A variable that is not set is an error.
A bad configuration stops the start with a message that names the field.
`psp-gateway check-config` checks a configuration without starting anything.
See [Operations](operations.md#commands).

Every setting below may also be written at the top of the file, under its name in the file.
Its variable wins over the file.

## An example: test mode

One environment per file. This one is test mode: Stripe's test mode and BridgePay's test host.
A live file has the live keys and hosts, and nothing from test mode.

```toml
[[processors]]
id = "stripe-test"
kind = "stripe"
base_url = "https://api.stripe.com"
api_key = "${{STRIPE_TEST_SECRET_KEY}}"           # sk_test_...
webhook_secrets = ["${{STRIPE_TEST_WEBHOOK_SECRET}}"]

[[processors]]
id = "bridgepay-test"
kind = "bridgepay"
base_url = "https://www.bridgepaynetsecuretest.com"
username = "${{BRIDGEPAY_TEST_USERNAME}}"
password = "${{BRIDGEPAY_TEST_PASSWORD}}"
merchant_code = "${{BRIDGEPAY_TEST_MERCHANT_CODE}}"
merchant_account_code = "${{BRIDGEPAY_TEST_MERCHANT_ACCOUNT_CODE}}"

[[clients]]
id = "billing-core"
api_key = "${{BILLING_CORE_KEY}}"
scopes = ["transactions:write", "transactions:read", "refunds:write", "refunds:read"]
rate_limit_per_second = 200
rate_limit_burst = 400

[[clients]]
id = "operator"
# Digests: the file holds no secret. Two keys at once during a rotation.
api_key_sha256 = ["${{OPERATOR_KEY_SHA256}}", "${{OPERATOR_NEXT_KEY_SHA256}}"]
scopes = ["admin"]
```

`deploy/k8s/configmap.yaml` holds the same test-mode file for Kubernetes.
"""

CALLBACK_NOTE = """\
Turning `GATEWAY_CALLBACK_URL` on later sends every event recorded so far.
The gateway writes an event for each change of a refund, with or without a callback URL.
The dispatcher then delivers every event not yet delivered, from the first one.
To start from now, read `GET /v1/events` instead. See [The billing core](billing-core.md).
"""

TRACING_NOTE = """\
Tracing also reads the usual `OTEL_*` variables, such as `OTEL_EXPORTER_OTLP_ENDPOINT` and
`OTEL_SERVICE_NAME`. See [Observability](observability.md#tracing).
"""


def _code(text: str) -> str:
    return f"`{text}`"


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        return "none" if value in ([], {}, ()) else _code(repr(value))
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return _code(str(value).lower())
    if isinstance(value, float):
        return _code(_number(value))
    return _code(str(value))


def _choices(annotation: object) -> list[str] | None:
    """The values of a Literal, or of a list of Literals; None for anything else."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return [str(v) for v in typing.get_args(annotation)]
    if origin is list:
        (item,) = typing.get_args(annotation)
        return _choices(item)
    return None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _allowed(field: FieldInfo) -> str:
    parts: list[str] = []
    annotation = field.annotation
    choices = _choices(annotation)
    if choices:
        parts.append(", ".join(_code(c) for c in choices))
    args = typing.get_args(annotation)
    optional = (typing.get_origin(annotation) in (typing.Union, types.UnionType)) and type(None) in args
    if annotation is bool or (optional and bool in args):
        parts.append("`true`, `false`")
    for item in field.metadata:
        if isinstance(item, annotated_types.Gt):
            parts.append(f"> {_number(item.gt)}")
        elif isinstance(item, annotated_types.Ge):
            parts.append(f">= {_number(item.ge)}")
        elif isinstance(item, annotated_types.Lt):
            parts.append(f"< {_number(item.lt)}")
        elif isinstance(item, annotated_types.Le):
            parts.append(f"<= {_number(item.le)}")
        elif isinstance(item, annotated_types.MinLen):
            parts.append(f"at least {item.min_length}")
        elif isinstance(item, annotated_types.MaxLen):
            parts.append(f"at most {item.max_length}")
        elif getattr(item, "pattern", None):
            parts.append(_code(item.pattern))
    return "; ".join(parts)


def _row(*cells: str) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


@cache
def source_comments(model: type[BaseModel]) -> dict[str, str]:
    """The comments of a model's own fields in gateway/settings.py: the lines of comment right above
    a field (or above the group of fields it ends, with no blank line between), and the comment at
    the end of its line. The fallback for a field with no meaning here."""
    source = inspect.getsource(model)
    lines = source.splitlines()
    trailing = {token.start[0]: token.string.lstrip("# ").strip()
                for token in tokenize.generate_tokens(StringIO(source).readline)
                if token.type == tokenize.COMMENT and lines[token.start[0] - 1].split("#")[0].strip()}
    (cls,) = ast.parse(source).body
    found: dict[str, str] = {}
    group: list[str] = []
    previous_end = 0
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            group, previous_end = [], 0
            continue
        above, n = [], node.lineno - 2
        while n >= 0 and lines[n].strip().startswith("#"):
            above.insert(0, lines[n].strip().lstrip("# ").strip())
            n -= 1
        if above:
            group = above
        elif previous_end != node.lineno - 1:  # a blank line ends a group
            group = []
        previous_end = node.end_lineno or node.lineno
        text = " ".join([*group, *([trailing[node.lineno]] if node.lineno in trailing else [])])
        if text:
            found[node.target.id] = text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")
    return found


def _meanings(what: type[BaseModel], documented: dict[str, str], fields: typing.Iterable[str]) -> dict[str, str]:
    """Every field's meaning: written here, else the field's comment in gateway/settings.py. A field
    with neither stops the generator, and so does a meaning for a field that is gone."""
    fields = list(fields)
    comments = {}
    for model in what.__mro__:
        if isinstance(model, type) and issubclass(model, BaseModel) and model.__module__ == Settings.__module__:
            comments = {**source_comments(model), **comments}
    meanings = {f: documented.get(f) or comments.get(f) for f in fields}
    missing = [f for f, meaning in meanings.items() if not meaning]
    extra = [f for f in documented if f not in fields]
    if missing or extra:
        raise ValueError(f"gateway/config_reference.py is out of step with {what.__name__}: no meaning for "
                         f"{missing} (write one here, or a comment above the field), meanings for no field {extra}")
    return typing.cast(dict[str, str], meanings)


def settings_env_name(name: str) -> str:
    return f"{Settings.model_config['env_prefix']}{name.upper()}"


def _table(header: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]


def render() -> str:
    fields = Settings.model_fields
    written = {name: meaning for _, section in SETTINGS for name, meaning in section.items()}
    if len(written) != sum(len(section) for _, section in SETTINGS):
        raise ValueError("a Settings field is in two sections of gateway/config_reference.py")
    meanings = _meanings(Settings, written, fields)
    # A field known only by its comment in settings.py: listed, until it gets a section here.
    sections = [*SETTINGS, ("Other settings", {n: meanings[n] for n in fields if n not in written})]
    lines = [INTRO.format(command=COMMAND), "## Settings", ""]
    for title, section in sections:
        if not section:
            continue
        lines += [f"### {title}", "", *_table(["Variable", "In the file", "Default", "Allowed", "Meaning"])]
        for name in section:
            field = fields[name]
            lines.append(_row(_code(settings_env_name(name)), _code(name), _default(field), _allowed(field),
                              meanings[name]))
        lines.append("")
        if title == "Callbacks":
            lines += [CALLBACK_NOTE]
        if title == "Metrics and tracing":
            lines += [TRACING_NOTE]

    common = _meanings(ProcessorBase, PROCESSOR_COMMON, ProcessorBase.model_fields)
    lines += ["## Processor accounts", "",
              "Each `[[processors]]` table is one account at one processor. `kind` says which.",
              "Every kind takes these fields.", "", *_table(["Field", "Default", "Allowed", "Meaning"])]
    for name, meaning in common.items():
        field = ProcessorBase.model_fields[name]
        lines.append(_row(_code(name), _default(field), _allowed(field), meaning))
    lines.append("")
    for title, model, own in PROCESSORS:
        # A kind's own fields, and the common ones it sets apart (another default); `kind` first.
        names = [n for n in model.model_fields
                 if n not in ProcessorBase.model_fields
                 or model.model_fields[n].default != ProcessorBase.model_fields[n].default]
        meanings = _meanings(model, own, names)
        ordered = [*[n for n in own if n in names], *[n for n in names if n not in own]]
        lines += [f"### {title}", "", *_table(["Field", "Default", "Allowed", "Meaning"])]
        for name in ordered:
            field = model.model_fields[name]
            lines.append(_row(_code(name), _default(field), _allowed(field), meanings[name]))
        lines.append("")

    client = _meanings(ClientConfig, CLIENT, ClientConfig.model_fields)
    lines += ["## API clients", "",
              "Each `[[clients]]` table is one caller with its keys and scopes.",
              "A client needs at least one key. Two clients may not share a key.", "",
              *_table(["Field", "Default", "Allowed", "Meaning"])]
    for name, meaning in client.items():
        field = ClientConfig.model_fields[name]
        lines.append(_row(_code(name), _default(field), _allowed(field), meaning))
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
