"""Bad input, generated from the published OpenAPI document (schemathesis), against `delivery serve`:
every endpoint, with no credentials, with a session, and with a session and the operator's token.
No answer is a 5xx, every answer is documented and matches its schema, and invalid input is refused."""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.stack import ADMIN_TOKEN, ApiProcess, Stack

#: Every check schemathesis has (see the config file), in every phase: the document must tell the whole truth.
PHASES = "examples,coverage,fuzzing,stateful"
CONFIG = Path(__file__).with_name("schemathesis.toml")
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")


@pytest.mark.parametrize("credentials", ["none", "session", "session+admin"])
def test_no_input_breaks_the_api(stack: Stack, credentials: str, tmp_path: Path) -> None:
    api = ApiProcess(stack).start()
    try:
        headers: list[str] = []
        if credentials != "none":
            opened = httpx.get(f"{api.url}/sessions/new/")
            cookie = opened.headers["set-cookie"].split(";", 1)[0]
            headers += ["-H", f"Cookie: {cookie}"]
        if credentials == "session+admin":
            headers += ["-H", f"X-Admin-Token: {ADMIN_TOKEN}"]
        command = [
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG),
            "run", f"{api.url}/openapi.json", "--phases", PHASES,
            "--max-examples", "25", "--max-time", "30", "--seed", "20261129",
            "--report-dir", str(tmp_path), *headers,
        ]  # fmt: skip
        environment = os.environ | {"SCHEMATHESIS_HOOKS": str(HOOKS)}
        run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
        (tmp_path / "schemathesis.txt").write_text(run.stdout)
        log = api.log()
        assert "Internal Server Error" not in log and "unhandled error" not in log, log[-6000:]
    finally:
        api.stop()
    assert run.returncode == 0, run.stdout[-6000:]
