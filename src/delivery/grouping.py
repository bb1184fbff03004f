"""Calls of concurrent callers sent together (a group commit): the API's publisher sends the jobs of
concurrent requests as one message, the store their script calls as one pipeline.

While one group is on its way, the items submitted meanwhile wait and go out together as the next: a lone
caller's item goes at once, and under load one write and one answer serve many callers.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Sends a group's items, within the latest of its callers' deadlines (None: none): an outcome per item, in
#: order (a result, or the exception that caller gets); raising fails the whole group.
Send = Callable[[list[T], float | None], Awaitable[Sequence[R | BaseException]]]


@dataclass(slots=True)
class _Waiting(Generic[T, R]):
    item: T
    outcome: "asyncio.Future[R]"
    #: When its caller gives up (the loop's clock), if it does.
    deadline: float | None


class Grouped(Generic[T, R]):
    """Items of concurrent callers handed to `send` in groups of at most `limit`.

    Each caller keeps its own deadline: a caller whose deadline passes is answered TimeoutError at once,
    while its group goes on for the others, until the last of their deadlines. An item whose caller gave up
    before its group went out is never sent. A caller cancelled meanwhile leaves its
    item to go out, and the others of its group are not affected. Closing answers every caller still
    waiting with `closed()`.
    """

    def __init__(
        self, send: Send[T, R], *, closed: Callable[[], BaseException], limit: int | None = None
    ) -> None:
        self._send_group = send
        self._closed = closed
        self._limit = limit
        self._waiting: list[_Waiting[T, R]] = []
        #: The task sending the groups, while there are items to send.
        self._sender: asyncio.Task[None] | None = None

    async def submit(self, item: T, *, within: float | None = None) -> R:
        """`item`'s outcome once its group is sent; TimeoutError after `within` seconds."""
        loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        waiting = _Waiting[T, R](item, loop.create_future(), deadline)
        self._waiting.append(waiting)
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())
        try:
            async with asyncio.timeout_at(waiting.deadline):
                return await asyncio.shield(waiting.outcome)
        except TimeoutError:
            waiting.outcome.cancel()  # not sent yet: it never will be
            raise

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.wait([self._sender])
        # A sender cancelled before it ever ran did not reach its own clean-up.
        left, self._waiting = self._waiting, []
        _settle(left, [self._closed()] * len(left))

    async def _send(self) -> None:
        group: list[_Waiting[T, R]] = []
        try:
            while self._waiting:
                limit = self._limit or len(self._waiting)
                taken, self._waiting = self._waiting[:limit], self._waiting[limit:]
                now = asyncio.get_running_loop().time()
                expired = [w for w in taken if w.deadline is not None and w.deadline <= now]
                _settle(expired, [TimeoutError("not sent within the deadline")] * len(expired))
                group = [w for w in taken if not w.outcome.done()]
                if not group:
                    continue
                deadlines = [w.deadline for w in group if w.deadline is not None]
                try:
                    latest = None if len(deadlines) < len(group) else max(deadlines)
                    outcomes = await self._send_group([w.item for w in group], latest)
                except Exception as exc:
                    outcomes = [exc] * len(group)
                _settle(group, outcomes)
                group = []
        finally:
            # Cancelled (closing): the group in flight and those waiting are answered, not left.
            self._sender = None
            left, self._waiting = group + self._waiting, []
            _settle(left, [self._closed()] * len(left))


def _settle(waiting: Sequence[_Waiting[T, R]], outcomes: Sequence[R | BaseException]) -> None:
    for w, outcome in zip(waiting, outcomes, strict=True):
        if w.outcome.done():
            continue
        if isinstance(outcome, BaseException):
            w.outcome.set_exception(outcome)
            w.outcome.exception()  # its caller may be gone (timed out): not an error nobody retrieved
        else:
            w.outcome.set_result(outcome)
