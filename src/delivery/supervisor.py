"""The supervisor of the API's processes (`WEB_CONCURRENCY` > 1): uvicorn's, replacing a dead process at once.

uvicorn's supervisor checks each process every half second by a ping over a pipe, waiting for the answer up to
its healthcheck timeout (30 s here, for processes starting on a slow machine). It keeps its own copy of the
child's end of that pipe, so a process that dies while a ping waits for it (killed by the kernel for memory,
say) never closes the pipe: the ping waits out the whole timeout, and the port is served by one process fewer
for half a minute. Closing the supervisor's copies of the children's ends, which only the children use,
makes a dead process's pipe end at once: the ping fails on it, and the process is started again within the
second.
"""

from uvicorn.supervisors import Multiprocess


class Supervisor(Multiprocess):
    def keep_subprocess_alive(self) -> None:
        for process in self.processes:
            # Every process listed has started (uvicorn lists it after `start`), so it holds its own copy.
            process.child_conn.close()
        super().keep_subprocess_alive()
