"""provline's image (deploy/image), run with podman against the session's real broker (issue 16).

``make image`` builds it; these tests take it as built. The containers share the host's network
(``--network host``): the broker advertises 127.0.0.1, which a container on its own network could
not reach. Every container and volume a test makes is removed when it ends, passed or failed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from deploy.image import healthcheck
from deploy.image.build import IMAGE, podman
from deploy.local.kafka.broker import free_port
from provline.schemas import Topics, default_catalog
from provline.schemas.frames import events_in
from tests.helpers import LoopThread, serve_app

pytestmark = pytest.mark.integration

UID = "10001"
TOKEN = "image-test-token-" + "x" * 16
DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    """The built image's configuration (``podman image inspect``)."""
    found = podman("image", "exists", IMAGE, check=False)
    assert found.returncode == 0, f"image {IMAGE} is not built; run `make image` first"
    return json.loads(podman("image", "inspect", IMAGE).stdout)[0]


class Containers:
    """The containers and volumes one test starts; :meth:`remove_all` removes them, whatever happened."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.volumes: list[str] = []

    def volume(self) -> str:
        name = f"provline-test-{uuid.uuid4().hex[:10]}"
        podman("volume", "create", name)
        self.volumes.append(name)
        return name

    def start(self, *args: str, env: dict[str, str], volume: str | None = None) -> str:
        """``podman run -d`` of the image with ``args`` after its ``provline`` entrypoint; the container's name."""
        name = f"provline-test-{args[0]}-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        options = ["--name", name, "--network", "host", "--health-interval", "disable"]  # no systemd timers here
        options += [f"--env={key}={value}" for key, value in env.items()]
        if volume is not None:
            options += ["--volume", f"{volume}:/var/lib/provline"]
        podman("run", "--detach", *options, IMAGE, *args)
        return name

    def logs(self, name: str) -> str:
        result = podman("logs", name, check=False)
        return (result.stdout + result.stderr)[-4000:]

    def remove_all(self) -> None:
        for name in self.names:
            podman("rm", "--force", "--time", "5", name, check=False)
        for volume in self.volumes:
            podman("volume", "rm", "--force", volume, check=False)


@pytest.fixture
def containers() -> Iterator[Containers]:
    made = Containers()
    try:
        yield made
    finally:
        made.remove_all()


def wait_until_ok(url: str, containers: Containers, name: str) -> httpx.Response:
    """The first 200 answer of GET ``url``; fails with the container's logs when it stops or the deadline passes."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            reply = httpx.get(url, timeout=5)
            if reply.status_code == 200:
                return reply
        except httpx.TransportError:
            pass
        running = podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
        assert running == "true", f"container {name} stopped; its logs:\n{containers.logs(name)}"
        assert time.monotonic() < deadline, f"{url} gave no 200 in {DEADLINE_S:.0f} s; logs:\n{containers.logs(name)}"
        time.sleep(0.2)


def healthcheck_passes(name: str) -> bool:
    return podman("healthcheck", "run", name, check=False).returncode == 0


def test_the_image_runs_as_a_fixed_non_root_user_with_labels_healthcheck_and_no_compiler(
    image: dict[str, Any],
) -> None:
    config = image["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["provline"]
    assert {"8700/tcp", "8080/tcp", "9090/tcp", "6066/tcp", "9466/tcp"} <= set(config["ExposedPorts"])
    assert "/var/lib/provline" in config["Volumes"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert len(labels["org.opencontainers.image.revision"]) == 40, labels
    assert "org.opencontainers.image.source" in labels
    assert image["Healthcheck"]["Test"] == ["CMD", "/opt/provline/bin/python", "/opt/provline/healthcheck.py"]
    # No compiler and no pip at run time; every service's modules import (their imports are lazy in the CLI).
    script = ("for tool in gcc cc c++ pip pip3; do command -v $tool && exit 1; done; "
              "python -c 'import provline.sink.serve, provline.sidecar.serve, provline.stream_processors.app'")
    ran = podman("run", "--rm", "--health-interval", "disable", "--entrypoint", "sh", IMAGE, "-c", script)
    assert ran.returncode == 0
    print(f"{IMAGE}: {image['Size'] / 1e6:.0f} MB")


def test_the_healthcheck_probes_each_service_where_its_settings_put_it() -> None:
    from provline.sidecar.settings import DEFAULT_ADMIN_PORT
    from provline.sink.settings import DEFAULT_API_PORT
    from provline.stream_processors.settings import DEFAULT_WEB_PORT

    python = ["/opt/provline/bin/python", "/opt/provline/bin/provline"]
    assert healthcheck.health_url([*python, "serve"], {}) == f"http://127.0.0.1:{DEFAULT_API_PORT}/healthz"
    assert healthcheck.health_url([*python, "processors"], {}) == f"http://127.0.0.1:{DEFAULT_WEB_PORT}/healthz"
    assert healthcheck.health_url([*python, "sidecar"], {}) == f"http://127.0.0.1:{DEFAULT_ADMIN_PORT}/healthz"
    assert healthcheck.health_url([*python, "sidecar", "--admin-port=9191"], {"PROVLINE_SIDECAR__ADMIN_PORT": "1"}) \
        == "http://127.0.0.1:9191/healthz"
    assert healthcheck.health_url([*python, "serve"], {"PROVLINE_API__PORT": "8000"}) == "http://127.0.0.1:8000/healthz"
    assert healthcheck.health_url([*python, "verify"], {}) is None
    assert healthcheck.health_url([*python, "serve"], {"HEALTHCHECK_URL": "http://h:1/x"}) == "http://h:1/x"


def inference_events(bootstrap: str, topics: Topics, prediction_id: str) -> set[str]:
    """The kinds of the events on the inference topic for ``prediction_id``, read until both halves came."""
    from confluent_kafka import Consumer

    catalog = default_catalog()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"image-test-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topics.inference])
    kinds: set[str] = set()
    try:
        deadline = time.monotonic() + DEADLINE_S
        while kinds != {"InferenceRequest", "InferenceResponse"} and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() or message.value() is None:
                continue
            for raw in events_in(catalog, message.value()):
                decoded = catalog.decode(raw)
                if decoded.value.get("prediction_id") == prediction_id:
                    kinds.add(decoded.record)
    finally:
        consumer.close()
    return kinds


def test_the_sidecar_serve_and_processors_from_the_image_record_a_prediction_store_it_and_are_healthy(
    kafka_bootstrap: str, topics: Topics, loop: LoopThread, containers: Containers,
) -> None:
    from aiohttp import web

    async def predict(request: web.Request) -> web.Response:
        features = await request.json()
        return web.json_response({"outputs": [sum(features["inputs"])]})

    model_app = web.Application()
    model_app.router.add_post("/predict", predict)
    runner, model_port = loop.run(serve_app(model_app))
    kafka = {"PROVLINE_KAFKA__BOOTSTRAP": kafka_bootstrap, "PROVLINE_TOPICS__PREFIX": topics.prefix}
    try:
        api_port, proxy_port, admin_port = free_port(), free_port(), free_port()
        serve = containers.start("serve", volume=containers.volume(), env={
            **kafka, "PROVLINE_API__HOST": "127.0.0.1", "PROVLINE_API__PORT": str(api_port),
            "PROVLINE_SINK__BATCH_MAX_S": "0.1",
            "PROVLINE_API__TOKENS": json.dumps({"ops": {"token": TOKEN, "role": "auditor"}}),
        })
        # The admin port as an option, the proxy port from the environment: the healthcheck must follow both.
        sidecar = containers.start("sidecar", "--admin-port", str(admin_port), volume=containers.volume(), env={
            **kafka, "PROVLINE_SIDECAR__UPSTREAM": f"http://127.0.0.1:{model_port}",
            "PROVLINE_SIDECAR__HOST": "127.0.0.1", "PROVLINE_SIDECAR__PORT": str(proxy_port),
        })

        wait_until_ok(f"http://127.0.0.1:{admin_port}/readyz", containers, sidecar)
        prediction_id = f"image-{uuid.uuid4().hex[:12]}"
        answer = httpx.post(f"http://127.0.0.1:{proxy_port}/predict", json={"inputs": [1, 2, 3]},
                            headers={"X-Request-ID": prediction_id}, timeout=10)
        assert answer.status_code == 200 and answer.json() == {"outputs": [6]}, answer.text
        assert answer.headers["x-prediction-id"] == prediction_id
        assert inference_events(kafka_bootstrap, topics, prediction_id) == {"InferenceRequest", "InferenceResponse"}, \
            f"the sidecar's events did not reach Kafka; its logs:\n{containers.logs(sidecar)}"

        web_port, metrics_port = free_port(), free_port()
        processors = containers.start("processors", volume=containers.volume(), env={
            **kafka, "PROVLINE_PROCESSORS__WEB_PORT": str(web_port),
            "PROVLINE_PROCESSORS__METRICS_PORT": str(metrics_port),
        })

        api = f"http://127.0.0.1:{api_port}"
        assert wait_until_ok(f"{api}/healthz", containers, serve).json() == {"status": "ok"}
        wait_until_ok(f"{api}/readyz", containers, serve)
        assert httpx.post(f"{api}/v1/sql", json={"sql": "SELECT 1"}, timeout=5).status_code == 401
        deadline = time.monotonic() + DEADLINE_S
        for table in ("inference_requests", "inference_responses"):
            query = {"sql": f"SELECT count() FROM {table} WHERE prediction_id = '{prediction_id}'"}
            while (rows := httpx.post(f"{api}/v1/sql", json=query, headers={"Authorization": f"Bearer {TOKEN}"},
                                      timeout=10).json()["rows"]) != [[1]]:
                assert time.monotonic() < deadline, f"{table} has {rows}; serve's logs:\n{containers.logs(serve)}"
                time.sleep(0.2)

        wait_until_ok(f"http://127.0.0.1:{web_port}/readyz", containers, processors)  # Faust's state in the volume
        for name in (serve, sidecar, processors):
            status = podman("exec", name, "cat", "/proc/1/status").stdout  # the service itself, PID 1
            uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
            assert uids == [UID] * 4, f"{name}'s service runs as uids {uids} (real, effective, saved, fs)"
            assert healthcheck_passes(name), f"{name}'s HEALTHCHECK failed: {podman('inspect', name).stdout[-2000:]}"
        unreachable = podman("exec", "--env", f"HEALTHCHECK_URL=http://127.0.0.1:{free_port()}/healthz", serve,
                             "/opt/provline/bin/python", "/opt/provline/healthcheck.py", check=False)
        assert unreachable.returncode == 1 and "unhealthy" in unreachable.stdout, unreachable
    finally:
        loop.run(runner.cleanup())
