"""API clients: key authentication (Authorization: Bearer or X-API-Key; HTTP Basic on the operator
console's routes) and scopes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import time
from collections import OrderedDict
from typing import Sequence

from aiohttp import web

from gateway import errors, keys, metrics
from gateway.settings import ClientConfig, Scope

# The operator console is a page for a browser, which cannot add a Bearer header to a navigation:
# its routes, and only those, also take HTTP Basic credentials (user name: the client id, password:
# its API key). A browser resends those by itself, so every console action must also carry the
# console's anti-CSRF header (gateway.routes.console); the JSON API never takes them.
CONSOLE_PREFIX = "/admin/console"
CONSOLE_REALM = "psp-gateway console"


def takes_basic_auth(path: str) -> bool:
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Authenticator:
    """Looks keys up by their SHA-256 digest: no comparison ever runs over the secret itself,
    so timing says nothing about how much of a guessed key was right. A client may hold several
    keys (a rotation), given in clear or as digests."""

    def __init__(self, clients: Sequence[ClientConfig]):
        self._by_digest = {digest: c for c in clients for digest in c.digests()}
        self._buckets = {c.id: TokenBucket(c.rate_limit_per_second, c.rate_limit_burst)
                         for c in clients if c.rate_limit_per_second}

    def authenticate(self, request: web.Request) -> ClientConfig:
        header = request.headers.get("Authorization", "")
        basic = takes_basic_auth(request.path)
        if basic and header[:6].lower() == "basic ":
            client = self._basic(header[6:].strip())
        else:
            if header[:7].lower() == "bearer ":
                presented = header[7:].strip()
            else:
                presented = request.headers.get("X-API-Key", "").strip()
            client = self._by_digest.get(_digest(presented)) if presented else None
        if client is None:
            if basic:  # challenge for Basic, so that a browser asks for the client id and key
                raise errors.Unauthorized("sign in with a client id as user name and its API key as password",
                                          challenge=f'Basic realm="{CONSOLE_REALM}", charset="UTF-8"')
            raise errors.Unauthorized()
        bucket = self._buckets.get(client.id)
        if bucket is not None:
            wait = bucket.take()
            if wait > 0:
                raise errors.TooManyRequests(f"client {client.id!r} is over its rate limit",
                                             headers={"Retry-After": str(max(1, math.ceil(wait)))})
        return client

    def _basic(self, encoded: str) -> ClientConfig | None:
        """The client whose key is the password, if its id is the user name."""
        try:
            user, colon, key = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        client = self._by_digest.get(_digest(key)) if colon and key else None
        if client is None or not hmac.compare_digest(user.encode(), client.id.encode()):
            return None
        return client


class TokenBucket:
    """Per-client rate limit, per process: `rate` requests a second on average, `burst` at once.
    Written out (twelve lines) rather than pulled in: the libraries add async locks or Redis."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self._rate, self._burst, self._clock = rate, burst, clock
        self._tokens, self._last = float(burst), clock()

    def take(self) -> float:
        """Take a token; returns 0, or the seconds until one will be there."""
        wait = self.wait()
        if wait == 0:
            self._tokens -= 1
        return wait

    def wait(self) -> float:
        """0 when a token is there, else the seconds until one will be (takes none)."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self._rate


class SourceLimiter:
    """Limits per source address before sign-in, per process: failed sign-ins (so that guessing a
    key or the console's password costs time) and requests to the routes that take no key. The
    addresses kept are bounded (the least recently seen are forgotten), so a flood from many
    addresses cannot grow the process."""

    KEPT = 10_000

    def __init__(self, failures_per_minute: int, unauthenticated_per_second: float, clock=time.monotonic):
        self._failures = (failures_per_minute / 60, failures_per_minute)
        self._open = (unauthenticated_per_second, max(1, math.ceil(unauthenticated_per_second * 2)))
        self._clock = clock
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()

    def _bucket(self, kind: str, source: str) -> TokenBucket:
        key = (kind, source)
        bucket = self._buckets.get(key)
        if bucket is None:
            rate, burst = self._failures if kind == "failed_sign_in" else self._open
            bucket = self._buckets[key] = TokenBucket(rate, burst, self._clock)
            if len(self._buckets) > self.KEPT:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def check_sign_in(self, source: str) -> None:
        """429 while this address has spent its failed sign-ins."""
        self._refuse("failed_sign_in", self._bucket("failed_sign_in", source).wait())

    def failed_sign_in(self, source: str) -> None:
        self._bucket("failed_sign_in", source).take()

    def unauthenticated(self, source: str) -> None:
        self._refuse("unauthenticated", self._bucket("unauthenticated", source).take())

    @staticmethod
    def _refuse(limit: str, wait: float) -> None:
        if wait > 0:
            metrics.child(metrics.SOURCE_LIMITED, limit).inc()
            detail = ("too many failed sign-ins from this address" if limit == "failed_sign_in"
                      else "too many requests from this address")
            raise errors.TooManyRequests(detail, headers={"Retry-After": str(max(1, math.ceil(wait)))})


def require(request: web.Request, scope: Scope) -> ClientConfig:
    client: ClientConfig = request[keys.CLIENT]
    if scope not in client.scopes:
        raise errors.Forbidden(f"this API key lacks the {scope!r} scope", required_scope=scope)
    return client
