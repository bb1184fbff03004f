"""The documented error answers of the routes (their `responses=`), made by the table that answers them
(`delivery.api.errors.ANSWERS`) from a sample of each error: the examples are what a client gets."""

from typing import Any

from delivery.api.errors import HEADER_DOCS, AdminForbidden, AdminUnauthenticated, answer_for
from delivery.errors import NotFound, ServiceUnavailable, TransportCompanyConflict, Unauthenticated

Responses = dict[int | str, dict[str, Any]]


def documented(*samples: Exception) -> Responses:
    responses: Responses = {}
    for sample in samples:
        answer = answer_for(sample)
        responses[answer.status] = {
            "description": answer.description,
            "model": answer.model,
            "content": {"application/json": {"example": answer.body(sample)}},
        }
        if answer.headers:
            responses[answer.status]["headers"] = {name: HEADER_DOCS[name] for name in answer.headers}
    return responses


UNAUTHENTICATED = documented(Unauthenticated())
PACKAGE_NOT_FOUND = documented(NotFound("package"))
STATUS_NOT_FOUND = documented(NotFound("registration status"))
JOB_NOT_FOUND = documented(NotFound("job"))
UNAVAILABLE = documented(ServiceUnavailable("redis"))
ADMIN = documented(AdminUnauthenticated(), AdminForbidden("wrong X-Admin-Token"), ServiceUnavailable("redis"))
CONFLICT = documented(TransportCompanyConflict(7))
