"""The pages: the customer's at `/`, the operators' at `/admin/`, the API's at `/docs`; static files built on
the public API, and the headers that hold browsers to them.

The operators' page holds no secret: it asks for the token and sends it with each operator request.
`/docs` is Swagger UI from files the app serves (swagger-ui-dist, as the fastapi-offline package ships it),
started by a script file of ours: FastAPI's own page loads them from a CDN and starts them inline.
"""

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from delivery.api.middleware import Header
from delivery.schemas import PackageCreate

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
#: The constraints of a field the registration form checks before sending.
BOUNDS = ("gt", "ge", "lt", "le")
COUNTS = ("min_length", "max_length", "decimal_places")

router = APIRouter(include_in_schema=False)

#: The pages and their files: no inline script or style, nothing from elsewhere, no plugins, never in a frame.
PAGE_POLICY = "; ".join(
    (
        "default-src 'self'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    )
)
#: Swagger UI's stylesheet draws its icons (a select's arrow, the copy button) as `data:` images.
DOCS_POLICY = f"{PAGE_POLICY}; img-src 'self' data:"
#: Every other answer (JSON, metrics, errors), were it opened as a document: nothing loads, nothing runs.
API_POLICY = "default-src 'none'; frame-ancestors 'none'"


def _headers(policy: str) -> tuple[Header, ...]:
    """On every answer: no type guessed but the one sent; no address of ours sent to another site."""
    return (
        (b"content-security-policy", policy.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
    )


PAGE_HEADERS = _headers(PAGE_POLICY)
API_HEADERS = _headers(API_POLICY)
PAGES = {"/": PAGE_HEADERS, "/admin/": PAGE_HEADERS, "/docs": _headers(DOCS_POLICY)}
STATIC = "/static/"


def security_headers(path: str) -> tuple[Header, ...]:
    """The headers an answer to `path` carries; made once, the middleware appends them as they are."""
    if (page := PAGES.get(path)) is not None:
        return page
    return PAGE_HEADERS if path.startswith(STATIC) else API_HEADERS


def _page(name: str) -> FileResponse:
    return FileResponse(WEB_DIR / name, headers={"Cache-Control": "no-cache"})


@router.get("/")
async def index() -> FileResponse:
    return _page("index.html")


@router.get("/admin/")
async def admin() -> FileResponse:
    return _page("admin.html")


@router.get("/docs")
async def docs() -> FileResponse:
    return _page("docs.html")


def package_rules() -> dict[str, dict[str, Any]]:
    """The bounds of PackageCreate, read from the schema the API validates with; bounds as decimal strings.

    OpenAPI carries the bounds as binary floats and not the decimal places, so the form reads these instead.
    """
    rules: dict[str, dict[str, Any]] = {}
    for name, field in PackageCreate.model_fields.items():
        rule: dict[str, Any] = {}
        for constraint in field.metadata:
            for key in BOUNDS:
                if (bound := getattr(constraint, key, None)) is not None:
                    rule[key] = str(bound)
            for key in COUNTS:
                if (count := getattr(constraint, key, None)) is not None:
                    rule[key] = count
        rules[name] = rule
    return rules


@router.get("/web/package-rules.json")
async def rules() -> dict[str, dict[str, Any]]:
    return package_rules()


def mount_static(app: FastAPI) -> None:
    """Our files at /static/, Swagger UI's at /static/swagger-ui/ (mounted first: the longer prefix)."""
    app.mount("/static/swagger-ui", StaticFiles(packages=[("fastapi_offline", "static")]), name="swagger-ui")
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
