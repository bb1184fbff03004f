"""`latest.md`: the figures of `latest.json` as tables, with the setup they were measured in."""

from collections.abc import Mapping, Sequence
from typing import Any

READ_CASES = {
    "first_page": "heavy session, first page (size 20)",
    "deep_page": "heavy session, deep page",
    "filtered": "heavy session, type=1 & has_cost=true",
    "detail": "one package",
    "types": "types",
}
WRITE_KEYS = ("accepted_per_s", "registered_per_s", "p50_ms_to_registered", "p99_ms_to_registered")
#: The figures of the limiter's comparison, as the table names them, and their decimal places.
LIMITER_FIGURES = {
    "read": {
        "rps": ("req/s", 1),
        "p50_ms": ("p50 ms", 2),
        "p99_ms": ("p99 ms", 2),
        "api_cpu_ms_per_request": ("API CPU ms per request", 3),
        "redis_cpu_ms_per_request": ("Redis CPU ms per request", 3),
    },
    "write": {
        "accepted_per_s": ("accepted/s", 1),
        "registered_per_s": ("registered/s", 1),
        "post_p50_ms": ("POST p50 ms", 1),
        "post_p99_ms": ("POST p99 ms", 1),
        "api_cpu_ms_per_accepted": ("API CPU ms per registration", 3),
        "redis_cpu_ms_per_accepted": ("Redis CPU ms per registration", 3),
    },
}


def _fmt(value: Any, places: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{places}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _cpu(cores: Mapping[str, float] | None) -> str:
    if not cores:
        return "-"
    shown = [f"{k} {v:.2f}" for k, v in cores.items() if v >= 0.05 and k != "machine"]
    return ", ".join(shown) + f" (machine {cores.get('machine', 0):.2f})"


def _header(results: Mapping[str, Any]) -> list[str]:
    meta = results.get("meta", {})
    machine = meta.get("machine", {})
    git = meta.get("git", {})
    dirty = " (src/ had uncommitted changes)" if git.get("src_dirty") else ""
    load = f"{_fmt(machine.get('loadavg_start', [None])[0], 2)} at the start"
    load += f", {_fmt(machine.get('loadavg_end', [None])[0], 2)} at the end"
    return [
        "# Benchmark: latest run",
        "",
        "`make bench` (`bench/run.py`); the figures are in `latest.json` too, with more detail.",
        "",
        f"- {meta.get('date')}, profile `{meta.get('profile')}`, total {_fmt(meta.get('total_seconds'))} s;"
        f" commit `{git.get('commit')}`{dirty}",
        f"- machine: {machine.get('nproc')} cores ({machine.get('cpu')}), {machine.get('mem_gb')} GB,"
        f" kernel {machine.get('kernel')}, Python {machine.get('python')}; load average {load}",
        "- " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
        "- Everything shares these two cores: MariaDB, Redis, RabbitMQ, the API (`delivery serve`: uvicorn"
        " with `make run`'s settings, as many processes as cores unless a table says one), the worker, the"
        " load generator and this harness. Whatever else runs on the machine shows as `other` in the CPU"
        " columns (cores used on average during the measurement; `steal` is time the hypervisor took).",
        "",
    ]


def _seed(results: Mapping[str, Any]) -> list[str]:
    seed = results.get("seed", {})
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in seed.get("steps_s", {}).items())
    return [
        "## Seed",
        "",
        f"**{_fmt(seed.get('seconds'))} s** ({steps}): {_fmt(seed.get('packages_in_read_sessions'))} packages"
        f" over the customers' sessions, the heavy one with {_fmt(seed.get('heavy_session_packages'))}, half"
        f" of them priced; {_fmt(seed.get('cost_calculations'))} cost calculations on {seed.get('cost_day')},"
        " for which priced packages are added in one more session"
        f" ({_fmt(seed.get('packages'))} packages in all); the daily totals of that day. One"
        " `INSERT ... SELECT` per table from MariaDB's SEQUENCE engine, `unique_checks` and"
        " `foreign_key_checks` off in the loading session only (the schema is untouched; the rows are"
        " consistent by construction and spot-checked after).",
        "",
    ]


def _read(results: Mapping[str, Any]) -> list[str]:
    many, one = results.get("read", {}), results.get("read_one_process", {})
    durations = results.get("meta", {}).get("durations_s", {})
    rows = []
    entries = [(n, f"{label}<br>`{many.get(n, {}).get('path')}`") for n, label in READ_CASES.items()]
    entries.append(("ceiling", "**ceiling**: one Starlette route"))
    for name, label in entries:
        if (figures := many.get(name)) is not None:
            rows.append(_read_row(label, figures, one.get(name, {})))
    if bare := results.get("ceiling_bare_asgi"):
        rows.append(_read_row("for reference: a bare ASGI callable", bare, {}))
    processes = many.get("processes")
    header = ["case", f"req/s ({processes} proc.)", "p50 ms", "p99 ms", "errors", "ratio to ceiling"]
    header += ["CPU cores", "req/s (1 proc.)", "p99 ms (1 proc.)", "ratio (1 proc.)"]
    return [
        "## Read path",
        "",
        f"wrk -t2 -c16 for {_fmt(durations.get('read'))} s after a {_fmt(durations.get('warmup'))} s warm-up,"
        " with the heavy session's cookie; the API with its default number of processes"
        f" ({_fmt(processes)}: the CPU count), then with one. The ceiling answers the first page's bytes"
        f" ({_fmt(results.get('first_page_bytes'))} B) from uvicorn started as `delivery serve` starts it,"
        " with as many processes as the API it is compared with.",
        "",
        *_table(header, rows),
    ]


def _read_row(label: str, figures: Mapping[str, Any], one: Mapping[str, Any]) -> list[str]:
    return [
        label,
        _fmt(figures.get("rps")),
        _fmt(figures.get("p50_ms"), 2),
        _fmt(figures.get("p99_ms"), 2),
        _fmt(figures.get("errors")),
        _fmt(figures.get("ratio_to_ceiling"), 3),
        _cpu(figures.get("cpu_cores")),
        _fmt(one.get("rps")),
        _fmt(one.get("p99_ms"), 2),
        _fmt(one.get("ratio_to_ceiling"), 3),
    ]


def _write(results: Mapping[str, Any]) -> list[str]:
    write = results.get("write", {})
    rows = []
    for name, c in write.get("configs", {}).items():
        label = f"`{name}`" + (f" (probe: {_fmt(c.get('registrations'))})" if c.get("probe") else "")
        if c.get("skipped"):
            rows.append([label, f"`{c.get('worker_args')}`", f"skipped ({c['skipped']})", *["-"] * 8])
            continue
        rows.append(
            [
                label,
                f"`{c.get('worker_args')}`",
                _fmt(c.get("works")),
                *(_fmt(c.get(k)) for k in WRITE_KEYS),
                _fmt(c.get("post_p50_ms")),
                _fmt(c.get("post_p99_ms")),
                _fmt(c.get("bank_requests")),
                _fmt(c.get("worker_rss_mb")),
                _cpu(c.get("cpu_cores_until_registered")),
            ]
        )
    header = ["worker", "args", "works", "accepted/s", "registered/s", "to registered p50 ms", "p99 ms"]
    header += ["POST p50 ms", "POST p99 ms", "bank requests", "worker RSS MB", "CPU cores"]
    out = [
        "## Write path",
        "",
        f"{_fmt(write.get('registrations'))} registrations (`POST /packages/`) from"
        f" {_fmt(write.get('concurrency'))} keep-alive connections in as many sessions, for each worker"
        " setting (`celery -A delivery.worker worker -Q registrations,pricing --loglevel INFO` + args), each"
        " from a cold rate cache and empty queues. The client is a minimal asyncio HTTP/1.1 client: httpx"
        " costs 2-6 ms of CPU per request at this concurrency, which on two cores would come out of the"
        " service's share.",
        "",
        "- accepted/s: 202s over the time from the first request to the last 202;",
        "- registered/s: registrations over the time from the first 202 to the last job's end;",
        "- to registered: from a registration's 202 (at the client) to the end of its job"
        f" (clock: {write.get('registered_clock')}; a row's created_at is taken at its batch's insert, a few"
        " ms before the commit and the status `registered`). While the API"
        " accepts faster than the worker registers, this is mostly time spent queued;",
        "- CPU cores: from the first request to the last registration.",
        "",
        f"Reported at the top of `write`: **`{write.get('config')}`**. Best registered/s among the full runs:"
        f" **`{write.get('best')}`**.",
        "",
        *_table(header, rows),
    ]
    for name, c in write.get("configs", {}).items():
        if not c.get("skipped") and not c.get("works"):
            out += [
                f"`{name}` does not work: {c.get('registered')}/{c.get('registrations')} packages created,"
                f" statuses {c.get('states')}, client errors {c.get('client_errors') or 'none'}"
                " (the worker's log tail is in latest.json).",
                "",
            ]
    return out


def _paced(results: Mapping[str, Any]) -> list[str]:
    paced = results.get("paced")
    if not paced:
        return []
    row = [
        f"{_fmt(paced.get('rate_per_s'))}/s for {_fmt(paced.get('seconds'))} s",
        _fmt(paced.get("accepted")),
        _fmt(paced.get("accepted_per_s")),
        _fmt(paced.get("p50_ms_to_registered")),
        _fmt(paced.get("p99_ms_to_registered")),
        _fmt(paced.get("post_p50_ms")),
        _fmt(paced.get("post_p99_ms")),
        str(paced.get("client_errors") or "none"),
        _cpu(paced.get("cpu_cores")),
    ]
    header = ["offered", "accepted", "accepted/s", "to registered p50 ms", "p99 ms", "POST p50 ms"]
    header += ["POST p99 ms", "client errors", "CPU cores"]
    return [
        "## Paced",
        "",
        f"Registrations started on a schedule (an open model) over {_fmt(paced.get('connections'))}"
        " connections, the default worker: the latency a user feels from the 202 to `registered`"
        f" ({paced.get('registered_clock')}).",
        "",
        *_table(header, [row]),
    ]


def _cluster(results: Mapping[str, Any]) -> list[str]:
    cluster = results.get("write_cluster")
    if not cluster:
        return []
    single = cluster.get("single_node", {})
    rows = [
        [
            label,
            *(_fmt(figures.get(k)) for k in WRITE_KEYS),
            _fmt(figures.get("post_p50_ms")),
            _fmt(figures.get("post_p99_ms")),
            _cpu(figures.get("cpu_cores_until_registered")),
        ]
        for label, figures in (
            ("one node (the machine's), classic queues", single),
            (f"{cluster.get('nodes')} nodes, quorum queues", cluster),
        )
    ]
    header = ["broker", "accepted/s", "registered/s", "to registered p50 ms", "p99 ms", "POST p50 ms"]
    header += ["POST p99 ms", "CPU cores"]
    return [
        "## Write path on a RabbitMQ cluster",
        "",
        f"The write path's default run again ({_fmt(cluster.get('registrations'))} registrations), the broker"
        f" a cluster of {cluster.get('nodes')} RabbitMQ nodes started on this machine"
        f" ({_fmt(cluster.get('cluster_start_s'))} s to start and join; `realstack.cluster`), the service"
        " given the three URLs and `BROKER_QUEUE_TYPE=quorum` (every message written to a majority of the"
        f" nodes before it is confirmed); the registration queue led by `{cluster.get('queue_leader')}`."
        f" Works: {_fmt(cluster.get('works'))}; statuses {cluster.get('states')}; bank requests"
        f" {_fmt(cluster.get('bank_requests'))}. The cluster's three Erlang VMs share the same two cores"
        " (`rabbitmq` in the CPU column counts every node on the machine).",
        "",
        *_table(header, rows),
    ]


def _limiter(results: Mapping[str, Any]) -> list[str]:
    limiter = results.get("rate_limiter")
    if not limiter:
        return []
    read, write = limiter.get("read", {}), limiter.get("write", {})
    rows = []
    for what, figures in (("read", read), ("write", write)):
        for key, (label, places) in LIMITER_FIGURES[what].items():
            on, off = figures.get("on", {}), figures.get("off", {})
            rows.append(
                [
                    f"{what}: {label}",
                    _with_runs(on, key, places),
                    _with_runs(off, key, places),
                    _fmt(figures.get("ratio", {}).get(key), 3),
                    _fmt(figures.get("noise", {}).get(key), 3),
                    _fmt(figures.get("within_noise", {}).get(key)),
                ]
            )
    read_errors = {
        run["limiter"]: run["read"].get("errors", 0)
        for run in limiter.get("runs", [])
        if run["read"].get("errors")
    }
    limits = sorted(set(limiter.get("limits_when_on", {}).values()))
    return [
        "## Rate limiter: on and off",
        "",
        f"The main read case (`{read.get('path')}`, wrk -c{read.get('connections')} for"
        f" {_fmt(read.get('seconds'))} s after the warm-up) and the write path's `{write.get('config')}` run"
        f" ({_fmt(write.get('registrations'))} registrations at concurrency {write.get('concurrency')}),"
        f" measured with the limiter on and off in the order {', '.join(limiter.get('order', []))}, the API"
        " restarted with `RATE_LIMIT_ENABLED` at each change. On, every limit is raised to"
        f" {', '.join(f'`{v}`' for v in limits)}, far above the load: every request is counted (one Redis"
        " round trip, shared with the concurrent requests' increments) and none refused. Every other table"
        " here is measured with the limiter on, so raised.",
        "",
        "- limiter on / off: the mean of that side's runs (each run in brackets);",
        "- on/off: their ratio (below 1 for a rate, above 1 for a time or a cost: what the limiter costs);",
        "- noise: the larger spread between the runs of one side, (max - min) / mean; within noise:"
        " |on/off - 1| is not above it.",
        "",
        *_table(["figure", "limiter on", "limiter off", "on/off", "noise", "within noise"], rows),
        f"Write runs all registered: {_fmt(write.get('works'))}; client errors"
        f" {write.get('client_errors') or 'none'}; read errors {read_errors or 'none'}.",
        "",
    ]


def _with_runs(side: Mapping[str, Any], key: str, places: int) -> str:
    runs = side.get(key + "_runs") or []
    shown = _fmt(side.get(key), places)
    return shown + (f" ({', '.join(_fmt(float(v), places) for v in runs)})" if len(runs) > 1 else "")


def _bank(results: Mapping[str, Any]) -> list[str]:
    bank = results.get("bank_requests", {})
    cold = bank.get("cold_64_detail", {})
    write = results.get("write", {})
    return [
        "## The bank",
        "",
        *_table(
            ["run", "upstream requests", "must be"],
            [
                [f"write run (`{write.get('config')}`, from a cold cache)", _fmt(bank.get("write_run")), "1"],
                [
                    f"cold cache: {cold.get('jobs')} registrations at once,"
                    f" worker `{cold.get('worker_args')}`, the bank {cold.get('bank_delay_s')} s slow;"
                    f" {_fmt(cold.get('registered_with_cost'))} registered with a cost",
                    _fmt(bank.get("cold_64")),
                    "1",
                ],
            ],
        ),
    ]


def _daily(results: Mapping[str, Any]) -> list[str]:
    daily = results.get("daily_totals", {})
    return [
        "## Daily totals",
        "",
        f"`GET /admin/stats/daily-costs/?date={daily.get('date')}`"
        f" ({_fmt(daily.get('calculations_that_day'))} cost calculations that day), {daily.get('client')}:",
        "",
        *_table(
            ["req/s", "p50 ms", "p99 ms", "errors", "CPU cores"],
            [
                [
                    _fmt(daily.get("rps")),
                    _fmt(daily.get("p50_ms"), 2),
                    _fmt(daily.get("p99_ms"), 2),
                    _fmt(daily.get("errors")),
                    _cpu(daily.get("cpu_cores")),
                ]
            ],
        ),
    ]


def _rss(results: Mapping[str, Any]) -> list[str]:
    rss = results.get("peak_rss_mb", {})
    cold = results.get("bank_requests", {}).get("cold_64_detail", {})
    config = results.get("write", {}).get("config")
    rows = [["API, largest of the runs below", _fmt(rss.get("api"))]]
    api_runs = {
        "api_reads": "API during the reads (default processes)",
        "api_reads_one_process": "API during the reads (one process)",
        "api_writes": "API during the write runs",
        "api_limiter_on": "API during the limiter's comparison, limiter on",
        "api_limiter_off": "API during the limiter's comparison, limiter off",
        "api_cluster": "API during the cluster's write run",
    }
    rows += [[label, _fmt(rss.get(key))] for key, label in api_runs.items() if key in rss]
    rows += [[f"worker `{n}`", _fmt(v)] for n, v in rss.get("worker_by_config", {}).items()]
    rows.append(
        [
            f"worker of the cold-cache run ({cold.get('worker_processes')} processes)",
            _fmt(cold.get("worker_rss_mb")),
        ]
    )
    return [
        "## Peak RSS",
        "",
        "The largest sampled sum of VmRSS over a process and its children (every 0.25 s): the API's"
        " supervisor and its processes, a worker's main process and pool."
        f" Reported: API {_fmt(rss.get('api'))} MB, worker (`{config}`) {_fmt(rss.get('worker'))} MB.",
        "",
        *_table(["process", "MB"], rows),
    ]


def markdown(results: Mapping[str, Any]) -> str:
    out = [
        *_header(results),
        *_seed(results),
        *_read(results),
        *_write(results),
        *_paced(results),
        *_cluster(results),
        *_limiter(results),
        *_bank(results),
        *_daily(results),
        *_rss(results),
    ]
    return "\n".join(out).rstrip() + "\n"
