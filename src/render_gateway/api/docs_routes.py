"""``GET /docs``: the OpenAPI viewer, with Swagger UI served from the package (offline).

FastAPI's own ``/docs`` loads Swagger UI from a CDN and is blank without network; the app turns
it off (``docs_url=None``) and this module serves the vendored swagger-ui-dist files
(api/static/swagger-ui, see its README) under ``/docs/static``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

SWAGGER_UI_DIR = Path(__file__).resolve().parent / "static" / "swagger-ui"
STATIC_PATH = "/docs/static"

router = APIRouter()
# Mounted by the app beside the router: the files, with their content types, and nothing else.
static_files = StaticFiles(directory=SWAGGER_UI_DIR)


@router.get("/docs", include_in_schema=False)
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="Render API",
        swagger_js_url=f"{STATIC_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{STATIC_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{STATIC_PATH}/favicon-32x32.png",
        # Swagger UI would send the document to validator.swagger.io for its badge: never.
        swagger_ui_parameters={"validatorUrl": None},
    )
