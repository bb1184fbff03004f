"""A route class whose JSON bodies never pass through a binary float."""

import json
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


def decimal_json(body: bytes) -> Any:
    """A JSON body with its numbers' fractions as `Decimal`; any failure to parse is a JSONDecodeError."""
    try:
        return json.loads(body, parse_float=Decimal)
    except ValueError as exc:  # e.g. an integer longer than Python converts
        if isinstance(exc, json.JSONDecodeError):
            raise
        raise json.JSONDecodeError(str(exc), body.decode(errors="replace"), 0) from None


class DecimalJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = decimal_json(await self.body())
        return self._json


class DecimalRoute(APIRoute):
    """JSON numbers in request bodies are parsed as `Decimal`, so `1.1` stays exactly 1.1."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def decimal_handler(request: Request) -> Response:
            return await handler(DecimalJSONRequest(request.scope, request.receive))

        return decimal_handler
