"""Settings, built once at the entry point: GATEWAY_* environment variables over a TOML file.

The TOML file named by GATEWAY_CONFIG declares processor accounts and API clients; any
string in it may be written as ${ENV_VAR}. Environment variables win over the file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

Scope = Literal["transactions:write", "transactions:read", "refunds:write", "refunds:read", "admin"]
ALL_SCOPES: tuple[Scope, ...] = ("transactions:write", "transactions:read", "refunds:write", "refunds:read", "admin")

# Time a run needs beyond its processor calls (recording the outcome), inside its lease.
LEASE_MARGIN_SECONDS = 1.0

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """A configuration that cannot start the gateway; the message names the field, and `problems`
    holds one line per failing field."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProcessorBase(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    # The longest one processor call may take, whole (connect, send, wait, read), not per read.
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    max_connections: int = Field(default=100, ge=1, le=10_000)
    # The most of one answer the adapter reads, counted once decompressed; more is a protocol error.
    max_answer_bytes: int = Field(default=1_048_576, gt=0)
    # How long after a refund request was sent the processor may still carry it out (a request
    # queued or slow on its side, whose answer the gateway gave up on). Used only for processors
    # without idempotency keys: a look-up's "no record" counts as "never executed" only after it.
    execution_window_seconds: float = Field(default=300.0, ge=0, le=86_400)
    # Reconciliation in the background: every this many seconds (None: off), the refunds made since
    # the last run (at most reconcile_lookback_seconds back) are held against the processor's listing.
    reconcile_interval_seconds: float | None = Field(default=None, ge=60)
    reconcile_lookback_seconds: float = Field(default=86_400.0, gt=0, le=90 * 86_400)
    # Refund controls for this account (a client's own apply as well; the stricter wins): a payment
    # older than max_refund_age_days is refused (refund it offline), and a refund over
    # approval_threshold (minor units of the payment's currency) waits for an operator's approval.
    max_refund_age_days: int | None = Field(default=None, ge=1)
    approval_threshold: int | None = Field(default=None, ge=1)


class StripeProcessor(ProcessorBase):
    kind: Literal["stripe"]
    base_url: str = "https://api.stripe.com"
    api_key: SecretStr
    webhook_secrets: list[SecretStr] = Field(default_factory=list, max_length=2)


class BridgePayProcessor(ProcessorBase):
    kind: Literal["bridgepay"]
    base_url: str
    reporting_base_url: str | None = None  # where the Reporting API lives, when not at base_url
    username: str
    password: SecretStr
    merchant_code: str
    merchant_account_code: str


class MockProcessor(ProcessorBase):
    """The in-process mock processor; `base_url` is accepted for symmetry and unused."""

    kind: Literal["mock"]
    base_url: str | None = None
    # In-process: a call the gateway gave up on was cancelled with it and can never land later.
    execution_window_seconds: float = Field(default=0.0, ge=0, le=86_400)
    pending_settle_seconds: float = Field(default=2.0, ge=0)
    latency_seconds: float = Field(default=0.0, ge=0, le=60)
    idempotency_keys: bool = True  # false: a processor that executes every resend, as BridgePay does
    lookup: bool = True  # false: a processor that cannot find a refund again (so nothing is ever resent)
    webhook_secrets: list[SecretStr] = Field(default_factory=list)


ProcessorConfig = Annotated[StripeProcessor | BridgePayProcessor | MockProcessor, Field(discriminator="kind")]


class ClientConfig(_Strict):
    """An API client. Its keys may be given in clear (`api_key`, `api_keys`) or, so that the file
    holds no secret, as SHA-256 hex digests (`api_key_sha256`); several at once for a rotation."""

    id: Annotated[str, Field(min_length=1, max_length=64)]
    api_key: SecretStr | None = None
    api_keys: list[SecretStr] = Field(default_factory=list)
    api_key_sha256: list[Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]] = Field(default_factory=list)
    scopes: list[Scope] = Field(min_length=1)
    rate_limit_per_second: float | None = Field(default=None, gt=0)  # None: no limit
    rate_limit_burst: int = Field(default=50, ge=1)
    # Refund controls for this client (with a processor's own, the stricter wins): see ProcessorBase;
    # daily_refund_cap: at most this many refunds through a processor a day (UTC), then 422.
    max_refund_age_days: int | None = Field(default=None, ge=1)
    approval_threshold: int | None = Field(default=None, ge=1)
    daily_refund_cap: int | None = Field(default=None, ge=1)

    @field_validator("api_key", "api_keys")
    @classmethod
    def _long_enough(cls, v: SecretStr | list[SecretStr] | None):
        for key in v if isinstance(v, list) else [v] if v is not None else []:
            if len(key.get_secret_value()) < 16:
                raise ValueError("API keys must be at least 16 characters")
        return v

    @model_validator(mode="after")
    def _has_a_key(self) -> "ClientConfig":
        if not self.digests():
            raise ValueError("api_key, api_keys or api_key_sha256: the client needs at least one key")
        return self

    def digests(self) -> list[bytes]:
        """SHA-256 of every key this client may present."""
        clear = [self.api_key] if self.api_key is not None else []
        return ([hashlib.sha256(k.get_secret_value().encode()).digest() for k in [*clear, *self.api_keys]]
                + [bytes.fromhex(h) for h in self.api_key_sha256])


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="forbid", frozen=True)

    config: Path | None = None  # the TOML file; read through GATEWAY_CONFIG
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    database_url: SecretStr | None = None  # unset: an embedded Postgres under data_dir
    data_dir: Path = Path(".gateway-data")
    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=20, ge=1)
    # asyncpg's prepared-statement cache per connection; 0 switches it off, as a transaction-mode
    # pooler (PgBouncer pool_mode=transaction) needs: a named statement may not exist on the next server.
    database_statement_cache_size: int = Field(default=100, ge=0)
    # false: `serve` and `worker` leave migrations to `psp-gateway migrate` (a deploy job against
    # Postgres directly); the migration lock is a session lock, which a transaction-mode pooler cannot hold.
    migrate_on_start: bool = True
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)  # webhooks carry whole charges
    # A request's whole body must arrive within this long: a client trickling bytes holds no connection.
    request_read_seconds: float = Field(default=10.0, gt=0, le=300)
    # Before sign-in, per source address: failed sign-ins (a wrong or missing key) a minute, and
    # requests a second to routes without a key (webhooks, health, metrics, docs). Over: 429.
    failed_sign_ins_per_minute: int = Field(default=60, ge=1)
    unauthenticated_per_second: float = Field(default=100.0, gt=0)
    # How long POST /v1/refunds waits for the processor before answering with a pending refund.
    refund_response_budget_seconds: float = Field(default=5.0, gt=0)
    # Retries inside one run (a request, or one round of background work): quick, bounded.
    retry_max_attempts: int = Field(default=3, ge=1, le=20)
    retry_max_seconds: float = Field(default=4.0, gt=0)
    retry_initial_backoff_seconds: float = Field(default=0.2, gt=0)
    retry_max_backoff_seconds: float = Field(default=2.0, gt=0)
    # Retries that outlive a run: a due time on the refund, picked up by any replica's worker.
    # After this many processor calls in all, the refund needs attention.
    durable_retry_max_attempts: int = Field(default=12, ge=1, le=1000)
    durable_retry_initial_seconds: float = Field(default=5.0, gt=0)
    durable_retry_max_seconds: float = Field(default=900.0, gt=0)
    # A refund whose call is in flight is leased for this long; an expired lease means the process died.
    # It must outlast the longest run it covers (refused at start otherwise, see _lease_covers_runs).
    lease_seconds: float = Field(default=120.0, gt=0)
    pending_poll_seconds: float = Field(default=1.0, gt=0)  # how often refunds pending at a processor are re-checked
    webhook_poll_seconds: float = Field(default=1.0, gt=0)  # how often stored webhooks are looked at, at the latest
    janitor_poll_seconds: float = Field(default=1.0, gt=0)  # how often due retries and expired leases are looked for
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)

    # Callbacks to the billing core: where to POST refund events, and the secrets that sign them
    # (the first signs; list two during a rotation and both sign). Unset: events are only polled.
    callback_url: str | None = None
    callback_secrets: list[SecretStr] = Field(default_factory=list, max_length=2)
    callback_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    callback_initial_backoff_seconds: float = Field(default=1.0, gt=0)
    callback_max_backoff_seconds: float = Field(default=3600.0, gt=0)
    callback_poll_seconds: float = Field(default=1.0, gt=0)
    # A refund still pending this long after it was created counts as stuck.
    stuck_after_seconds: float = Field(default=900.0, gt=0)
    # GET /metrics: open, like /healthz, unless a token is set (then `Authorization: Bearer <token>`);
    # its database gauges give up after this long, and the scrape still answers.
    metrics_token: SecretStr | None = None
    metrics_database_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    # OpenTelemetry tracing: None follows OTEL_EXPORTER_OTLP_ENDPOINT (set: on); true or false decides.
    otel_enabled: bool | None = None

    processors: list[ProcessorConfig] = Field(default_factory=list)
    clients: list[ClientConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> "Settings":
        for name, items in (("processors", self.processors), ("clients", self.clients)):
            seen: set[str] = set()
            for i, item in enumerate(items):
                if item.id in seen:
                    raise ValueError(f"{name}.{i}.id: duplicate id {item.id!r}")
                seen.add(item.id)
        if self.callback_url and not self.callback_secrets:
            raise ValueError("callback_secrets: required when callback_url is set (callbacks are always signed)")
        digests = [d for c in self.clients for d in c.digests()]
        if len(digests) != len(set(digests)):
            raise ValueError("clients: two clients (or one twice) share an API key")
        return self

    @model_validator(mode="after")
    def _lease_covers_runs(self) -> "Settings":
        """A lease that can expire while its holder's call is still alive lets a second worker take
        the refund over and resend it: the lease must be longer than the longest run."""
        for p in self.processors:
            longest = self.longest_run_seconds(p)
            if self.lease_seconds <= longest:
                raise ValueError(
                    f"lease_seconds: {self.lease_seconds:g} s does not cover the longest run for processor "
                    f"{p.id!r}, {longest:g} s (retry_max_seconds + 2 x timeout_seconds + {LEASE_MARGIN_SECONDS:g} s); "
                    "raise lease_seconds or lower those")
        return self

    def longest_run_seconds(self, processor: ProcessorConfig) -> float:
        """The longest one run (a request's, or a round of background work) can hold a lease: the
        in-run retries stop before starting a round past retry_max_seconds, and the last round is
        at most a look-up and a refund call, each cut at the processor's whole-call deadline."""
        return self.retry_max_seconds + 2 * processor.timeout_seconds + LEASE_MARGIN_SECONDS

    def processor(self, processor_id: str) -> ProcessorConfig | None:
        return next((p for p in self.processors if p.id == processor_id), None)

    def secret_values(self) -> list[str]:
        """Every secret configured (processors' keys and passwords, webhook and callback secrets,
        clients' keys, the metrics token, the database password): for redaction by value."""
        found: list[str] = []

        def walk(value: object) -> None:
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                for name in type(value).model_fields:
                    walk(getattr(value, name))
            elif isinstance(value, (list, tuple)):
                for item in value:
                    walk(item)
        walk(self)
        if self.database_url is not None:
            password = urlsplit(self.database_url.get_secret_value()).password
            found.append(unquote(password) if password else "")
        return [v for v in found if v]

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return init_settings, env_settings, _TomlSource(settings_cls)


def expand_env(value: Any, where: str = "") -> Any:
    """Replace ${VAR} in every string of a parsed TOML document; an unset variable is an error."""
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise ConfigError(f"{where or 'config'}: environment variable {name} is not set")
            return os.environ[name]
        return _ENV_REF.sub(sub, value)
    if isinstance(value, list):
        return [expand_env(v, f"{where}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else k) for k, v in value.items()}
    return value


class _TomlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("GATEWAY_CONFIG")
        if not path:
            return {}
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"GATEWAY_CONFIG: no such file {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"GATEWAY_CONFIG: {path} is not valid TOML: {e}") from None
        return expand_env(data)


def _variable(field: str) -> str:
    """`port` as `GATEWAY_PORT (port)` when the value came from that variable."""
    name = f"GATEWAY_{field.upper()}"
    return f"{name} ({field})" if name in os.environ else field


def validation_problems(err: ValidationError) -> list[str]:
    """One `field.path: message` line per failing field, naming the variable a value came from."""
    problems = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        if loc and loc[0] in Settings.model_fields:
            loc[0] = _variable(loc[0])
        problems.append(f"{'.'.join(loc) or 'config'}: {e['msg']}")
    return problems


# Read by the gateway though they are not settings of the model.
_OTHER_VARIABLES = frozenset({"GATEWAY_CONFIG"})


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """GATEWAY_* variables that no setting reads: a misspelt one must not be silently ignored."""
    known = {f"GATEWAY_{name.upper()}" for name in Settings.model_fields} | _OTHER_VARIABLES
    return sorted(k for k in (os.environ if environ is None else environ)
                  if k.upper().startswith("GATEWAY_") and k.upper() not in known)


def missing_parts(settings: Settings) -> list[str]:
    """What a gateway cannot serve without, with what to do: no processor, no client."""
    problems = []
    if not settings.processors:
        problems.append("processors: none configured: add a [[processors]] table (kind mock, stripe or bridgepay) "
                        "to the file GATEWAY_CONFIG names; deploy/dev.toml has a mock one")
    if not settings.clients:
        problems.append("clients: none configured: add a [[clients]] table with an api_key and scopes; every API "
                        "request needs a client's key")
    return problems


def describe_validation_error(err: ValidationError) -> str:
    return "; ".join(validation_problems(err))


def load_settings(**overrides: Any) -> Settings:
    """Build the settings or raise ConfigError naming the failing field."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        problems = validation_problems(e)
        raise ConfigError(f"invalid configuration: {'; '.join(problems)}", problems) from None
