"""The deployment files agree with the code: compose's services and commands, the env templates, the image."""

import re
from pathlib import Path
from typing import Any

import yaml

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
    assert default == {"mysql", "redis", "rabbitmq", "migrate", "api", "worker", "beat"}
    for name in ("mysql", "redis", "rabbitmq", "api"):
        assert services[name]["healthcheck"]["test"], f"{name} has a health check"
    assert services["mysql"]["image"].startswith("mysql:8")


def test_app_services_wait_for_healthy_backends_and_the_migration() -> None:
    services = _compose()["services"]
    for name in ("api", "worker", "beat"):
        depends = services[name]["depends_on"]
        for backend in ("mysql", "redis", "rabbitmq"):
            assert depends[backend]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["mysql"]["condition"] == "service_healthy"


def test_commands_match_the_procfile_and_the_queues() -> None:
    services = _compose()["services"]
    assert services["migrate"]["command"] == ["delivery", "migrate"]
    assert services["api"]["command"] == ["delivery", "serve"]
    worker = services["worker"]["command"]
    assert worker[:4] == ["celery", "-A", "delivery.worker", "worker"]
    queues = set(worker[worker.index("-Q") + 1].split(","))
    assert queues == {REGISTRATION_QUEUE, PRICING_QUEUE}
    assert services["beat"]["command"][:4] == ["celery", "-A", "delivery.worker", "beat"]
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
    mysql = dict(line.split("=", 1) for line in (ROOT / "deploy/mysql.env.example").read_text().split())
    rabbit = dict(line.split("=", 1) for line in (ROOT / "deploy/rabbitmq.env.example").read_text().split())
    assert env["DATABASE_URL"] == (
        f"mysql+asyncmy://{mysql['MYSQL_USER']}:{mysql['MYSQL_PASSWORD']}@mysql:3306/{mysql['MYSQL_DATABASE']}"
    )
    user, password = rabbit["RABBITMQ_DEFAULT_USER"], rabbit["RABBITMQ_DEFAULT_PASS"]
    assert env["CELERY_BROKER_URL"] == f"amqp://{user}:{password}@rabbitmq:5672//"
    assert env["REDIS_URL"].startswith("redis://redis:6379/")
    Settings.model_validate(env)  # the template is valid configuration


def test_image_is_multi_stage_and_runs_unprivileged() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    assert len(stages) >= 2 and all("slim" in image for image in stages)
    final = dockerfile.split("\nFROM ")[-1]
    assert re.search(r"^USER (?!root)\S+", final, flags=re.MULTILINE)
    assert "uv sync" not in final and "apt-get" not in final
    assert "--frozen" in dockerfile
