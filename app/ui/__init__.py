"""The dashboard: server-rendered pages (Jinja2) under ``/ui/``, small plain JavaScript modules for the
live parts, charts by uPlot; every file it needs ships in this package (``static/vendor``)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles


def install_dashboard(app: FastAPI) -> None:
    from app.ui import pages, signin, submit, sweeps
    from app.ui.render import STATIC

    app.include_router(signin.router)
    app.include_router(pages.router)
    app.include_router(sweeps.router)
    app.include_router(submit.router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
