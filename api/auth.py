"""API keys: bearer tokens whose sha256 hashes (never the tokens) live in settings, each allowed some entities.

Off by default (`api.auth: false`): every caller is `ANONYMOUS`, who may read everything. `fstore serve` refuses
to listen beyond loopback that way unless asked to (api/cli.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fstore.api.errors import ForbiddenEntityError, NotAuthenticatedError
from fstore.settings import ApiSettings

ALL_ENTITIES = "*"


def hash_token(token: str) -> str:
    """What `api.keys[].sha256` holds for a token: `printf %s TOKEN | sha256sum`."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a named API key and the entities it may read (None: all of them)."""

    name: str
    entities: frozenset[str] | None

    def may_read(self, entity: str) -> bool:
        return self.entities is None or entity in self.entities

    def check_may_read(self, entity: str) -> None:
        if not self.may_read(entity):
            raise ForbiddenEntityError(f"API key {self.name!r} may not read entity {entity!r}")


ANONYMOUS = Principal("anonymous", None)


class Authenticator:
    """Maps an `Authorization` header to a `Principal`, or raises NotAuthenticatedError (401)."""

    def __init__(self, settings: ApiSettings) -> None:
        self.enabled = settings.auth
        self._by_hash = {
            key.sha256: Principal(key.name, None if ALL_ENTITIES in key.entities else frozenset(key.entities))
            for key in settings.keys
        }

    def authenticate(self, authorization: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise NotAuthenticatedError("missing API key: send `Authorization: Bearer <key>`")
        # A dict lookup on the hash: the hash of a guess says nothing useful about the stored hashes.
        principal = self._by_hash.get(hash_token(token))
        if principal is None:
            raise NotAuthenticatedError("invalid API key")
        return principal
