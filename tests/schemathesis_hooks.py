"""What schemathesis is taught beyond the OpenAPI document (loaded through `SCHEMATHESIS_HOOKS` by
tests/test_fuzz.py).

GET /admin/stats/daily-costs/ takes a range whose rule binds two values, which JSON Schema cannot state:
`from` not after `to`, at most 366 days apart. A query of the documented shape that breaks it is a 422
(tests/test_daily_costs.py holds that); generated queries are brought within the rule, so that every check,
the acceptance of valid data included, runs on this operation as on every other.
"""

from datetime import date, timedelta
from typing import Any

import schemathesis

RANGE_PATH = "/admin/stats/daily-costs/"
LONGEST = timedelta(days=365)  # `to` - `from`: 366 days, both counted


def _day(value: Any) -> date | None:
    try:
        return date.fromisoformat(value) if isinstance(value, str) and len(value) == 10 else None
    except ValueError:
        return None


@schemathesis.hook
def map_query(ctx: schemathesis.HookContext, query: dict[str, Any] | None) -> dict[str, Any] | None:
    if ctx.operation is None or ctx.operation.path != RANGE_PATH or not query:
        return query
    first, last = _day(query.get("from")), _day(query.get("to"))
    if first is None or last is None:
        return query
    first, last = min(first, last), max(first, last)
    last = min(last, first + LONGEST)
    return query | {"from": first.isoformat(), "to": last.isoformat()}
