"""A command run as a service of the stack (the API, a worker, a ceiling), in a process group of its own."""

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from delivery.config import Settings

#: Variables that change how the service runs, never inherited from the caller's shell.
SCRUBBED = {*Settings.model_fields, "LOG_LEVEL", "LOG_FORMAT", "PROMETHEUS_MULTIPROC_DIR", "PYTHONPATH"}


def service_env(values: Mapping[str, str], bin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(values)
    return env


class Service:
    """A command in a process group of its own, its output in a log file."""

    def __init__(self, name: str, args: Sequence[str], *, env: Mapping[str, str], cwd: Path) -> None:
        self.name = name
        self.args = list(args)
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = cwd / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> "Service":
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited:\n{self.log()[-3000:]}")

    def wait_log(self, needle: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no {needle!r} in {timeout:.0f}s:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                response = httpx.get(url, timeout=5)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:300]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: {url} not ready in {timeout:.0f}s ({last}):\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL to the whole group: the main process and its children alike."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 25.0) -> None:
        """SIGTERM to the group, SIGKILL if it has not exited within `timeout`; then whatever of the group
        is left (a pool process that outlived its parent)."""
        if self.process is None:
            return
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            if self.process.poll() is None:
                os.killpg(group, signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(group, signal.SIGKILL)
                    self.process.wait(timeout=10)
            os.killpg(group, signal.SIGKILL)
