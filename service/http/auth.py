"""Who may call what, decided in the ASGI layer before a byte of the body is read.

Bearer tokens with two scopes, `read` and `admin` (which includes read). Only SHA-256 digests of
tokens are configured (RAGSERVE_READ_TOKEN_SHA256, RAGSERVE_ADMIN_TOKEN_SHA256); a presented
token is hashed and compared with every digest in constant time, so neither the tokens nor their
timing leak.

Every path has an access level (`access_of`, one table):
- public: /healthz, /readyz, /metrics, the API documentation (/docs, /redoc, /openapi.json and their
  assets) and the web page (/ and its assets): a page holds no data, what it fetches needs tokens;
- query (/v1/ask, /v1/retrieve, and the OpenAI-compatible /v1/chat/completions and /v1/models):
  open unless `protect_queries`, then a read token;
- read (job status, and any path not listed, which then answers 404): a read token once any
  digest is configured, else open;
- admin (/admin/*, and writing documents): an admin token once any digest is configured. With no
  digest at all, only a client on a loopback address that names a loopback host (`Host`, one of
  `allowed_hosts`) gets in, so neither a proxy on the same machine, a server bound to 0.0.0.0,
  nor a web page rebinding its DNS name to 127.0.0.1 reaches the admin routes by accident.
"""

import enum
import hashlib
import hmac
import ipaddress
import secrets

from starlette.types import ASGIApp, Receive, Scope, Send

from ragserve.errors import ForbiddenError, RagserveError, UnauthorizedError
from service.http.docs_assets import DOCS_ASSETS_PATH, DOCS_PATH, OAUTH2_REDIRECT_PATH, REDOC_PATH
from service.http.errors import send_error
from service.http.pages import ASSETS_PATH
from service.settings import Settings


class Access(enum.Enum):
    PUBLIC = "public"
    QUERY = "query"
    READ = "read"
    ADMIN = "admin"


class Granted(enum.Enum):
    READ = "read"
    ADMIN = "admin"


PUBLIC_PATHS = frozenset(
    {"/", "/healthz", "/readyz", "/metrics", DOCS_PATH, OAUTH2_REDIRECT_PATH, REDOC_PATH, "/openapi.json"}
)
PUBLIC_PREFIXES = (ASSETS_PATH + "/", DOCS_ASSETS_PATH + "/")  # static files, public as the pages that load them
QUERY_PATHS = frozenset({"/v1/ask", "/v1/retrieve", "/v1/chat/completions", "/v1/models"})  # OpenAI's too
WRITE_PATHS = frozenset({"/v1/documents", "/v1/documents/files"})  # a JSON batch, file uploads: admin
EDITS_PATH = "/v1/edits"  # the edit memory, read or written: admin
ACTOR = "actor"  # the key, in scope["state"], of who makes a request: "admin:<digest prefix>" or "local"


def access_of(method: str, path: str) -> Access:
    if path in PUBLIC_PATHS or (path.startswith(PUBLIC_PREFIXES) and ".." not in path.split("/")):
        return Access.PUBLIC
    if path in QUERY_PATHS:
        return Access.QUERY
    if path == "/admin" or path.startswith(("/admin/", EDITS_PATH + "/")) or path == EDITS_PATH:
        return Access.ADMIN
    if path in WRITE_PATHS and method != "GET":
        return Access.ADMIN
    return Access.READ  # job status, and anything unknown (deny by default)


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


def scope_of(authorization: str | None, admin: list[str], read: list[str]) -> Granted:
    """The scope a request's Authorization header grants; raises 401 when it grants none."""
    if not authorization:
        raise UnauthorizedError("missing bearer token (Authorization: Bearer <token>)")
    kind, _, token = authorization.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("the Authorization header must be 'Bearer <token>'")
    digest = token_digest(token.strip())
    if _matches(digest, admin):
        return Granted.ADMIN
    if _matches(digest, read):
        return Granted.READ
    raise UnauthorizedError("unknown token")


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port: 'localhost:8000' -> 'localhost',
    '[::1]:8000' -> '::1'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_loopback_address(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class Authentication:
    """ASGI middleware: refuses a request that lacks the access its path needs, with 401/403 and
    a JSON body, before anything reads its body."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                self.check(scope)
            except RagserveError as exc:
                await send_error(send, exc)
                return
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> None:
        access = access_of(scope["method"], scope["path"])
        s = self.settings
        if access is Access.PUBLIC or (access is Access.QUERY and not s.protect_queries):
            return
        if not (s.admin_token_sha256 or s.read_token_sha256):
            if access is Access.ADMIN:
                self._local_only(scope)
                scope.setdefault("state", {})[ACTOR] = "local"
            return
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1") or None
        granted = scope_of(authorization, s.admin_token_sha256, s.read_token_sha256)
        if access is Access.ADMIN and granted is not Granted.ADMIN:
            hint = "" if s.admin_token_sha256 else " (none is configured: set admin_token_sha256)"
            raise ForbiddenError(f"this endpoint needs an admin token{hint}")
        if access is Access.ADMIN:  # who: the token, by its digest's first characters (never the token)
            digest = token_digest(authorization.partition(" ")[2].strip()) if authorization else ""
            scope.setdefault("state", {})[ACTOR] = f"admin:{digest[:12]}"

    def _local_only(self, scope: Scope) -> None:
        client = scope.get("client")
        host = host_name(dict(scope["headers"]).get(b"host", b"").decode("latin-1"))
        if _is_loopback_address(client[0] if client else None) and host in self.settings.allowed_hosts:
            return
        raise ForbiddenError(
            "with no admin token configured, admin routes answer only clients on a loopback address that "
            "address a loopback host name (settings admin_token_sha256, allowed_hosts)"
        )
