"""The web page at `/`, for a person rather than a program: ask a question and watch the answer
stream in, read the citations with the cited span marked, manage index versions and ingest
documents (docs/web.md).

It is plain HTML, CSS and JavaScript in service/http/static/, written for this project and served
by the app itself: no CDN and no third-party code, so it works on a machine without a network, as
most of this product's machines are. The page and its assets are public (service/http/auth.py);
what it does with them still needs the tokens the API needs, which the person types into the page.
"""

import os
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import Mount
from starlette.types import Receive, Scope, Send

STATIC = Path(str(files("service.http").joinpath("static")))
ASSETS_PATH = "/ui"  # where the page's script and style sheet are mounted

# The page runs its own script only and talks to this server only. Passages are people's documents:
# the script writes them as text (never as markup), and this policy stops anything injected anyway,
# which matters on a page that holds an admin token.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",  # revalidated on each load, so an upgraded server serves its own page
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class Assets(StaticFiles):
    """Static files under a mount, less the names in `hidden`, each request labelled with its
    mount: FastAPI's router records no route for a mount, and the metrics middleware would count
    every asset as `unmatched` (service/http/metrics.py labels by `scope["route"].path`)."""

    def __init__(self, directory: Path, hidden: frozenset[str] = frozenset()) -> None:
        super().__init__(directory=directory)
        self.hidden = hidden
        self.mount: Mount | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("route", self.mount)
        await super().__call__(scope, receive, send)

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        if path in self.hidden:
            return "", None
        return super().lookup_path(path)


def mount_assets(app: FastAPI, path: str, directory: Path, name: str, hidden: frozenset[str] = frozenset()) -> None:
    assets = Assets(directory, hidden)
    assets.mount = Mount(path, app=assets, name=name)
    app.router.routes.append(assets.mount)


def install_pages(app: FastAPI) -> None:
    """Serve the page at `/` and its assets under ASSETS_PATH."""

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    # the page itself only at `/`, with its headers, not as a plain file under ASSETS_PATH
    mount_assets(app, ASSETS_PATH, STATIC, "ui", hidden=frozenset({"index.html"}))
