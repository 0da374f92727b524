"""``/docs``: Swagger UI, and ``/redoc``: ReDoc, from the package's own copies (app/ui/static/vendor,
refreshed by scripts/vendor_assets.py), so both work on a machine with no internet, where
GPU clusters often live. No CDN is ever asked for anything (nor Google's fonts)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.ui.render import STATIC

ASSETS = "/docs/assets"
router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="trainjobs API",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
        oauth2_redirect_url="/docs/oauth2-redirect",
        swagger_ui_parameters={"validatorUrl": None},  # its badge would ask validator.swagger.io
    )


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return get_redoc_html(
        openapi_url="/openapi.json",
        title="trainjobs API",
        redoc_js_url="/ui/static/vendor/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS}/favicon-32x32.png",
        with_google_fonts=False,
    )


@router.get("/docs/oauth2-redirect")
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


def install_docs(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=STATIC / "vendor" / "swagger-ui"), name="docs-assets")
