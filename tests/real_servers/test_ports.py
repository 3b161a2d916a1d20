"""Finding 13: every port a service listens on is set by its own variable, and ``0`` means any free
one, so that two systems (or a test beside a running one) never collide: the audit API (8700), the
sidecar's proxy and admin ports (8080, 9090), the processors' web server (6066) and metrics (9466);
and the local broker's controller port can be chosen too."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from deploy.demo.stack import DEMO_API_TOKEN, Service
from deploy.local.kafka.broker import free_port
from tests.real_servers.conftest import RealServers

pytestmark = pytest.mark.real_servers
START_TIMEOUT_S = 60.0


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` and its descendants listen on (read from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command: state, ppid, ...
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    family, grew = {pid}, True
    while grew:
        children = {child for child, parent in parents.items() if parent in family} - family
        family, grew = family | children, bool(children)
    sockets = set()
    for member in family:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{member}/fd").iterdir()]
        except OSError:
            continue
        sockets |= {int(m.group(1)) for link in links if (m := re.fullmatch(r"socket:\[(\d+)\]", link))}
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            columns = line.split()
            if columns[3] == "0A" and int(columns[9]) in sockets:  # 0A: LISTEN
                ports.add(int(columns[1].rsplit(":", 1)[1], 16))
    return ports


def wait_listening(service: Service, count: int) -> set[int]:
    assert service.process is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        ports = listening_ports(service.process.pid)
        if len(ports) >= count:
            return ports
        assert service.process.poll() is None, f"{service.name} exited {service.process.returncode}:\n" \
                                               f"{service.log_tail()}"
        assert time.monotonic() < deadline, f"{service.name} listens on {sorted(ports)}, not {count} ports:\n" \
                                            f"{service.log_tail()}"
        time.sleep(0.2)


def test_every_service_port_may_be_any_free_one(servers: RealServers, tmp_path: Path) -> None:
    stack = servers.stack
    base = {name: value for name, value in os.environ.items() if not name.startswith("PROVLINE_")}
    base.update(PROVLINE_KAFKA__BOOTSTRAP=str(stack.kafka_bootstrap), PROVLINE_TOPICS__PREFIX=stack.topics.prefix)
    tokens = json.dumps({"ports": {"token": DEMO_API_TOKEN, "role": "admin"}})
    services = {  # name: (arguments, ports it listens on, settings)
        "serve": (["serve"], 1, {
            "PROVLINE_API__PORT": "0", "PROVLINE_API__TOKENS": tokens,
            "PROVLINE_STORE__URL": f"chdb://{tmp_path / 'store'}",
            "PROVLINE_SINK__CONSUMER_GROUP": f"ports-{tmp_path.name}",
        }),
        "processors": (["processors"], 2, {
            "PROVLINE_PROCESSORS__WEB_PORT": "0", "PROVLINE_PROCESSORS__METRICS_PORT": "0",
            "PROVLINE_PROCESSORS__APP_ID": f"ports-{tmp_path.name}", "PROVLINE_PROCESSORS__DATA_DIR": str(tmp_path),
        }),
        "sidecar": (["sidecar", "--upstream", servers.mlserver.url, "--host", "127.0.0.1"], 2, {
            "PROVLINE_SIDECAR__PORT": "0", "PROVLINE_SIDECAR__ADMIN_PORT": "0",
        }),
    }
    started = {name: Service(f"ports-{name}", [sys.executable, "-m", "provline", *argv], {**base, **env},
                             tmp_path / f"{name}.log").start() for name, (argv, _, env) in services.items()}
    try:
        for name, (_, count, _) in services.items():
            wait_listening(started[name], count)
    finally:
        for service in started.values():
            service.stop()


def test_the_local_brokers_controller_port_can_be_chosen(tmp_path: Path) -> None:
    port, controller_port = free_port(), free_port()
    broker = Service("broker", [sys.executable, "-m", "deploy.local.kafka", "--data-dir", str(tmp_path / "kafka"),
                                "--port", str(port), "--controller-port", str(controller_port)],
                     dict(os.environ), tmp_path / "broker.log")
    broker.start()
    try:
        assert {port, controller_port} <= wait_listening(broker, 2)
    finally:
        broker.stop()
