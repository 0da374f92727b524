"""Default deny: every route of the app needs a token, but for a short, explicit allowlist.

A new route without an auth dependency fails this test until it gets one (or a place on the list,
with a reason); the list is the whole of what anyone can reach without a token.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Route

from app.api.auth import OPEN_PATHS, admin_user, current_user, metrics_reader, require_worker
from app.core.config import Settings
from app.main import create_app

ALLOWLIST = {
    "/healthz": "load balancers and `make run` probe it; it says only that the database answers",
    "/auth/login": "how a user without a token gets one (throttled)",
    "/openapi.json": "the API's description: no data",
    "/docs": "Swagger UI over /openapi.json",
    "/docs/oauth2-redirect": "Swagger UI's own page",
    "/redoc": "ReDoc over /openapi.json",
    "/": "redirects to /ui/",
    "/ui": "redirects to /ui/",
    "/ui/login": "the dashboard's sign-in form, and where it is sent (throttled as /auth/login)",
}
OPEN_ASSETS = (
    "/docs/assets/, /ui/static/: Swagger UI's, ReDoc's, uPlot's and the dashboard's own files, from the package"
)
assert set(ALLOWLIST) == OPEN_PATHS, "the middleware's open paths and this list are one list"
AUTH = {current_user, admin_user, metrics_reader, require_worker}


def every_route(app: FastAPI) -> Iterator[BaseRoute]:
    """The app's routes, those of included routers too (FastAPI 0.16x keeps included routers as such)."""
    try:
        from fastapi.routing import _iter_included_route_candidates
    except ImportError:  # older FastAPI: included routes are copied into app.routes
        yield from app.routes
    else:
        yield from _iter_included_route_candidates(app.routes)


def needs_auth(dependant: Dependant) -> bool:
    return any(d.call in AUTH or needs_auth(d) for d in dependant.dependencies)


def test_every_route_has_an_auth_dependency_or_a_place_on_the_allowlist() -> None:
    app = create_app(Settings(_env_file=None))  # type: ignore[call-arg]
    open_routes = set()
    for route in every_route(app):
        if isinstance(route, APIRoute):
            if not needs_auth(route.dependant):
                open_routes.add(route.path)
        elif isinstance(route, Route):  # the docs' own routes, outside FastAPI's dependency system
            open_routes.add(route.path)
    assert len(open_routes) + 20 < sum(1 for _ in every_route(app))  # the walk found the routers' routes
    assert open_routes == set(ALLOWLIST), "a route without auth: give it CurrentUser / AdminUser / require_worker"


def test_the_api_description_answers_without_a_token() -> None:
    from fastapi.testclient import TestClient

    client = TestClient(create_app(Settings(_env_file=None)))  # type: ignore[call-arg]  # not started: no database
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert client.get(path).status_code == 200, path


def test_swagger_ui_loads_from_the_package_not_from_a_cdn() -> None:
    """A machine without internet (where GPU clusters often live) still gets a working /docs."""
    import re

    from fastapi.testclient import TestClient

    client = TestClient(create_app(Settings(_env_file=None)))  # type: ignore[call-arg]
    page = client.get("/docs").text
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page)
    assert assets and all(a.startswith("/docs/assets/") for a in assets), assets
    assert "//cdn" not in page and "https://" not in page.replace("https://fastapi.tiangolo.com", "")
    for asset in assets:
        r = client.get(asset)
        assert r.status_code == 200 and len(r.content) > 100, asset
