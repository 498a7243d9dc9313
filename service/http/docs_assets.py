"""/docs (Swagger UI) and /redoc (ReDoc) with every asset served by this app, so the API
documentation renders on a machine without a network (FastAPI's defaults load them from a CDN,
and ReDoc's page its fonts from Google: both blank offline).

The assets come from the fastapi-offline package (MIT), which ships Swagger UI (Apache-2.0) and
ReDoc (MIT) builds; docs/web.md names them.
"""

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse

from service.http.pages import mount_assets

DOCS_ASSETS_PATH = "/docs-assets"
DOCS_PATH = "/docs"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
REDOC_PATH = "/redoc"
ASSETS = Path(str(files("fastapi_offline").joinpath("static")))

# Both pages load, fetch and show only what this server serves: ReDoc's sidebar shows a logo from
# Redocly's CDN, which this policy blocks (it hides itself when the image fails). Swagger UI starts
# from an inline script, ReDoc styles itself with inline styles and searches in a blob: worker.
DOCS_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    )
)


def install_api_docs(app: FastAPI) -> None:
    """Add the documentation pages to an app made with `docs_url=None, redoc_url=None`."""
    mount_assets(app, DOCS_ASSETS_PATH, ASSETS, "docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    # Swagger UI would send the schema to validator.swagger.io for its badge: not offline, and not
    # something to send a third party.
    parameters = {**(app.swagger_ui_parameters or {}), "validatorUrl": None}

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _confined(
            get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=root + OAUTH2_REDIRECT_PATH,
                swagger_js_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui.css",
                swagger_favicon_url=f"{root}{DOCS_ASSETS_PATH}/favicon.png",
                swagger_ui_parameters=parameters,
            )
        )

    @app.get(OAUTH2_REDIRECT_PATH, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _confined(
            get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{DOCS_ASSETS_PATH}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{DOCS_ASSETS_PATH}/favicon.png",
                with_google_fonts=False,
            )
        )


def _confined(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_POLICY
    return page
