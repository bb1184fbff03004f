"""The compose profile `cluster` agrees with the code: three RabbitMQ nodes that form one cluster, and the
service on it with quorum queues and every node's URL. (Docker does not run here: the files are read.)"""

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from delivery.config import Settings

ROOT = Path(__file__).resolve().parent.parent
NODES = ("rabbitmq-1", "rabbitmq-2", "rabbitmq-3")
APP = ("api-cluster", "worker-cluster", "beat-cluster")
CLUSTER_CONF = "./deploy/rabbitmq/cluster.conf"


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    return services


def _env(path: str) -> dict[str, str]:
    lines = (ROOT / path).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def _conf(path: str) -> dict[str, str]:
    lines = (ROOT / path).read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def test_the_profile_runs_three_nodes_and_the_service_on_them() -> None:
    services = _services()
    profiled = {name for name, service in services.items() if service.get("profiles") == ["cluster"]}
    assert profiled == set(NODES) | set(APP) | {"proxy-cluster"}


def test_the_nodes_discover_each_other_from_one_list_and_share_a_cookie() -> None:
    services = _services()
    conf = _conf(CLUSTER_CONF.removeprefix("./"))
    assert conf["cluster_formation.peer_discovery_backend"] == "classic_config"
    listed = {
        value for key, value in conf.items() if key.startswith("cluster_formation.classic_config.nodes.")
    }
    assert listed == {f"rabbit@{name}" for name in NODES}
    data_volumes = set()
    for name in NODES:
        node = services[name]
        assert node["hostname"] == name  # the node's name is rabbit@<hostname>
        assert node["image"] == services["rabbitmq"]["image"]
        assert f"{CLUSTER_CONF}:/etc/rabbitmq/conf.d/20-cluster.conf:ro" in node["volumes"]
        data_volumes |= {v for v in node["volumes"] if v.endswith(":/var/lib/rabbitmq")}
        assert node["env_file"] == ["deploy/rabbitmq.env"]
        assert node["healthcheck"]["test"]
    assert len(data_volumes) == len(NODES), "each node keeps its own data"
    assert _env("deploy/rabbitmq.env.example")["RABBITMQ_ERLANG_COOKIE"]
    # The first node starts alone; the others join it.
    for name in NODES[1:]:
        assert services[name]["depends_on"][NODES[0]]["condition"] == "service_healthy"


def test_the_service_uses_every_node_with_quorum_queues() -> None:
    services = _services()
    settings = Settings.model_validate(_env(".env.example") | _env("deploy/cluster.env.example"))
    assert settings.BROKER_QUEUE_TYPE == "quorum"
    assert settings.CELERY_BROKER_URL is not None
    urls = [urlsplit(url) for url in settings.CELERY_BROKER_URL.split(";")]
    assert [url.hostname for url in urls] == list(NODES)
    rabbit = _env("deploy/rabbitmq.env.example")
    for url in urls:
        assert (url.username, url.password) == (
            rabbit["RABBITMQ_DEFAULT_USER"],
            rabbit["RABBITMQ_DEFAULT_PASS"],
        )
        assert url.port == 5672
    for name, default in zip(APP, ("api", "worker", "beat"), strict=True):
        service = services[name]
        assert service["command"] == services[default]["command"]
        assert service.get("healthcheck") == services[default]["healthcheck"]
        assert service["env_file"] == [".env", "deploy/cluster.env"]  # the later file wins
        for node in NODES:
            assert service["depends_on"][node]["condition"] == "service_healthy"
        assert "rabbitmq" not in service["depends_on"]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # The cluster API is reached through a proxy of its own, as the main one is, on a port apart.
    assert "ports" not in services["api-cluster"]
    proxy = services["proxy-cluster"]
    assert proxy["ports"] != services["proxy"]["ports"]
    assert proxy["depends_on"]["api-cluster"]["condition"] == "service_healthy"
    assert set(services["api-cluster"]["networks"]) == {"default", "edge"}
    assert (
        services["api-cluster"]["environment"]["FORWARDED_ALLOW_IPS"]
        == services["api"]["environment"]["FORWARDED_ALLOW_IPS"]
    )
