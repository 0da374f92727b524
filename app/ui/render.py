"""How every dashboard page is answered: its template, the caller and CSRF token in the context, and
headers that keep it private (never cached) and keep the page to the service's own files (CSP)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app import __version__
from app.api.auth import csrf_token
from app.core.states import JobStatus
from app.ui import views

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))
TEMPLATES.env.globals.update(
    duration=views.duration,
    job_seconds=views.job_seconds,
    best_metric=views.best_metric,
    status_class=views.STATUS_CLASS,
    statuses=list(JobStatus),
    version=__version__,
)
TEMPLATES.env.filters["pretty"] = lambda value: json.dumps(value, indent=2, sort_keys=False, default=str)
TEMPLATES.env.filters["number"] = views.number
TEMPLATES.env.filters["bytes"] = views.size
TEMPLATES.env.filters["iso"] = views.iso

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
"""Nothing on a page may come from, or go to, another host; no inline script runs."""
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render ``template`` for the caller the request was authenticated as (if any)."""
    session = getattr(request.state, "session", None)
    base = {"caller": getattr(request.state, "caller", None), "csrf": csrf_token(session) if session else ""}
    response = TEMPLATES.TemplateResponse(request, template, {**base, **context}, status_code=status_code)
    response.headers.update(PAGE_HEADERS)
    return response


def not_found(request: Request, what: str) -> HTMLResponse:
    return page(request, "404.html", status_code=404, what=what)
