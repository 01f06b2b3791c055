"""API clients: key authentication (Authorization: Bearer or X-API-Key) and scopes."""

from __future__ import annotations

import hashlib
from typing import Sequence

from aiohttp import web

from gateway import errors, keys
from gateway.settings import ClientConfig, Scope


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Authenticator:
    """Looks keys up by their SHA-256 digest: no comparison ever runs over the secret itself,
    so timing says nothing about how much of a guessed key was right."""

    def __init__(self, clients: Sequence[ClientConfig]):
        self._by_digest = {_digest(c.api_key.get_secret_value()): c for c in clients}

    def authenticate(self, request: web.Request) -> ClientConfig:
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            presented = header[7:].strip()
        else:
            presented = request.headers.get("X-API-Key", "").strip()
        client = self._by_digest.get(_digest(presented)) if presented else None
        if client is None:
            raise errors.Unauthorized()
        return client


def require(request: web.Request, scope: Scope) -> ClientConfig:
    client: ClientConfig = request[keys.CLIENT]
    if scope not in client.scopes:
        raise errors.Forbidden(f"this API key lacks the {scope!r} scope", required_scope=scope)
    return client
