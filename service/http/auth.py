"""Bearer-token authentication with two scopes, `read` and `admin` (which includes read).

Only SHA-256 digests of tokens are configured (RAGSERVE_READ_TOKEN_SHA256,
RAGSERVE_ADMIN_TOKEN_SHA256); a presented token is hashed and compared with every digest in
constant time, so neither the tokens nor their timing leak.
"""

import enum
import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header, params

from ragserve.errors import ForbiddenError, UnauthorizedError
from service.http.state import ServiceState, StateDep


class Scope(enum.Enum):
    READ = "read"
    ADMIN = "admin"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh random token and the digest to configure for it."""
    token = "rgs_" + secrets.token_urlsafe(32)
    return token, token_digest(token)


def _matches(digest: str, allowed: list[str]) -> bool:
    found = False
    for candidate in allowed:  # no early exit: the time taken does not depend on which one matched
        found |= hmac.compare_digest(digest, candidate)
    return found


def scope_of(authorization: str | None, admin: list[str], read: list[str]) -> Scope:
    """The scope a request's Authorization header grants; raises 401 when it grants none."""
    if not authorization:
        raise UnauthorizedError("missing bearer token (Authorization: Bearer <token>)")
    kind, _, token = authorization.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("the Authorization header must be 'Bearer <token>'")
    digest = token_digest(token.strip())
    if _matches(digest, admin):
        return Scope.ADMIN
    if _matches(digest, read):
        return Scope.READ
    raise UnauthorizedError("unknown token")


def require(scope: Scope, only_if: Callable[[ServiceState], bool] = lambda _: True) -> params.Depends:
    """A dependency that lets a request through only with a token of `scope` (admin covers read)."""

    async def check(state: StateDep, authorization: Annotated[str | None, Header()] = None) -> None:
        if not only_if(state):
            return
        settings = state.settings
        granted = scope_of(authorization, settings.admin_token_sha256, settings.read_token_sha256)
        if scope is Scope.ADMIN and granted is not Scope.ADMIN:
            raise ForbiddenError("this endpoint needs an admin token")

    marker: params.Depends = Depends(check)  # a coroutine: FastAPI would run a function on a thread
    return marker


# Query endpoints: protected only when the `protect_queries` setting is on.
QueryAuth = require(Scope.READ, only_if=lambda state: state.settings.protect_queries)
