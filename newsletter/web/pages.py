"""Server-rendered pages: one autoescaping Jinja environment for templates/web."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from newsletter.resources import TEMPLATES_DIR

TEMPLATES = TEMPLATES_DIR / "web"

# Pages must not be framed (clickjacking of the confirm button) nor cached by proxies: they
# show one person's answer.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:;"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The page templates' environment (autoescaped, undefined names are errors)."""
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # a stat() per page otherwise; templates change with a deploy
    )


def page(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render ``templates/web/{template}`` as an HTML response with the security headers."""
    html = environment().get_template(template).render(**context)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def error_page(status_code: int, title: str, message: str) -> HTMLResponse:
    """A friendly error page in Chinese, with the status code a client can act on."""
    return page("error.html", status_code, title=title, message=message)
