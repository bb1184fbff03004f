"""The rate limits of the routes, over HTTP: whom a request is counted for, and counting it once.

A route declares its limit as a dependency (`deps.SessionLimit`, `deps.AddressLimit`), which counts the
request; a route's fast path counts it with the same function (`within_route_limit`), so a request the fast
path hands on to FastAPI's stack is not counted twice. Over a limit, `RateLimited` is answered 429 from the
error table (`delivery.api.errors`), with `Retry-After` and the `RateLimit` fields.
"""

import ipaddress

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.types import Scope

from delivery.ratelimit import Limiter, RateLimited

#: The scope's mark of a request counted already.
_COUNTED = "delivery.rate_limit_counted"


class RouteLimit:
    """A route's limit, declared as its dependency: the rule, and whether it counts per session (else per
    client address)."""

    per_session = True

    def __init__(self, rule: str) -> None:
        self.rule = rule


def client_address(scope: Scope) -> str:
    """Whom a limit per client address counts: the connection's address (uvicorn puts the one a trusted proxy
    forwarded there, and only then: `FORWARDED_ALLOW_IPS`). An IPv6 address counts as its /64, the block one
    subscriber is given."""
    client = scope.get("client")
    host = client[0] if client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a unix socket's path, say
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _limiter(request: Request) -> Limiter | None:
    limiter: Limiter | None = request.app.state.resources.limiter
    return limiter


async def count(request: Request, rule: str, subject: str) -> None:
    """Count the request against the rule, once; RateLimited when it is over."""
    if request.scope.get(_COUNTED) or (limiter := _limiter(request)) is None:
        return
    request.scope[_COUNTED] = True
    verdict = await limiter.hit(rule, subject)
    if verdict is not None and not verdict.allowed:
        raise RateLimited(verdict)


async def within_route_limit(request: Request, session_id: int) -> None:
    """For a fast path, which has found the request's session: the limit per session its route declares."""
    route: APIRoute = request.scope["route"]
    for dependency in route.dependant.dependencies:
        if isinstance(dependency.call, RouteLimit) and dependency.call.per_session:
            await count(request, dependency.call.rule, str(session_id))


async def check_operator_key(request: Request, *, right: bool) -> None:
    """The limit of wrong operator keys per client address. A wrong key is counted; over the limit, every key
    from that address is refused before it is compared, the right one too: else the answer to a guess
    would still tell whether it was right."""
    if (limiter := _limiter(request)) is None:
        return
    address = client_address(request.scope)
    if right:
        verdict = await limiter.check("operator-keys", address)
    else:
        verdict = await limiter.hit("operator-keys", address)
    if verdict is not None and not verdict.allowed:
        raise RateLimited(verdict)
