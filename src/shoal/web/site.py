"""The web UI's files: `/` is the page, `/ui/...` its scripts, styles and the front-end packages
(installed from npm into static/vendor by shoal.web.vendor). Everything the page shows comes from
the API routes the CLI uses, with the token the user signs in with."""

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).parent / "static"

# Scripts only from this origin; connections only back to it (fetch, the watch and console
# WebSockets). Styles may be inline: xterm.js and noVNC style the elements they create.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


class SecurityHeaders:
    """Adds the UI's security headers to everything served under a path prefix."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


PRELOAD_MARK = "<!-- modulepreload:"


def page_html() -> str:
    """index.html with a modulepreload link for every module of the page: the browser fetches
    them all at once instead of learning of each from the one that imports it."""
    html = (STATIC / "index.html").read_text()
    modules = sorted(path.relative_to(STATIC).as_posix() for path in (STATIC / "js").rglob("*.js"))
    links = "\n".join(f'  <link rel="modulepreload" href="/ui/{module}">' for module in modules)
    start = html.index(PRELOAD_MARK)
    end = html.index("-->", start) + len("-->")
    return html[:start] + links.lstrip() + html[end:]


def install_site(app: FastAPI) -> None:
    router = APIRouter(tags=["Web UI"])
    html = page_html()

    @router.get(
        "/",
        response_class=HTMLResponse,
        summary="The web UI (sign in with a token; it uses the API routes below)",
    )
    def index() -> Response:
        headers = {**SECURITY_HEADERS, "cache-control": "no-cache"}
        return HTMLResponse(html, headers=headers)

    app.include_router(router)
    app.mount("/ui", SecurityHeaders(StaticFiles(directory=STATIC)), name="ui")
