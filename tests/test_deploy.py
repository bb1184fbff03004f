"""The deployment files agree with the code: compose's services and commands, the env templates, the image."""

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from delivery import metrics
from delivery.broker import PRICING_QUEUE, REGISTRATION_QUEUE
from delivery.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return document


def _env_keys(path: Path) -> set[str]:
    lines = path.read_text().splitlines()
    return {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}


def test_compose_has_the_whole_service() -> None:
    services = _compose()["services"]
    # `docker compose up` runs these; the profiles' services (tests/test_deploy_cluster.py) only when asked.
    default = {name for name, service in services.items() if "profiles" not in service}
    assert default == {"mariadb", "redis", "rabbitmq", "migrate", "api", "worker", "beat", "proxy"}
    for name in ("mariadb", "redis", "rabbitmq", "api", "worker", "proxy"):
        assert services[name]["healthcheck"]["test"], f"{name} has a health check"
    # The image's check asks the API's port: beat serves none, and would be reported unhealthy by it.
    assert services["beat"]["healthcheck"] == {"disable": True}
    # The release the tests run on, and the official image's own readiness check (not merely a port open).
    assert services["mariadb"]["image"] == "mariadb:10.11"
    assert services["mariadb"]["healthcheck"]["test"] == [
        "CMD",
        "healthcheck.sh",
        "--connect",
        "--innodb_initialized",
    ]
    assert "mariadb-data:/var/lib/mysql" in services["mariadb"]["volumes"]


def test_app_services_wait_for_healthy_backends_and_the_migration() -> None:
    services = _compose()["services"]
    for name in ("api", "worker", "beat"):
        depends = services[name]["depends_on"]
        for backend in ("mariadb", "redis", "rabbitmq"):
            assert depends[backend]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["mariadb"]["condition"] == "service_healthy"


def test_commands_match_the_procfile_and_the_queues() -> None:
    services = _compose()["services"]
    assert services["migrate"]["command"] == ["delivery", "migrate"]
    assert services["api"]["command"] == ["delivery", "serve"]
    worker = services["worker"]["command"]
    # --quiet: no banner in logs that are otherwise one JSON object per line.
    assert worker[:5] == ["celery", "-A", "delivery.worker", "--quiet", "worker"]
    queues = set(worker[worker.index("-Q") + 1].split(","))
    assert queues == {REGISTRATION_QUEUE, PRICING_QUEUE}
    assert services["beat"]["command"][:5] == ["celery", "-A", "delivery.worker", "--quiet", "beat"]
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line)
    assert procfile["api"] == "delivery serve"
    assert f"-Q {REGISTRATION_QUEUE},{PRICING_QUEUE}" in procfile["worker"]
    assert "delivery.worker beat" in procfile["beat"]


def test_env_template_names_exactly_the_settings() -> None:
    assert _env_keys(ROOT / ".env.example") == set(Settings.model_fields)
    services = _compose()["services"]
    for service in ("api", "worker", "beat", "migrate"):
        assert services[service]["env_file"] == [".env"]
    for service in ("api", "worker", "beat"):
        directory = services[service]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
        assert f"metrics:{directory}" in services[service]["volumes"]


def test_backend_env_templates_match_what_the_app_connects_with() -> None:
    env = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line)
    mariadb = dict(line.split("=", 1) for line in (ROOT / "deploy/mariadb.env.example").read_text().split())
    rabbit = dict(line.split("=", 1) for line in (ROOT / "deploy/rabbitmq.env.example").read_text().split())
    assert env["DATABASE_URL"] == (
        f"mysql+asyncmy://{mariadb['MARIADB_USER']}:{mariadb['MARIADB_PASSWORD']}"
        f"@mariadb:3306/{mariadb['MARIADB_DATABASE']}"
    )
    user, password = rabbit["RABBITMQ_DEFAULT_USER"], rabbit["RABBITMQ_DEFAULT_PASS"]
    assert env["CELERY_BROKER_URL"] == f"amqp://{user}:{password}@rabbitmq:5672//"
    assert env["REDIS_URL"].startswith("redis://redis:6379/")
    Settings.model_validate(env)  # the template is valid configuration


def test_image_is_multi_stage_and_runs_unprivileged() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    # The base is a build argument (deploy/offline builds one from Debian); python:3.11-slim by default.
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", dockerfile, flags=re.MULTILINE)
    assert len(stages) >= 2 and stages[0].startswith("${BASE_IMAGE}") and stages[-1] == "${BASE_IMAGE}"
    final = dockerfile.split("\nFROM ")[-1]
    assert re.search(r"^USER (?!root)\S+", final, flags=re.MULTILINE)
    assert "uv sync" not in final and "apt-get" not in final
    assert "--frozen" in dockerfile


# --- monitoring: Prometheus and Grafana (compose profile `monitoring`) ---

DASHBOARD = ROOT / "deploy/grafana/dashboards/delivery.json"
#: The samples each metric type exposes, by suffix of the family's name.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "unknown": ("",),
}
#: What a PromQL expression holds besides metric names, once strings, label matchers, durations and the
#: label lists of by/without/on/ignoring are taken out (a name followed by "(" is a function).
PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
}


def exported_names() -> set[str]:
    """Every sample name /metrics can export: the registry's families (even those with no sample yet, such
    as a labelled counter never incremented) and the scrape-time gauges, with their types' suffixes."""
    body, _ = metrics.render(awaiting_cost=0, dead_letters=(0, 0.0))
    names: set[str] = set()
    for family in text_string_to_metric_families(body.decode()):
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def promql_metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        following = expr[match.end() :].lstrip()
        if following.startswith("(") or match.group() in PROMQL_WORDS:
            continue  # a function or an aggregation
        if match.start() > 0 and (expr[match.start() - 1].isdigit() or expr[match.start() - 1] == "."):
            continue  # the exponent of a number, as in 1e3
        names.add(match.group())
    return names


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_promql_names_are_read_as_metric_names() -> None:
    """The control for the test below: the parser finds the metrics and nothing else."""
    expr = (
        'histogram_quantile(0.99, sum by (route, le) (rate(a_seconds_bucket{status=~"5.."}[5m]))) '
        "/ ignoring(x) sum without (le) (b_total offset 1h) and on(job) c > bool 1e3 or vector(0)"
    )
    assert promql_metric_names(expr) == {"a_seconds_bucket", "b_total", "c"}


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    exprs = dashboard_exprs()
    queried = set().union(*(promql_metric_names(expr) for expr in exprs))
    unknown = queried - exported_names()
    assert not unknown, f"the dashboard queries metrics /metrics does not export: {sorted(unknown)}"
    # And it covers what the service exports (the default process metrics aside).
    ours = {name.removesuffix("_created") for name in exported_names() if name.startswith("delivery_")}
    families = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in ours}
    shown = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in queried}
    assert families <= shown, f"not on the dashboard: {sorted(families - shown)}"


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uids = {source["uid"] for source in datasources["datasources"]}
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_prometheus_scrapes_the_api_and_grafana_is_provisioned() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    # Every api container: DNS service discovery of the compose service's name.
    assert job["dns_sd_configs"] == [{"names": ["api"], "type": "A", "port": 8000, "refresh_interval": "30s"}]
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/delivery.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"

    services = _compose()["services"]
    monitoring = {name for name, service in services.items() if "monitoring" in service.get("profiles", [])}
    assert monitoring == {"prometheus", "grafana"}
    mounts = {volume.split(":")[0]: volume.split(":")[1] for volume in services["grafana"]["volumes"]}
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    prometheus_mounts = [v.split(":")[:2] for v in services["prometheus"]["volumes"]]
    assert ["./deploy/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml"] in prometheus_mounts
    for mount in (*mounts, "./deploy/prometheus/prometheus.yml"):
        if mount.startswith("./"):
            assert (ROOT / mount).exists(), mount


def test_the_proxy_is_the_only_way_in() -> None:
    services = _compose()["services"]
    published = {
        name for name, service in services.items() if service.get("ports") and "profiles" not in service
    }
    assert published == {"proxy"}
    assert services["proxy"]["depends_on"]["api"]["condition"] == "service_healthy"
    mounts = dict(volume.split(":")[:2] for volume in services["proxy"]["volumes"])
    assert mounts["./deploy/proxy/conf.d"] == "/etc/nginx/conf.d"
    assert (ROOT / "deploy/proxy/conf.d/delivery.conf").exists()
    # The API trusts the forwarded client address from the edge network only, which the proxy shares with it.
    edge = _compose()["networks"]["edge"]["ipam"]["config"][0]["subnet"]
    assert services["api"]["environment"]["FORWARDED_ALLOW_IPS"] == edge
    assert services["proxy"]["networks"] == ["edge"]
    assert set(services["api"]["networks"]) == {"default", "edge"}
