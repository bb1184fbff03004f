"""The read answers as JSON bytes, encoded in one pass from the database's rows.

The shapes are `schemas.PackageRead`, `PackagePage` and `PackageTypeRead`, which the OpenAPI document shows;
validating every row into those models before encoding them took more CPU than the query. pydantic-core
encodes what `response_model` would have (the same `Z` times); the decimals come from the columns' type
already at their scale (`ExactDecimal` quantises on reading), so they are written with their places.
"""

import math
from collections.abc import Sequence
from typing import Any

from pydantic_core import to_json

from delivery.service import AnyRow


def _package(row: AnyRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "weight_kg": row.weight_kg,
        "type": {"id": row.type_id, "name": row.type_name},
        "content_value_usd": row.content_value_usd,
        "delivery_cost_rub": row.delivery_cost_rub,
        "transport_company_id": row.transport_company_id,
        "created_at": row.created_at,
    }


def package(row: AnyRow) -> bytes:
    return to_json(_package(row))


def package_page(rows: Sequence[AnyRow], *, total: int, page: int, size: int) -> bytes:
    return to_json(
        {
            "items": [_package(row) for row in rows],
            "total": total,
            "page": page,
            "size": size,
            "pages": math.ceil(total / size),
        }
    )


def package_types(rows: Sequence[AnyRow]) -> bytes:
    return to_json([{"id": row.id, "name": row.name} for row in rows])
