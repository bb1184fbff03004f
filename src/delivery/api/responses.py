"""The documented error answers of the routes (their `responses=`), made by the table that answers them
(`delivery.api.errors.ANSWERS`) from a sample of each error: the examples are what a client gets."""

from typing import Any

from delivery.api.errors import HEADER_DOCS, AdminForbidden, AdminUnauthenticated, answer_for
from delivery.config import Settings
from delivery.errors import NotFound, ServiceUnavailable, TransportCompanyConflict, Unauthenticated
from delivery.ratelimit import RULE_SETTINGS, RateLimited, Rule, Verdict, Window

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
        if headers := answer.headers_of(sample):
            responses[answer.status]["headers"] = {name: HEADER_DOCS[name] for name in headers}
    return responses


def over_limit(rule_name: str) -> RateLimited:
    """A sample refusal by the rule at its default: its first window spent, ending in 42 s."""
    rule = Rule.parse(rule_name, Settings.model_fields[RULE_SETTINGS[rule_name]].default)
    spent = tuple(Window(item, item.amount + 1, 42, over=True) for item in rule.items[:1])
    return RateLimited(Verdict(rule, spent))


UNAUTHENTICATED = documented(Unauthenticated())
PACKAGE_NOT_FOUND = documented(NotFound("package"))
STATUS_NOT_FOUND = documented(NotFound("registration status"))
JOB_NOT_FOUND = documented(NotFound("job"))
UNAVAILABLE = documented(ServiceUnavailable("redis"))
ADMIN = documented(
    AdminUnauthenticated(),
    AdminForbidden("wrong X-Admin-Token"),
    ServiceUnavailable("redis"),
    over_limit("operator-keys"),
)
CONFLICT = documented(TransportCompanyConflict(7))
#: The answers of the routes a rate limit applies to, over it.
LIMITED_REGISTRATIONS = documented(over_limit("registrations"))
LIMITED_READS = documented(over_limit("reads"))
LIMITED_SESSIONS = documented(over_limit("sessions"))
