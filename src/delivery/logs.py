"""Logging for the API and the worker, configured in one place.

`LOG_LEVEL` (default INFO; DEBUG also echoes SQL) and `LOG_FORMAT` (`text`, the default, or `json`: one JSON
object per line) come from the environment. Every line carries the request id of the HTTP request, or the
registration id of the job, it was logged under.
"""

import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
#: The registration a line is about. In the worker, a line about one job of a batch names that job alone;
#: the lines about the batch as a whole name none.
registration_id: ContextVar[str | None] = ContextVar("registration_id", default=None)


@contextmanager
def about_registrations(*ids: str) -> Iterator[None]:
    """Every line logged within is about these registrations."""
    token = registration_id.set(",".join(ids) or None)
    try:
        yield
    finally:
        registration_id.reset(token)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]%(context)s %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"


#: What could end a line or rewrite a terminal: C0 and C1 controls, DEL, Unicode's line separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


class TextFormatter(logging.Formatter):
    """One record, one line: control characters in any value (a path, a header, a name) are escaped, so
    that what a client sends cannot forge a line of the log. A traceback that follows keeps its lines."""

    #: The second last formatted and its text: every line of a request logs the time, most within one second.
    _second: tuple[int, str] = (-1, "")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return _CONTROL.sub(_escaped, super().formatMessage(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """As logging's own (`2026-12-01 00:30:20,116`), the second's text made once a second."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime(self.default_time_format, self.converter(record.created)))
            self._second = cached  # one assignment: a thread never sees a second with another's text
        return f"{cached[1]},{int(record.msecs):03d}"  # logging's default_msec_format, "%s,%03d"


class ContextFilter(logging.Filter):
    """Adds `request_id` and `registration_id` to every record (and `context`, their text form)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.registration_id = registration_id.get()
        names = ("request_id", "registration_id")
        record.context = "".join(f" {name}={value}" for name in names if (value := getattr(record, name)))
        return True


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        # JSON escapes control characters in every string itself.
        return JsonFormatter(
            JSON_FIELDS,
            rename_fields={"levelname": "level", "asctime": "time"},
            reserved_attrs=[*RESERVED_ATTRS, "context"],
        )
    return TextFormatter(TEXT_FORMAT)


def configure_logging(level: str | None = None, fmt: str | None = None) -> None:
    level = (level or os.environ.get("LOG_LEVEL") or "INFO").upper()
    fmt = (fmt or os.environ.get("LOG_FORMAT") or "text").lower()
    # No line shows a thread's or a multiprocessing process's name, nor the file and line it was logged
    # from: not looked up for every record (logging's documented switches; `_srcfile` saves a stack walk).
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(formatter(fmt))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    sys.unraisablehook = _log_unraisable
    # SQL echo only when asked for with LOG_LEVEL=DEBUG.
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO if level == "DEBUG" else logging.WARNING)
    for noisy in ("httpx", "httpcore", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _log_unraisable(unraisable: "sys.UnraisableHookArgs") -> None:
    """An exception Python cannot raise (one in a finaliser, say) is a record like any other, in the
    configured format, rather than a traceback written to stderr past logging."""
    exc_info = None
    if unraisable.exc_value is not None:
        exc_info = (unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
    logging.getLogger("delivery.unraisable").warning(
        "%s: %r", unraisable.err_msg or "Exception ignored in", unraisable.object, exc_info=exc_info
    )
