"""deploy/kubernetes, checked offline: each overlay rendered by the real kustomize (``make k8s-tools``), every
built-in object validated against the Kubernetes API's schemas (kubernetes-validate), the ServiceMonitors and
the InferenceService against the openAPIV3Schema of the real CRDs, then what a schema cannot see: settings
the services accept, ports, probes, selectors, secrets, commands, resources and security contexts.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml

from provline.cli import app, settings_classes
from provline.config import ConfigError, ProvlineSettings, load_settings
from provline.sidecar.settings import SidecarSettings
from provline.sink.settings import ServeSettings
from provline.stream_processors.settings import ProcessorSettings

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUSTOMIZE = ROOT / "build" / "k8s" / "bin" / "kustomize"
CRDS = ROOT / "build" / "k8s" / "crds"
KUBERNETES_VERSION = "1.33.0"
OVERLAYS = ("local", "production", "kserve", "kserve-logger")
# Secrets an overlay expects to be created outside the repository, as its example file shows them.
SECRETS_CREATED_OUTSIDE = {"production": MANIFESTS / "overlays" / "production" / "secret.example.yaml"}
PROVLINE_IMAGE = "ghcr.io/provline/provline"
UID = 10001
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
SERVICES = {"serve", "processors", "sidecar"}  # long-running, with ports, probes and /metrics
EXTRA_SERVICES = {"kserve-logger": {"ingest"}}  # what an overlay runs besides SERVICES
SCHEDULED = {"verify", "anchor"}  # CronJobs of the audit client (docs/operations.md)

Object = dict[str, Any]


@functools.cache
def rendered(overlay: str) -> tuple[Object, ...]:
    assert KUSTOMIZE.is_file(), f"{KUSTOMIZE} is missing; run `make k8s-tools`"
    done = subprocess.run([str(KUSTOMIZE), "build", str(MANIFESTS / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kustomize build overlays/{overlay} failed: {done.stderr}"
    return tuple(o for o in yaml.safe_load_all(done.stdout) if o)


def of_kind(objects: tuple[Object, ...], kind: str) -> list[Object]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: tuple[Object, ...], kind: str, name: str) -> Object:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert found, f"no {kind} {name} in the rendered manifests"
    return found[0]


def secrets(overlay: str) -> tuple[Object, ...]:
    outside = SECRETS_CREATED_OUTSIDE.get(overlay)
    loaded = tuple(o for o in yaml.safe_load_all(outside.read_text()) if o) if outside else ()
    return tuple(of_kind(rendered(overlay), "Secret")) + loaded


def secret_values(secret: Object) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return values | dict(secret.get("stringData") or {})


# ---------------------------------------------------------------- pods, as every kind that makes them has them


class Pod:
    """A pod template: its owner, labels and pod spec (a workload's template, or a KServe predictor)."""

    def __init__(self, owner: Object, labels: dict[str, str], spec: Object) -> None:
        self.owner, self.labels, self.spec = owner, labels, spec
        self.name = f"{owner['kind']} {owner['metadata']['name']}"

    @property
    def containers(self) -> list[Object]:
        return list(self.spec["containers"])

    def container_ports(self) -> dict[str | int, int]:
        """Port name and number -> number, of every container."""
        ports: dict[str | int, int] = {}
        for container in self.containers:
            for port in container.get("ports", []):
                ports[port["containerPort"]] = port["containerPort"]
                if "name" in port:
                    ports[port["name"]] = port["containerPort"]
        return ports


def pods(objects: tuple[Object, ...]) -> list[Pod]:
    found = []
    for o in objects:
        if o["kind"] in POD_TEMPLATE_KINDS:
            template = o["spec"]["template"]
            found.append(Pod(o, template["metadata"].get("labels", {}), template["spec"]))
        elif o["kind"] == "CronJob":
            template = o["spec"]["jobTemplate"]["spec"]["template"]
            found.append(Pod(o, template["metadata"].get("labels", {}), template["spec"]))
        elif o["kind"] == "InferenceService":
            predictor = o["spec"]["predictor"]
            labels = predictor.get("labels", {}) | {"serving.kserve.io/inferenceservice": o["metadata"]["name"]}
            found.append(Pod(o, labels, predictor))
    return found


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def provline_containers(overlay: str) -> Iterator[tuple[Pod, Object]]:
    for pod in pods(rendered(overlay)):
        for container in pod.containers:
            if container["image"].split(":")[0] == PROVLINE_IMAGE:
                yield pod, container


def command_of(container: Object) -> str:
    """The provline subcommand a container runs (the image's ENTRYPOINT is `provline`)."""
    assert "command" not in container, f"container {container['name']} replaces the image's provline entrypoint"
    return str(container["args"][0])


def environment(overlay: str, container: Object) -> dict[str, str]:
    """The variables a container gets, from envFrom and env, resolved against the ConfigMaps and Secrets."""
    objects = rendered(overlay)
    secret_of = {s["metadata"]["name"]: secret_values(s) for s in secrets(overlay)}
    config_of = {c["metadata"]["name"]: c.get("data", {}) for c in of_kind(objects, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in config_of, f"{container['name']}: envFrom names ConfigMap {name}, which is not rendered"
            env |= config_of[name]
        else:
            name = source["secretRef"]["name"]
            assert name in secret_of, f"{container['name']}: envFrom names Secret {name}, which no example has"
            env |= secret_of[name]
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif "secretKeyRef" in variable["valueFrom"]:
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref["key"] in secret_of.get(ref["name"], {}), (
                f"{container['name']}: {variable['name']} refers to key {ref['key']} of Secret {ref['name']}, "
                f"which the example Secret lacks; add it there (and to README.md)")
            env[variable["name"]] = secret_of[ref["name"]][ref["key"]]
        elif "configMapKeyRef" in variable["valueFrom"]:
            ref = variable["valueFrom"]["configMapKeyRef"]
            env[variable["name"]] = config_of[ref["name"]][ref["key"]]
        else:  # fieldRef: the pod's own name or address
            env[variable["name"]] = "provline-pod-0"
    return env


def settings_of(command: str, env: dict[str, str]) -> ProvlineSettings:
    """The command's settings loaded from exactly ``env``, as the service does at start (ConfigError if refused)."""
    with mock.patch.dict(os.environ):
        for name in [n for n in os.environ if n.startswith("PROVLINE_")]:
            del os.environ[name]
        os.environ.update(env)
        return load_settings(settings_classes()["client" if command in SCHEDULED else command])


def probe_port(pod: Pod, probe: Object) -> int:
    port = probe["httpGet"]["port"]
    assert port in pod.container_ports(), f"{pod.name}: probe port {port!r} is no container port"
    return pod.container_ports()[port]


# ---------------------------------------------------------------- schemas


def strict(schema: Any) -> Any:
    """The CRD schema refusing unknown fields, as the API server's strict field validation does
    (structural schemas otherwise only prune them, silently)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    tightened = {k: strict(v) for k, v in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        tightened["additionalProperties"] = False
    return tightened


@functools.cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft4Validator]:
    """(apiVersion, kind) -> a validator of the strict openAPIV3Schema of each CRD `make k8s-tools` fetched
    (OpenAPI 3.0 schemas are JSON Schema draft 4 in the keywords CRDs may use)."""
    assert CRDS.is_dir(), f"{CRDS} is missing; run `make k8s-tools`"
    found = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB for KServe
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            found[key] = jsonschema.Draft4Validator(strict(version["schema"]["openAPIV3Schema"]))
    return found


def validate(o: Object) -> None:
    """jsonschema or kubernetes_validate errors when ``o`` does not fit its kind's schema."""
    crd = crd_validators().get((o["apiVersion"], o["kind"]))
    if crd is not None:
        crd.validate(o)
    else:
        kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_fits_the_kubernetes_or_crd_schema(overlay: str) -> None:
    crd_kinds = {kind for _, kind in crd_validators()}
    assert crd_kinds == {"ServiceMonitor", "InferenceService"}, f"{CRDS} has CRDs of {crd_kinds}"
    objects = rendered(overlay) + tuple(secrets(overlay))
    for o in objects:
        try:
            validate(o)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            pytest.fail(f"overlays/{overlay}: {o['kind']} {o['metadata']['name']}: {exc}")


def test_the_schema_checks_refuse_misspelt_fields() -> None:
    deployment = copy.deepcopy(named(rendered("local"), "Deployment", "provline-processors"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        validate(deployment)
    monitor = copy.deepcopy(named(rendered("local"), "ServiceMonitor", "provline-serve"))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        validate(monitor)
    service = copy.deepcopy(named(rendered("kserve"), "InferenceService", "churn"))
    service["spec"]["predictor"]["containers"][0]["imagee"] = PROVLINE_IMAGE
    with pytest.raises(jsonschema.ValidationError, match="imagee"):
        validate(service)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_run_provline_commands_whose_settings_accept_their_environment(overlay: str) -> None:
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    ran = set()
    for pod, container in provline_containers(overlay):
        command = command_of(container)
        assert command in commands, f"{pod.name}: `provline {command}` is no provline command"
        env = environment(overlay, container)
        assert all(name.startswith("PROVLINE_") for name in env), f"{pod.name}: a variable that is not provline's"
        try:
            settings_of(command, env)
        except ConfigError as exc:
            pytest.fail(f"overlays/{overlay}: {pod.name}, container {container['name']}: {exc}")
        ran.add(command)
    assert ran == SERVICES | EXTRA_SERVICES.get(overlay, set()) | {"verify"} | (
        {"anchor"} if overlay == "production" else set())


def test_a_misspelt_variable_in_a_manifest_is_refused() -> None:
    pod, container = next((p, c) for p, c in provline_containers("local") if command_of(c) == "sidecar")
    env = environment("local", container) | {"PROVLINE_SIDECAR__UPSTREEM": "http://127.0.0.1:9000"}
    with pytest.raises(ConfigError, match="PROVLINE_SIDECAR__UPSTREEM"):
        settings_of("sidecar", env)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_ports_are_the_ones_the_settings_listen_on(overlay: str) -> None:
    for pod, container in provline_containers(overlay):
        command = command_of(container)
        if command in SCHEDULED:
            assert "ports" not in container and "livenessProbe" not in container, f"{pod.name} runs to completion"
            continue
        settings: Any = settings_of(command, environment(overlay, container))
        own_ports = {p["containerPort"] for p in container["ports"]}
        live, ready = container["livenessProbe"], container["readinessProbe"]
        where = f"overlays/{overlay}: {pod.name}"
        if command == "serve":
            assert settings.api.host == "0.0.0.0", f"{where}: the API listens on {settings.api.host} only"
            expected = {"port": settings.api.port, "live": "/healthz", "ready": "/readyz"}
            assert own_ports == {settings.api.port}
        elif command == "sidecar":
            proxy = settings.sidecar
            assert proxy.host == "0.0.0.0", f"{where}: the sidecar listens on {proxy.host} only"
            expected = {"port": proxy.admin_port, "live": "/healthz", "ready": "/readyz"}
            assert own_ports == {proxy.port, proxy.admin_port}
        elif command == "ingest":
            assert settings.ingest.host == "0.0.0.0", f"{where}: ingest listens on {settings.ingest.host} only"
            expected = {"port": settings.ingest.port, "live": "/healthz", "ready": "/readyz"}
            assert own_ports == {settings.ingest.port}
        else:
            worker = settings.processors
            expected = {"port": worker.web_port, "live": "/healthz", "ready": "/readyz"}  # on Faust's web server
            assert own_ports == {worker.web_port, worker.metrics_port}
        assert (probe_port(pod, live), live["httpGet"]["path"]) == (expected["port"], expected["live"]), where
        assert (probe_port(pod, ready), ready["httpGet"]["path"]) == (expected["port"], expected["ready"]), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_sidecar_relays_to_a_model_server_in_its_own_pod(overlay: str) -> None:
    for pod, container in provline_containers(overlay):
        if command_of(container) != "sidecar":
            continue
        settings = settings_of("sidecar", environment(overlay, container))
        assert isinstance(settings, SidecarSettings)
        upstream = urlsplit(str(settings.sidecar.upstream))
        others = [c for c in pod.containers if c is not container]
        other_ports = {p["containerPort"] for c in others for p in c.get("ports", [])}
        assert upstream.hostname == "127.0.0.1" and upstream.port in other_ports, (
            f"{pod.name}: upstream {upstream.geturl()} is not a port of another container in the pod")
        if pod.owner["kind"] == "InferenceService":  # KServe routes to kserve-container's port: provline's
            assert container["name"] == "kserve-container"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_processors_replicas_do_not_exceed_the_inference_partitions(overlay: str) -> None:
    for pod, container in provline_containers(overlay):
        if command_of(container) == "processors":
            settings = settings_of("processors", environment(overlay, container))
            assert isinstance(settings, ProcessorSettings)
            replicas = pod.owner["spec"]["replicas"]
            assert 1 <= replicas <= settings.topics.partitions, (
                f"overlays/{overlay}: {replicas} processors for {settings.topics.partitions} partitions")
            budget = [b for b in of_kind(rendered(overlay), "PodDisruptionBudget")
                      if selects(b["spec"]["selector"]["matchLabels"], pod.labels)]
            assert budget, f"overlays/{overlay}: no PodDisruptionBudget for the processors"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_an_embedded_store_has_one_owner_with_its_own_volume(overlay: str) -> None:
    for pod, container in provline_containers(overlay):
        if command_of(container) != "serve":
            continue
        settings = settings_of("serve", environment(overlay, container))
        assert isinstance(settings, ServeSettings)
        if not settings.store.url.startswith("chdb://"):
            assert pod.owner["kind"] == "Deployment"
            continue
        assert pod.owner["kind"] == "StatefulSet" and pod.owner["spec"]["replicas"] == 1, (
            f"overlays/{overlay}: chDB allows one process per data directory: one StatefulSet replica")
        path = urlsplit(settings.store.url).path
        claims = {c["metadata"]["name"] for c in pod.owner["spec"]["volumeClaimTemplates"]}
        assert any(m["name"] in claims and path.startswith(m["mountPath"] + "/") for m in container["volumeMounts"]), (
            f"overlays/{overlay}: the store {path} is on no persistent volume of the pod")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_pods_and_target_their_ports(overlay: str) -> None:
    all_pods = pods(rendered(overlay))
    for service in of_kind(rendered(overlay), "Service"):
        chosen = [p for p in all_pods if selects(service["spec"]["selector"], p.labels)]
        assert chosen, f"overlays/{overlay}: Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            for pod in chosen:
                assert port["targetPort"] in pod.container_ports(), (
                    f"Service {service['metadata']['name']}: {pod.name} has no port {port['targetPort']!r}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_select_pods_and_let_in_only_their_ports(overlay: str) -> None:
    all_pods = pods(rendered(overlay))
    policies = of_kind(rendered(overlay), "NetworkPolicy")
    assert any(p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
               and "ingress" not in p["spec"] and "egress" not in p["spec"] for p in policies), "no default deny"
    for policy in policies:
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        chosen = [p for p in all_pods if selects(selector, p.labels)]
        assert chosen, f"overlays/{overlay}: NetworkPolicy {policy['metadata']['name']} selects no pod"
        for rule in policy["spec"].get("ingress", []):
            for port in rule["ports"]:
                for pod in chosen:
                    assert port["port"] in pod.container_ports(), (
                        f"NetworkPolicy {policy['metadata']['name']} lets in port {port['port']}, "
                        f"on which {pod.name} does not listen")
    for pod in all_pods:
        if any(command_of(c) in {"serve", "processors", "sidecar", "ingest"} for c in pod.containers
               if c["image"].startswith(PROVLINE_IMAGE)):
            allowed = [p for p in policies if p["spec"]["podSelector"].get("matchLabels")
                       and selects(p["spec"]["podSelector"]["matchLabels"], pod.labels)]
            assert any(p["spec"].get("egress") for p in allowed), f"{pod.name}: nothing lets it reach Kafka"


def metrics_port(command: str, settings: Any) -> int:
    """The port a provline service serves /metrics on, by its settings."""
    if command == "serve":
        return int(settings.api.port)
    if command == "sidecar":
        return int(settings.sidecar.admin_port)
    if command == "ingest":
        return int(settings.ingest.port)
    return int(settings.processors.metrics_port)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitors_select_services_by_their_port_names(overlay: str) -> None:
    services = of_kind(rendered(overlay), "Service")
    monitors = of_kind(rendered(overlay), "ServiceMonitor")
    scraped: set[tuple[str, int]] = set()  # (Service, container port) a ServiceMonitor scrapes
    for monitor in monitors:
        chosen = [s for s in services if selects(monitor["spec"]["selector"]["matchLabels"],
                                                 s["metadata"].get("labels", {}))]
        assert chosen, f"overlays/{overlay}: ServiceMonitor {monitor['metadata']['name']} selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            for service in chosen:
                ports = {p.get("name"): p for p in service["spec"]["ports"]}
                assert endpoint["port"] in ports, (
                    f"ServiceMonitor {monitor['metadata']['name']}: Service {service['metadata']['name']} "
                    f"has no port named {endpoint['port']}")
                for pod in pods(rendered(overlay)):
                    if selects(service["spec"]["selector"], pod.labels):
                        scraped.add((service["metadata"]["name"], pod.container_ports()[ports[endpoint["port"]]
                                                                                         ["targetPort"]]))
    for pod, container in provline_containers(overlay):
        command = command_of(container)
        if command in SCHEDULED:
            continue  # a Job's process ends before Prometheus would scrape it; serve counts its runs
        port = metrics_port(command, settings_of(command, environment(overlay, container)))
        serving = [s["metadata"]["name"] for s in services if selects(s["spec"]["selector"], pod.labels)]
        assert any((name, port) in scraped for name in serving), (
            f"overlays/{overlay}: no ServiceMonitor scrapes {pod.name}'s /metrics on port {port}")


def test_the_kserve_predictor_carries_the_sidecar_in_front_of_its_model_server() -> None:
    (service,) = of_kind(rendered("kserve"), "InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    containers = {c["name"]: c for c in service["spec"]["predictor"]["containers"]}
    assert command_of(containers["kserve-container"]) == "sidecar"
    assert containers["kserve-container"]["image"].startswith(PROVLINE_IMAGE + ":")
    deployments = {d["metadata"]["name"] for d in of_kind(rendered("kserve"), "Deployment")}
    assert "churn-model" not in deployments, "the InferenceService replaces the plain example's Deployment"


def test_the_kserve_logger_sends_both_halves_to_the_ingest_service_and_its_spool_outlives_the_pod() -> None:
    objects = rendered("kserve-logger")
    service = named(objects, "InferenceService", "iris")
    logger = service["spec"]["predictor"]["logger"]
    assert logger["mode"] == "all"
    target = urlsplit(logger["url"])
    ingest_service = named(objects, "Service", "provline-ingest")
    assert target.hostname == f"{ingest_service['metadata']['name']}.{ingest_service['metadata']['namespace']}"
    assert (target.port or 80) in {p["port"] for p in ingest_service["spec"]["ports"]}
    assert {"X-Request-Id", "Traceparent"} <= set(logger["metadataHeaders"])
    assert all(c["image"].split(":")[0] != PROVLINE_IMAGE for c in service["spec"]["predictor"]["containers"])
    (pod,) = [p for p, c in provline_containers("kserve-logger") if command_of(c) == "ingest"]
    assert pod.owner["kind"] == "StatefulSet", "one spool per replica, on a volume of its own"
    settings = settings_of("ingest", environment("kserve-logger", pod.containers[0]))
    claims = {c["metadata"]["name"] for c in pod.owner["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in pod.containers[0]["volumeMounts"]}
    spool = str(settings.emitter.spool_dir)  # type: ignore[attr-defined]
    assert any(spool.startswith(path + "/") and name in claims for path, name in mounts.items()), spool
    # The predictor may reach the ingest port, and the ingest pods let it in.
    egress = named(objects, "NetworkPolicy", "iris-logger")["spec"]["egress"]
    assert any(p["port"] == settings.ingest.port for rule in egress for p in rule["ports"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_bounded_and_locked_down(overlay: str) -> None:
    for pod in pods(rendered(overlay)):
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        assert pod.spec.get("automountServiceAccountToken") is False, f"{pod.name}: mounts an API token"
        for container in pod.containers:
            where = f"overlays/{overlay}: {pod.name}, container {container['name']}"
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}, f"{where}: no {bound}"
            context = container["securityContext"]
            assert context == {
                "runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            }, f"{where}: securityContext {context}"
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: no writable /tmp on a read-only root"
            if container["image"].split(":")[0] == PROVLINE_IMAGE:
                assert ":" in container["image"], f"{where}: image {container['image']} has no tag from the overlay"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scheduled_checks_reach_the_audit_api_as_a_reader_it_knows(overlay: str) -> None:
    objects = rendered(overlay)
    serve_pods = [p for p in pods(objects) if any(command_of(c) == "serve" for c in p.containers
                                                   if c["image"].startswith(PROVLINE_IMAGE))]
    (serve_container,) = [c for c in serve_pods[0].containers if command_of(c) == "serve"]
    tokens = json.loads(environment(overlay, serve_container)["PROVLINE_API__TOKENS"])
    policies = of_kind(objects, "NetworkPolicy")
    scheduled = [(pod, c) for pod, c in provline_containers(overlay) if command_of(c) in SCHEDULED]
    assert scheduled, f"overlays/{overlay}: no scheduled verify"
    for pod, container in scheduled:
        assert pod.owner["kind"] == "CronJob" and pod.spec["restartPolicy"] == "Never", pod.name
        settings: Any = settings_of(command_of(container), environment(overlay, container))
        url = urlsplit(settings.client.api_url)
        (service,) = [s for s in of_kind(objects, "Service") if s["metadata"]["name"] == url.hostname]
        (port,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
        assert any(selects(service["spec"]["selector"], p.labels) for p in serve_pods), f"{url.hostname} is not serve"
        token = settings.client.api_token.get_secret_value()
        assert any(reader["token"] == token and reader["role"] in {"auditor", "admin"} for reader in tokens.values()), (
            f"{pod.name}: its token is none of serve's auditors' or admins'")
        target = serve_pods[0].container_ports()[port["targetPort"]]
        egress = [rule for policy in policies
                  if selects(policy["spec"]["podSelector"].get("matchLabels", {}), pod.labels)
                  for rule in policy["spec"].get("egress", [])]
        assert any(target in {p["port"] for p in rule.get("ports", [])} for rule in egress), (
            f"{pod.name}: no NetworkPolicy lets it reach the API on port {target}")
