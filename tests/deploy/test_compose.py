"""deploy/compose/compose.yml: valid by the Compose specification, every provline service's environment
loaded through that service's own settings class, commands that exist, and ports, health checks,
scrape targets and mounts that agree with each other.

docker-compose (Debian's, installed by `make deploy-tools`) validates and interpolates the file; no
container is started here (there is no Docker engine in CI)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import typer

from deploy.local.kafka import create_topics
from deploy.local.kafka.broker import free_port
from provline.cli import app, settings_classes
from provline.config import ConfigError, ProvlineSettings, field_rows, is_secret, load_settings
from provline.schemas import Topics
from tests.deploy.assets import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    ENV_EXAMPLE,
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    REPO,
    compose_config,
    load_yaml,
    mounts,
    resolved_compose,
)

PROVLINE_IMAGE = "provline:latest"
# where compose.yml mounts this repository's deploy/ folder for the demo's own code
DEMO_CODE = "/opt/provline"
# the settings class of each service that runs provline code through an entrypoint of its own
ENTRYPOINT_SERVICES = {"train": "job"}


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = resolved_compose()["services"]
    return found


def provline_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services().items() if s["image"] == PROVLINE_IMAGE}


def settings_service(service: dict[str, Any], name: str) -> str | None:
    """The `provline config` name of a service's settings, or None for one that reads none (the model server)."""
    if "entrypoint" in service:
        return ENTRYPOINT_SERVICES.get(name)
    return str(service["command"][0])


def load_service_settings(monkeypatch: pytest.MonkeyPatch, name: str, **extra: str) -> ProvlineSettings:
    service = services()[name]
    kind = settings_service(service, name)
    assert kind is not None
    for variable, value in {**service.get("environment", {}), **extra}.items():
        monkeypatch.setenv(variable, str(value))
    return load_settings(settings_classes()[kind])


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, f"{url} names no port"
    return port


def healthcheck_url(service: dict[str, Any]) -> str:
    [url] = re.findall(r"http://[^'\" ]+", " ".join(service["healthcheck"]["test"]))
    return url


def scrape_targets() -> dict[str, list[str]]:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    return {job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
            for job in config["scrape_configs"]}


def test_docker_compose_accepts_the_file_and_refuses_a_misspelt_key(tmp_path: Path) -> None:
    assert resolved_compose()["services"]
    broken = COMPOSE_DIR / f".broken-{uuid.uuid4().hex[:6]}.yml"  # beside the original: same relative paths
    try:
        broken.write_text(COMPOSE_FILE.read_text().replace("  serve:\n    <<: *provline\n    command: [\"serve\"]\n",
                                                           "  serve:\n    <<: *provline\n    comand: [\"serve\"]\n"))
        refused = compose_config(broken)
    finally:
        broken.unlink()
    assert refused.returncode != 0 and "comand" in refused.stderr, refused.stderr


def test_the_system_the_issue_asks_for_is_there() -> None:
    found = services()
    kafka = [name for name, s in found.items() if s["image"].startswith("apache/kafka:")]
    assert len(kafka) == 3
    processors = [name for name, s in provline_services().items() if s.get("command") == ["processors"]]
    assert len(processors) == 2
    assert {"clickhouse", "serve", "sidecar", "model-server", "prometheus", "grafana", "topics"} <= set(found)
    assert found["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")


def test_every_provline_service_environment_loads_through_its_settings_class(monkeypatch: pytest.MonkeyPatch) -> None:
    classes = settings_classes()
    for name, service in provline_services().items():
        kind = settings_service(service, name)
        environment = service.get("environment", {})
        if kind is None:
            assert not [v for v in environment if v.startswith("PROVLINE_")], f"{name} reads no provline settings"
            continue
        with monkeypatch.context() as patched:
            load_service_settings(patched, name)
        # a variable of a section this service does not read would be ignored by it: a mistake too
        sections = set(classes[kind].sections())
        for variable in (v for v in environment if v.startswith("PROVLINE_")):
            section = variable.removeprefix("PROVLINE_").split("__")[0].lower()
            assert section in sections, f"{name}: {variable} is not read by `provline {kind}`"


def test_a_misspelt_or_invalid_variable_fails_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patched, pytest.raises(ConfigError, match="PROVLINE_SIDECAR__ADMIN_PROT"):
        load_service_settings(patched, "sidecar", PROVLINE_SIDECAR__ADMIN_PROT="9464")
    with monkeypatch.context() as patched, pytest.raises(ConfigError, match="PROVLINE_API__PORT"):
        load_service_settings(patched, "serve", PROVLINE_API__PORT="eighty")


def test_every_command_is_a_provline_command_or_a_file_of_this_repository() -> None:
    cli = typer.main.get_command(app)  # typer's own click: groups are told by their `commands`
    for name, service in provline_services().items():
        if "entrypoint" in service:
            entrypoint = service["entrypoint"]
            assert entrypoint[0] == "python", f"{name}: {entrypoint}"
            module = entrypoint[2] if entrypoint[1] == "-m" else None
            path = Path(entrypoint[1]) if module is None else Path(DEMO_CODE, *module.split(".")).with_suffix(".py")
            local = REPO / path.relative_to(DEMO_CODE)
            assert local.is_file(), f"{name} runs {path}, which is not {local}"
            assert mounts(service)[f"{DEMO_CODE}/deploy"] == str(REPO / "deploy")
            continue
        group: Any = cli
        for word in service["command"]:
            commands = getattr(group, "commands", None)
            if commands is None or word.startswith("-"):
                break
            assert word in commands, f"{name}: `provline {' '.join(service['command'])}` is no provline command"
            group = commands[word]


def test_ports_health_checks_and_scrape_targets_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    found, targets = services(), scrape_targets()
    with monkeypatch.context() as patched:
        serve: Any = load_service_settings(patched, "serve")
    assert serve.api.host == "0.0.0.0"
    assert port_of(healthcheck_url(found["serve"])) == serve.api.port
    assert targets["provline-serve"] == [f"serve:{serve.api.port}"]
    assert found["serve"]["ports"][0]["target"] == serve.api.port

    workers = sorted(name for name, s in provline_services().items() if s.get("command") == ["processors"])
    metrics_ports = []
    for name in workers:
        with monkeypatch.context() as patched:
            worker: Any = load_service_settings(patched, name)
        assert healthcheck_url(found[name]).endswith(f":{worker.processors.web_port}/readyz")
        metrics_ports.append(f"{name}:{worker.processors.metrics_port}")
    assert sorted(targets["provline-processors"]) == metrics_ports

    with monkeypatch.context() as patched:
        sidecar: Any = load_service_settings(patched, "sidecar")
    assert healthcheck_url(found["sidecar"]).endswith(f":{sidecar.sidecar.admin_port}/readyz")
    assert targets["provline-sidecar"] == [f"sidecar:{sidecar.sidecar.admin_port}"]
    assert found["sidecar"]["ports"][0]["target"] == sidecar.sidecar.port
    model_server = found["model-server"]
    upstream = urlsplit(str(sidecar.sidecar.upstream))
    assert upstream.hostname == "model-server"
    assert str(upstream.port) == model_server["command"][model_server["command"].index("--port") + 1]
    assert port_of(healthcheck_url(model_server)) == upstream.port


def test_kafka_is_a_three_node_kraft_cluster_with_replication_3_and_min_isr_2(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = {name: s for name, s in services().items() if s["image"].startswith("apache/kafka:")}
    voters = {f"{s['environment']['KAFKA_NODE_ID']}@{name}:9093" for name, s in nodes.items()}
    for name, node in nodes.items():
        env = node["environment"]
        assert set(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == voters
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert (env["KAFKA_DEFAULT_REPLICATION_FACTOR"], env["KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2")
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
    with monkeypatch.context() as patched:
        topics: Any = load_service_settings(patched, "topics")
    assert services()["topics"]["command"] == ["topics", "create"]
    assert topics.topics.replication_factor == 3
    assert sorted(topics.kafka.servers()) == sorted(f"{name}:9092" for name in nodes)
    for name, service in provline_services().items():
        depends = service.get("depends_on", {})
        if name != "topics" and settings_service(service, name):
            assert depends.get("topics") == {"condition": "service_completed_successfully"}, name


def test_clickhouse_users_match_the_store_url_and_grafana(monkeypatch: pytest.MonkeyPatch) -> None:
    users_xml = (COMPOSE_DIR / "clickhouse" / "users.xml").read_text()
    with monkeypatch.context() as patched:
        serve: Any = load_service_settings(patched, "serve")
    store = urlsplit(serve.store.url)
    assert (store.hostname, store.port, store.path) == ("clickhouse", 8123, "/provline")
    assert f"<{store.username}>" in users_xml
    clickhouse = services()["clickhouse"]
    assert store.password == clickhouse["environment"]["CLICKHOUSE_WRITER_PASSWORD"]
    assert mounts(clickhouse)["/etc/clickhouse-server/users.d/provline.xml"] == str(COMPOSE_DIR / "clickhouse" /
                                                                                  "users.xml")
    [source] = [d for d in load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "datasources.yml")["datasources"]
                if d["type"] == "grafana-clickhouse-datasource"]
    reader = source["jsonData"]["username"]
    assert re.search(rf"<{reader}>.*?<profile>grafana_readonly</profile>.*?</{reader}>", users_xml, re.S)
    assert re.search(r"<grafana_readonly>\s*<readonly>1</readonly>", users_xml)
    assert services()["grafana"]["environment"]["CLICKHOUSE_GRAFANA_PASSWORD"] == \
        clickhouse["environment"]["CLICKHOUSE_GRAFANA_PASSWORD"]


def test_secrets_come_from_the_env_file_not_the_compose_file() -> None:
    raw = load_yaml(COMPOSE_FILE)["services"]
    classes = settings_classes()
    secret_variables = {variable for cls in classes.values() for variable, _, _, info in field_rows(cls)
                        if is_secret(info.annotation)}
    secret_variables |= {"CLICKHOUSE_WRITER_PASSWORD", "CLICKHOUSE_GRAFANA_PASSWORD", "GF_SECURITY_ADMIN_PASSWORD"}
    for name, service in raw.items():
        for variable, value in (service.get("environment") or {}).items():
            if variable in secret_variables or "password" in str(value):
                assert re.fullmatch(r".*\$\{[A-Z_]+(:\?[^}]*)?\}.*", str(value)), f"{name}: {variable} is a literal"
    example = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line
               and not line.startswith("#")}
    used = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE_FILE.read_text()))
    assert used <= example, f"not in .env.example: {sorted(used - example)}"


@pytest.mark.integration
def test_the_training_job_and_model_server_run_as_compose_starts_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kafka_bootstrap: str
) -> None:
    """train and model-server with their compose commands and environment, on the test broker: the model
    file the job writes is the one the server answers with."""
    topics = Topics(f"compose-{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, topics.all)
    found = services()

    def local(service: dict[str, Any], *replaced: tuple[str, str]) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable if word == "python" else word for word in service["entrypoint"] + service["command"]]
        for container_path, host_path in replaced:
            argv = [word.replace(container_path, host_path) for word in argv]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVLINE_")}
        env.update({k: str(v) for k, v in service.get("environment", {}).items()})
        # the test broker and its topics; one broker holds one replica, not compose's three
        env.update(PROVLINE_KAFKA__BOOTSTRAP=kafka_bootstrap, PROVLINE_TOPICS__PREFIX=topics.prefix,
                   PROVLINE_TOPICS__REPLICATION_FACTOR="-1", PYTHONPATH=str(REPO))
        return argv, env

    model_dir = tmp_path / "models"
    argv, env = local(found["train"], (f"{DEMO_CODE}/deploy", str(REPO / "deploy")), ("/models", str(model_dir)))
    trained = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    model = json.loads((model_dir / "churn-model.json").read_text())

    port = free_port()
    argv, env = local(found["model-server"], ("/models", str(model_dir)))
    argv = [str(port) if word == "9000" else ("127.0.0.1" if word == "0.0.0.0" else word) for word in argv]
    server = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the model server did not answer within 30 s"
                time.sleep(0.2)
        reply = httpx.post(f"http://127.0.0.1:{port}/predict", json=dict.fromkeys(model["features"], 1.0))
        assert reply.status_code == 200 and reply.headers["X-Model-Version"] == "1"
    finally:
        server.terminate()
        server.wait(10)


def test_the_sql_users_are_the_ones_provline_sql_grants_prints_for_serve(tmp_path: Path) -> None:
    """clickhouse/sql-grants.sql is `provline sql-grants` under serve's environment, and the first-start
    script runs it with the passwords put in (a `clickhouse` stand-in on PATH takes the statements)."""
    serve, clickhouse = services()["serve"], services()["clickhouse"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVLINE_")}
    env.update({k: str(v) for k, v in serve["environment"].items()})
    printed = subprocess.run([sys.executable, "-m", "provline", "sql-grants"], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    grants = COMPOSE_DIR / "clickhouse" / "sql-grants.sql"
    assert grants.read_text() == printed.stdout, "regenerate deploy/compose/clickhouse/sql-grants.sql"
    script = COMPOSE_DIR / "clickhouse" / "init-sql-users.sh"
    assert mounts(clickhouse)["/docker-entrypoint-initdb.d/init-sql-users.sh"] == str(script)
    assert mounts(clickhouse)["/provline/sql-grants.sql"] == str(grants)

    received = tmp_path / "statements.sql"
    (tmp_path / "clickhouse").write_text(f"#!/bin/sh\ncat > {received}\n")
    (tmp_path / "clickhouse").chmod(0o755)
    passwords = {k: str(v) for k, v in clickhouse["environment"].items() if k.startswith("CLICKHOUSE_SQL_")}
    ran = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                         env={"PATH": f"{tmp_path}:{os.environ['PATH']}", "SQL_GRANTS": str(grants), **passwords})
    assert ran.returncode == 0, ran.stderr
    statements = received.read_text()
    assert "<password of" not in statements
    for role in ("auditor", "admin"):
        url = urlsplit(getattr(load_settings_of(serve).sql, f"{role}_url").get_secret_value())
        assert f"CREATE USER IF NOT EXISTS {url.username} IDENTIFIED WITH sha256_password BY '{url.password}'" \
            in statements
    refused = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                             env={"PATH": f"{tmp_path}:{os.environ['PATH']}", "SQL_GRANTS": str(grants),
                                  **passwords, "CLICKHOUSE_SQL_ADMIN_PASSWORD": "a/b"})
    assert refused.returncode == 1 and "CLICKHOUSE_SQL_ADMIN_PASSWORD" in refused.stderr


def load_settings_of(service: dict[str, Any]) -> Any:
    with pytest.MonkeyPatch.context() as patched:
        for name in [n for n in os.environ if n.startswith("PROVLINE_")]:
            patched.delenv(name)
        for variable, value in service["environment"].items():
            patched.setenv(variable, str(value))
        return load_settings(settings_classes()[service["command"][0]])
