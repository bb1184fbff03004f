"""The pages: the customer's at `/`, the operators' at `/admin/`; static files built on the public API.

The operators' page holds no secret: it asks for the token and sends it with each operator request.
"""

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from delivery.schemas import PackageCreate

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
#: The constraints of a field the registration form checks before sending.
BOUNDS = ("gt", "ge", "lt", "le")
COUNTS = ("min_length", "max_length", "decimal_places")

router = APIRouter(include_in_schema=False)


def _page(name: str) -> FileResponse:
    return FileResponse(WEB_DIR / name, headers={"Cache-Control": "no-cache"})


@router.get("/")
async def index() -> FileResponse:
    return _page("index.html")


@router.get("/admin/")
async def admin() -> FileResponse:
    return _page("admin.html")


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


static = StaticFiles(directory=WEB_DIR)
