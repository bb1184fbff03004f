"""The documented error answers, with their bodies, shared by the routers."""

from typing import Any

from delivery.schemas import ConflictProblem, Problem

Responses = dict[int | str, dict[str, Any]]


def _problem(description: str, example: str, model: type = Problem) -> dict[str, Any]:
    return {
        "description": description,
        "model": model,
        "content": {"application/json": {"example": {"detail": example}}},
    }


UNAUTHENTICATED: Responses = {
    401: _problem(
        "No session, or an unknown or expired one", "no valid session: open one with GET /sessions/new/"
    )
}
NOT_FOUND: Responses = {404: _problem("Unknown, or another session's", "package not found")}
UNAVAILABLE: Responses = {
    503: {
        **_problem(
            "A backing service is down; try again after Retry-After", "redis is unavailable, try again later"
        ),
        "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    }
}
ADMIN: Responses = {
    401: _problem("No X-Admin-Token header", "operator endpoint: send the X-Admin-Token header"),
    403: _problem("A wrong token, or ADMIN_TOKEN not configured", "wrong X-Admin-Token"),
    **UNAVAILABLE,
}
CONFLICT: Responses = {
    409: {
        "description": "Another company holds the package; its id is in `transport_company_id`",
        "model": ConflictProblem,
        "content": {
            "application/json": {
                "example": {
                    "detail": "the package is already bound to transport company 7",
                    "transport_company_id": 7,
                }
            }
        },
    }
}
