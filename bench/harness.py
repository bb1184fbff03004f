"""`make bench`: the service on the real stack (MariaDB, Redis, RabbitMQ on this machine), measured.

`bench.stack` starts and removes what is measured (also on failure: its database, Redis db, vhost and
processes; the work folder with the logs is kept, and its path printed, when a run fails or with
`--keep-logs`); `bench.phases` measures; `bench.report` renders the figures. Results go to
`bench/results/latest.json` and `latest.md` (a smoke run, `--quick` or a choice of `--phases`: to the temp
folder instead).
"""

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench import report
from bench.phases import PHASES, PROFILES, ROOT, WORKER_CONFIGS, Phases
from bench.stack import BenchStack, run_async

RESULTS = ROOT / "bench" / "results"
#: Where a smoke run writes, so that it never replaces the figures of a full one.
QUICK_RESULTS = Path(tempfile.gettempdir()) / "delivery-bench-quick"


async def _server_version(engine: AsyncEngine) -> object:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT VERSION()"))).scalar()


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    mem_kb = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "mem_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
    }


def git() -> dict[str, Any]:
    def out(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {"commit": out("rev-parse", "HEAD"), "src_dirty": bool(out("status", "--porcelain", "--", "src"))}


def versions(wrk: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "sqlalchemy", "asyncmy", "celery"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    done = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    found["wrk"] = (done.stdout or done.stderr).split("[")[0].removeprefix("wrk").strip()
    found["mariadb"] = str(run_async(_server_version))
    return found


def write_results(results: Mapping[str, Any], folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in (
        ("latest.json", json.dumps(results, indent=2, default=str) + "\n"),
        ("latest.md", report.markdown(results)),
    ):
        path = folder / name
        tmp = path.with_name(name + ".tmp")
        tmp.write_text(content)
        tmp.replace(path)
        paths.append(path)
    return paths[0], paths[1]


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the cleanup runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    names = [c.name for c in WORKER_CONFIGS]
    parser = argparse.ArgumentParser(prog="bench/run.py", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a short smoke run (small seed, 5 s loads), its results in {QUICK_RESULTS}",
    )
    parser.add_argument(
        "--configs",
        default=",".join(names),
        help=f"worker settings of the write path, comma-separated, in order (default: {','.join(names)})",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the work folder with the logs")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"what to measure, comma-separated (default: {','.join(PHASES)}); a partial run is a smoke run",
    )
    args = parser.parse_args(argv)
    by_name = {c.name: c for c in WORKER_CONFIGS}
    chosen = [n for n in args.configs.split(",") if n]
    if unknown := [n for n in chosen if n not in by_name]:
        parser.error(f"unknown worker settings: {', '.join(unknown)}")
    profile = PROFILES["quick" if args.quick else "full"]
    workdir = Path(tempfile.mkdtemp(prefix="delivery-bench-"))
    phases = set(args.phases.split(",")) - {""}
    if unknown_phases := phases - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown_phases))}")
    stack = BenchStack(workdir)
    bench = Phases(profile, stack, [by_name[n] for n in chosen], phases)
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": profile.name,
        "durations_s": {"warmup": profile.warmup_s, "read": profile.duration_s},
        "machine": machine(),
        "git": git(),
    }
    ok = False
    try:
        with sigterm_as_interrupt():
            results = bench.run()
            meta["versions"] = versions(bench.wrk)
        ok = True
    finally:
        stack.cleanup()
        if ok and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", flush=True)
    meta["machine"]["loadavg_end"] = list(os.getloadavg())
    meta["total_seconds"] = round(bench.log.elapsed(), 1)
    partial = args.quick or phases != set(PHASES)
    json_path, md_path = write_results({"meta": meta, **results}, QUICK_RESULTS if partial else RESULTS)
    bench.log(f"done: {json_path}, {md_path}")
    return 0
