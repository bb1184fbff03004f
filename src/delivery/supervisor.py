"""The supervisor of the API's processes (`WEB_CONCURRENCY` > 1): uvicorn's, replacing a dead process at once.

uvicorn's supervisor checks each process every half second by a ping over a pipe, waiting for the answer up to
its healthcheck timeout (30 s here, for processes starting on a slow machine). It keeps its own copy of the
child's end of that pipe, so a process that dies while a ping waits for it (killed by the kernel for memory,
say) never closes the pipe: the ping waits out the whole timeout, and the port is served by one process fewer
for half a minute. Closing the supervisor's copies of the children's ends, which only the children use,
makes a dead process's pipe end at once: the ping fails on it, and the process is started again within the
second. Each replacement is logged as a warning, with how the process ended.

A process that fails before it serves (the app cannot start: the same on every restart) stops uvicorn's
supervisor, which then ends as if asked to: `failed_to_start` tells `delivery serve` to exit with uvicorn's
startup failure code (3) instead, as one process does, so that what restarts the service sees the failure.
"""

import logging
import signal
import time

from uvicorn.supervisors import Multiprocess
from uvicorn.supervisors.multiprocess import Process

logger = logging.getLogger(__name__)


def _ending(process: Process, hung: bool) -> str:
    code = process.exitcode
    if hung:
        return "did not answer the supervisor's ping in time and was killed"
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class Supervisor(Multiprocess):
    failed_to_start = False

    def keep_subprocess_alive(self) -> None:
        stopping = self.should_exit.is_set()
        before = list(self.processes)
        for process in before:
            # Every process listed has started (uvicorn lists it after `start`), so it holds its own copy.
            process.child_conn.close()
        started = time.monotonic()
        super().keep_subprocess_alive()
        # The only reason uvicorn's check stops the supervisor itself: a process that failed to start.
        self.failed_to_start = self.failed_to_start or (self.should_exit.is_set() and not stopping)
        # With the pipes closed, a ping ends at once for a process that is gone; one that lasts the whole
        # timeout was a live process that did not answer.
        timed_out = time.monotonic() - started >= self.config.timeout_worker_healthcheck
        for old, new in zip(before, self.processes, strict=True):
            if new is not old:
                logger.warning(
                    "API process %s %s; process %s started in its place",
                    old.pid,
                    _ending(old, timed_out and old.exitcode == -signal.SIGKILL),
                    new.pid,
                )
