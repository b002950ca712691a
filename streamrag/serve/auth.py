"""Bearer tokens: who may read, and which tenant's chunks.

Tokens never sit in the config file. They come from a file named by ``--tokens-file`` or
$STREAMRAG_TOKENS_FILE, one ``<tenant> <token>`` per line (``*`` as the tenant: every
tenant; ``#`` starts a comment), or from $STREAMRAG_TOKENS as ``tenant:token,...``.
Only their SHA-256 digests stay in memory; a presented token is hashed and compared with
every entry in constant time (``hmac.compare_digest``), so timing tells nothing.

A tenant-bound token adds ``metadata.tenant == <its tenant>`` to every read on the server
side. Filters are ANDed, so nothing in a request can widen that; a request that filters
on ``tenant`` itself is refused, so a mistake is told rather than silently narrowed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from streamrag.errors import UserError
from streamrag.stores.base import Filters

ALL_TENANTS = "*"
TENANT_KEY = "tenant"
MIN_TOKEN_CHARS = 16
TOKENS_FILE_ENV = "STREAMRAG_TOKENS_FILE"
TOKENS_ENV = "STREAMRAG_TOKENS"


class AuthError(UserError):
    """No valid token (HTTP 401)."""


class Forbidden(UserError):
    """A valid token asking for what it may not see (HTTP 403)."""


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str | None  # None: every tenant

    def __str__(self) -> str:
        return "all tenants" if self.tenant is None else f"tenant {self.tenant}"

    def scope(self, filters: Filters) -> Filters:
        """``filters`` narrowed to what this principal may read."""
        if self.tenant is None:
            return filters
        if TENANT_KEY in filters.metadata:
            raise Forbidden(
                "this token is bound to one tenant, which it sets itself: do not filter on tenant"
            )
        return Filters(
            fields=dict(filters.fields), metadata={**filters.metadata, TENANT_KEY: self.tenant}
        )


class TokenBook:
    """Token digests and the tenant each one reads."""

    def __init__(self, entries: list[tuple[str, str]]) -> None:
        if not entries:
            raise UserError(
                f"no API tokens: give --tokens-file, ${TOKENS_FILE_ENV} or ${TOKENS_ENV}"
                " (lines of '<tenant> <token>'; tenant * reads every tenant)"
            )
        self._entries: list[tuple[bytes, Principal]] = []
        for tenant, token in entries:
            if len(token) < MIN_TOKEN_CHARS:
                raise UserError(
                    f"the token for {tenant} is shorter than {MIN_TOKEN_CHARS} characters:"
                    " use a random one (python -c 'import secrets; print(secrets.token_urlsafe())')"
                )
            principal = Principal(None if tenant == ALL_TENANTS else tenant)
            self._entries.append((_digest(token), principal))

    def __len__(self) -> int:
        return len(self._entries)

    def verify(self, token: str | None) -> Principal:
        """The principal of ``token``; AuthError when it is missing or unknown."""
        if not token:
            raise AuthError("missing bearer token")
        digest = _digest(token)
        found: Principal | None = None
        for known, principal in self._entries:  # every entry, match or not
            if hmac.compare_digest(known, digest):
                found = principal
        if found is None:
            raise AuthError("invalid bearer token")
        return found

    def verify_header(self, authorization: str | None) -> Principal:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            raise AuthError("missing bearer token (Authorization: Bearer <token>)")
        return self.verify(token.strip())

    @classmethod
    def load(
        cls, path: str | Path | None = None, env: Mapping[str, str] | None = None
    ) -> TokenBook:
        """Tokens from ``path`` (or $STREAMRAG_TOKENS_FILE) and $STREAMRAG_TOKENS."""
        env = os.environ if env is None else env
        entries: list[tuple[str, str]] = []
        path = path or env.get(TOKENS_FILE_ENV)
        if path:
            entries += parse_tokens_file(Path(path))
        if env.get(TOKENS_ENV):
            entries += parse_tokens_env(env[TOKENS_ENV])
        return cls(entries)


def parse_tokens_file(path: Path) -> list[tuple[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read tokens file {path}: {e.strerror}") from None
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise UserError(f"{path}:{number}: expected '<tenant> <token>'")
        entries.append((parts[0], parts[1]))
    return entries


def parse_tokens_env(value: str) -> list[tuple[str, str]]:
    entries = []
    for item in filter(None, (i.strip() for i in value.split(","))):
        tenant, sep, token = item.partition(":")
        if not sep or not tenant or not token:
            raise UserError(f"${TOKENS_ENV}: expected 'tenant:token,...'")
        entries.append((tenant, token))
    return entries


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
