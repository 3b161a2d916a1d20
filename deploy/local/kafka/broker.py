"""A real single-node Apache Kafka broker (KRaft) for development, tests and the demo.

The broker runs from its own Maven artifacts (``org.apache.kafka:kafka_2.13``, see ``pom.xml``)
on the machine's Java 17: no Docker, no downloaded tarball. ``mvn`` resolves the jars once into
``target/lib``; every later start is offline.

    with LocalKafka(data_dir) as kafka:      # blocks until the broker answers metadata requests
        produce_to(kafka.bootstrap)

``stop()`` followed by ``start()`` restarts the broker on the same port with the same data, which
fault tests use to take the broker away and bring it back.

With ``scram_users`` the client listener is SASL_SSL, as production clusters are: SCRAM-SHA-512
users created with the storage, and a certificate from a throw-away CA (``tls/ca.pem``, see
:mod:`deploy.local.kafka.tls`); brokers talk to each other and to the controller in plain text on
listeners of their own. :meth:`LocalKafka.client_environment` gives a client's PROVLINE_KAFKA__
settings for one of the users.

:class:`LocalKafkaCluster` runs several such nodes (each a combined broker and controller: a
KRaft quorum of all of them) with the defaults a production cluster has: three replicas of every
topic, ``min.insync.replicas=2``, no unclean leader election. ``kill(node)`` SIGKILLs one node and
``start(node)`` brings it back with its data, for the tests in ``tests/cluster``.

Both are made of :class:`KafkaNode`: one broker+controller JVM with its ports, storage and log.

Command line (foreground until Ctrl-C / SIGTERM):

    python -m deploy.local.kafka --data-dir /tmp/kafka [--port 9092] [--controller-port 9093]
    python -m deploy.local.kafka --data-dir /tmp/kafka --brokers 3
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

HERE = Path(__file__).resolve().parent
LIB_DIR = HERE / "target" / "lib"
DEFAULT_START_TIMEOUT_S = 90.0
DEFAULT_STOP_TIMEOUT_S = 30.0
BROKER_HEAP = "-Xmx768m"
CLUSTER_NODE_HEAP = "-Xmx512m"  # three of these share the machine with the whole system under test


class BrokerError(RuntimeError):
    """The local broker could not be prepared, started or stopped."""


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int, *, besides: tuple[int, ...] = ()) -> list[int]:
    """``count`` different ports free now, none of ``besides``: held open together while chosen, since
    ports asked for one after the other may be the same one (the OS hands a closed port out again)."""
    held: list[socket.socket] = []  # a port of ``besides`` the OS hands out stays bound too, so the next differs
    chosen: list[int] = []
    try:
        while len(chosen) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            if (port := int(sock.getsockname()[1])) not in besides:
                chosen.append(port)
        return chosen
    finally:
        for sock in held:
            sock.close()


def ensure_artifacts() -> list[Path]:
    """Resolve the broker jars with Maven if they are not there yet; return the classpath."""
    if not any(LIB_DIR.glob("kafka_2.13-*.jar")):
        if shutil.which("mvn") is None:
            raise BrokerError("Maven (mvn) is not on PATH; install Maven to fetch the Kafka broker")
        if shutil.which("java") is None:
            raise BrokerError("java is not on PATH; the local Kafka broker needs Java 17 or newer")
        result = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(HERE / "pom.xml"), "dependency:copy-dependencies",
             f"-DoutputDirectory={LIB_DIR}", "-DincludeScope=runtime"],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise BrokerError(
                "mvn could not resolve the Kafka broker artifacts:\n"
                + (result.stdout + result.stderr)[-4000:]
            )
    return sorted(LIB_DIR.glob("*.jar"))


SCRAM_MECHANISM = "SCRAM-SHA-512"


def _listener_properties(
    port: int, controller_port: int, *, internal_port: int | None, keystore: Path | None,
) -> list[str]:
    """Plain text everywhere; or, with a keystore, clients on SASL_SSL and brokers on a plain listener."""
    if keystore is None or internal_port is None:
        return [
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]
    return [
        f"listeners=SECURE://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal_port},"
        f"CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=SECURE://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal_port}",
        "inter.broker.listener.name=INTERNAL",
        "listener.security.protocol.map=SECURE:SASL_SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"listener.name.secure.sasl.enabled.mechanisms={SCRAM_MECHANISM}",
        f"listener.name.secure.{SCRAM_MECHANISM.lower()}.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "listener.name.secure.ssl.keystore.type=PEM",
        f"listener.name.secure.ssl.keystore.location={keystore}",
        "listener.name.secure.ssl.client.auth=none",
    ]


# Broker-level defaults of the single dev broker: one copy of everything.
SINGLE_NODE_DEFAULTS = {
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
}
# ... and of a cluster, as production runs one: a write is acknowledged by two of three replicas,
# and a replica that missed writes never becomes leader.
CLUSTER_DEFAULTS = {
    "default.replication.factor": "3",
    "min.insync.replicas": "2",
    "unclean.leader.election.enable": "false",
    "offsets.topic.replication.factor": "3",
    "transaction.state.log.replication.factor": "3",
    "transaction.state.log.min.isr": "2",
    "share.coordinator.state.topic.replication.factor": "3",
    "share.coordinator.state.topic.min.isr": "2",
}


def _cluster_defaults(brokers: int) -> dict[str, str]:
    """:data:`CLUSTER_DEFAULTS`, with fewer replicas when there are fewer than three brokers to hold them."""
    replicas, in_sync = str(min(brokers, 3)), str(min(brokers, 2))
    return {key: replicas if key.endswith("replication.factor") else in_sync if "isr" in key or key.endswith(
        "insync.replicas") else value for key, value in CLUSTER_DEFAULTS.items()}


def _server_properties(data_dir: Path, port: int, controller_port: int, *, node_id: int, voters: str,
                       defaults: dict[str, str], internal_port: int | None = None,
                       keystore: Path | None = None) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={node_id}",
        f"controller.quorum.voters={voters}",
        *_listener_properties(port, controller_port, internal_port=internal_port, keystore=keystore),
        "controller.listener.names=CONTROLLER",
        f"log.dirs={data_dir / 'logs'}",
        "num.partitions=4",
        "auto.create.topics.enable=true",
        "offsets.topic.num.partitions=8",
        *(f"{key}={value}" for key, value in defaults.items()),
        "group.initial.rebalance.delay.ms=0",
        "log.flush.interval.messages=9223372036854775807",
        "",
    ])


def _log4j_properties(log_file: Path) -> str:
    return "\n".join([
        "status = error",
        "appender.file.type = File",
        "appender.file.name = file",
        f"appender.file.fileName = {log_file}",
        "appender.file.layout.type = PatternLayout",
        "appender.file.layout.pattern = [%d] %p %m (%c)%n",
        "rootLogger.level = info",
        "rootLogger.appenderRef.file.ref = file",
        "logger.kafka.name = kafka",
        "logger.kafka.level = warn",
        "logger.apache.name = org.apache.kafka",
        "logger.apache.level = warn",
        "",
    ])


class KafkaNode:
    """One combined broker+controller JVM; not thread-safe. Ports are chosen once and kept across restarts.

    ``voters`` is the KRaft quorum (``id@host:port,...``; None: this node alone), ``cluster_id`` the id
    its storage is formatted with (every node of a cluster has the same), ``defaults`` its broker-level
    topic defaults.
    """

    def __init__(self, data_dir: Path | str, *, node_id: int = 1, port: int | None = None,
                 controller_port: int | None = None, scram_users: dict[str, str] | None = None,
                 voters: str | None = None, cluster_id: str | None = None,
                 defaults: dict[str, str] | None = None, heap: str = BROKER_HEAP) -> None:
        """``port`` (clients) and ``controller_port`` (KRaft): None or 0, any free port."""
        self.data_dir = Path(data_dir).resolve()
        self.node_id = node_id
        self.scram_users = dict(scram_users or {})
        chosen = iter(free_ports(3, besides=tuple(p for p in (port, controller_port) if p)))
        self.port = port or next(chosen)
        self.controller_port = controller_port or next(chosen)
        if self.controller_port == self.port:
            raise BrokerError(f"the client and controller ports are both {self.port}; give them different ports")
        self.internal_port = next(chosen) if self.scram_users else None
        self.voters = voters or f"{node_id}@127.0.0.1:{self.controller_port}"
        self.cluster_id = cluster_id or _kafka_cluster_id()
        self.defaults = dict(SINGLE_NODE_DEFAULTS if defaults is None else defaults)
        self.heap = heap
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def secure(self) -> bool:
        return bool(self.scram_users)

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    def kafka_section(self, user: str | None = None, *, password: str | None = None) -> dict[str, str]:
        """provline's ``kafka`` settings for a client of this broker, as ``user`` (with its password, or
        ``password``); ``user`` may be None when the broker is not secure."""
        section = {"bootstrap": self.bootstrap}
        if self.secure:
            if user is None:
                raise BrokerError(f"this broker takes SASL users only ({', '.join(self.scram_users)}); name one")
            section.update({
                "security_protocol": "SASL_SSL", "sasl_mechanism": SCRAM_MECHANISM, "sasl_username": user,
                "sasl_password": password if password is not None else self.scram_users[user],
                "ssl_ca_file": str(self.ca_file),
            })
        return section

    def client_environment(self, user: str | None = None, *, password: str | None = None) -> dict[str, str]:
        """:meth:`kafka_section` as PROVLINE_KAFKA__ environment variables."""
        return {f"PROVLINE_KAFKA__{name.upper()}": value
                for name, value in self.kafka_section(user, password=password).items()}

    def client_config(self, user: str | None = None) -> dict[str, str]:
        """librdkafka properties of a client of this broker (as the first user when secure and none is named)."""
        config = {"bootstrap.servers": self.bootstrap}
        if self.secure:
            name = user or next(iter(self.scram_users))
            config.update({"security.protocol": "SASL_SSL", "sasl.mechanism": SCRAM_MECHANISM, "sasl.username": name,
                           "sasl.password": self.scram_users[name], "ssl.ca.location": str(self.ca_file)})
        return config

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _java(self, main_class: str, *args: str) -> list[str]:
        classpath = os.pathsep.join(str(jar) for jar in ensure_artifacts())
        return [
            "java", self.heap, "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp", classpath, main_class, *args,
        ]

    def _keystore(self) -> Path | None:
        """The broker's key and certificate (made once, with the CA clients trust), when secure."""
        if not self.secure:
            return None
        from deploy.local.kafka.tls import CertificateAuthority

        keystore = self.data_dir / "tls" / "broker.pem"
        if not keystore.exists():
            authority = CertificateAuthority.create(self.data_dir / "tls")
            authority.issue(self.data_dir / "tls", "broker", hosts=["127.0.0.1", "localhost"])
        return keystore

    def _prepare(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        config.write_text(_server_properties(self.data_dir, self.port, self.controller_port, node_id=self.node_id,
                                             voters=self.voters, defaults=self.defaults,
                                             internal_port=self.internal_port, keystore=self._keystore()))
        (self.data_dir / "log4j2.properties").write_text(_log4j_properties(self.log_file))
        if not (self.data_dir / "logs" / "meta.properties").exists():
            users = [arg for name, password in self.scram_users.items()
                     for arg in ("--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]")]
            result = subprocess.run(
                self._java("kafka.tools.StorageTool", "format", f"--cluster-id={self.cluster_id}",
                           "--config", str(config), *users),
                capture_output=True, text=True, check=False,
            )
            if result.returncode != 0:
                raise BrokerError(f"formatting the KRaft storage of node {self.node_id} failed:\n"
                                  f"{result.stdout}{result.stderr}")
        return config

    def launch(self) -> None:
        """Start the JVM without waiting for it (a cluster's nodes must all be up before any is ready)."""
        if self.running:
            return
        config = self._prepare()
        with open(self.data_dir / "broker.stdout", "ab") as out:
            self._process = subprocess.Popen(
                self._java("kafka.Kafka", str(config)), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self, timeout: float = DEFAULT_START_TIMEOUT_S) -> Self:
        """Start the broker and block until it serves metadata, or raise BrokerError."""
        if self.running:
            return self
        self.launch()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = DEFAULT_START_TIMEOUT_S) -> None:
        """Block until this node answers metadata requests and lists itself among the brokers."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({**self.client_config(), "log_level": 0})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None, "launch() first"
            if self._process.poll() is not None:
                raise BrokerError(
                    f"Kafka node {self.node_id} exited with code {self._process.returncode}; "
                    f"see {self.log_file} and {self.data_dir / 'broker.stdout'}"
                )
            try:
                if self.node_id in admin.list_topics(timeout=1.0).brokers:
                    return
            except Exception:  # noqa: BLE001 - not ready yet, keep polling until the deadline
                pass
            time.sleep(0.2)
        self.stop()
        raise BrokerError(f"Kafka node {self.node_id} did not become ready within {timeout:.0f}s; see {self.log_file}")

    def request_stop(self) -> None:
        """Send SIGTERM and return at once; :meth:`stop` then waits for the exit."""
        if self.running:
            assert self._process is not None
            self._process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop the broker cleanly (SIGTERM), killing it if it has not exited within ``timeout``."""
        self.request_stop()
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL the broker: no controlled shutdown, no flush (its data stays for a later start)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class LocalKafka(KafkaNode):
    """The single-node dev broker: node 1, its own one-voter quorum, one copy of everything."""

    def __init__(self, data_dir: Path | str, *, port: int | None = None, controller_port: int | None = None,
                 scram_users: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, port=port, controller_port=controller_port, scram_users=scram_users)


class LocalKafkaCluster:
    """``brokers`` combined broker+controller nodes (ids 1..N, all KRaft voters) under ``data_dir/node-<id>``,
    with :data:`CLUSTER_DEFAULTS`; plain text only. Not thread-safe.

        with LocalKafkaCluster(data_dir, brokers=3) as cluster:
            cluster.kill(2)      # SIGKILL
            cluster.start(2)     # back with its data, blocks until it serves
    """

    def __init__(self, data_dir: Path | str, *, brokers: int = 3, heap: str = CLUSTER_NODE_HEAP) -> None:
        if brokers < 1:
            raise BrokerError(f"a cluster needs at least one broker, not {brokers}")
        self.data_dir = Path(data_dir).resolve()
        controller_ports = {node_id: free_port() for node_id in range(1, brokers + 1)}
        voters = ",".join(f"{node_id}@127.0.0.1:{port}" for node_id, port in controller_ports.items())
        cluster_id = _kafka_cluster_id()
        defaults = _cluster_defaults(brokers)
        self.nodes = {
            node_id: KafkaNode(self.data_dir / f"node-{node_id}", node_id=node_id, controller_port=port,
                               voters=voters, cluster_id=cluster_id, defaults=defaults, heap=heap)
            for node_id, port in controller_ports.items()
        }

    @property
    def bootstrap(self) -> str:
        """Every node's client address, comma-separated (clients find the live ones)."""
        return ",".join(node.bootstrap for node in self.nodes.values())

    def kafka_section(self) -> dict[str, str]:
        """provline's ``kafka`` settings for a client of this cluster."""
        return {"bootstrap": self.bootstrap}

    def client_environment(self) -> dict[str, str]:
        return {"PROVLINE_KAFKA__BOOTSTRAP": self.bootstrap}

    def client_config(self) -> dict[str, str]:
        return {"bootstrap.servers": self.bootstrap}

    def node(self, node_id: int) -> KafkaNode:
        if node_id not in self.nodes:
            raise BrokerError(f"no node {node_id} in this cluster; its nodes are {sorted(self.nodes)}")
        return self.nodes[node_id]

    def start(self, node_id: int | None = None, timeout: float = DEFAULT_START_TIMEOUT_S) -> LocalKafkaCluster:
        """Start every node (or only ``node_id``) and block until each serves metadata; BrokerError if not."""
        chosen = list(self.nodes.values()) if node_id is None else [self.node(node_id)]
        for node in chosen:
            node.launch()
        try:
            for node in chosen:
                node.wait_ready(timeout)
        except BrokerError:
            self.stop()
            raise
        return self

    def kill(self, node_id: int) -> None:
        """SIGKILL one node."""
        self.node(node_id).kill()

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop every node cleanly (SIGTERM; SIGKILL after ``timeout``). All at once: a node stopped last,
        alone, would wait for a quorum that is gone before its controlled shutdown gives up."""
        for node in self.nodes.values():
            node.request_stop()
        for node in self.nodes.values():
            node.stop(timeout)

    def leaders(self, topic: str, *, timeout: float = 10.0) -> dict[int, int]:
        """Partition -> leader node id of ``topic`` (-1: no leader right now)."""
        from confluent_kafka.admin import AdminClient

        metadata = AdminClient({**self.client_config(), "log_level": 0}).list_topics(topic, timeout=timeout)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            raise BrokerError(f"topic {topic} is not in the cluster's metadata: {found.error if found else 'absent'}")
        return {partition.id: partition.leader for partition in found.partitions.values()}

    def wait_in_sync(self, topics: list[str], timeout: float = DEFAULT_START_TIMEOUT_S) -> None:
        """Block until every partition of ``topics`` has all its replicas in sync; BrokerError after ``timeout``."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({**self.client_config(), "log_level": 0})
        deadline = time.monotonic() + timeout
        lagging: list[str] = []
        while time.monotonic() < deadline:
            metadata = admin.list_topics(timeout=5.0)
            lagging = [f"{name}[{partition.id}] isr {partition.isrs} of {partition.replicas}"
                       for name in topics for partition in metadata.topics[name].partitions.values()
                       if sorted(partition.isrs) != sorted(partition.replicas)] if all(
                name in metadata.topics for name in topics) else ["(topics not in the metadata yet)"]
            if not lagging:
                return
            time.sleep(0.5)
        raise BrokerError(f"replicas still out of sync after {timeout:.0f}s: {', '.join(lagging[:5])}")

    def __enter__(self) -> LocalKafkaCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _kafka_cluster_id() -> str:
    """A random cluster id in Kafka's format: 16 bytes, URL-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def create_topics(bootstrap: str | dict[str, str], names: list[str], *, partitions: int = 4,
                  timeout: float = 30.0) -> None:
    """Create topics that do not exist yet (one replica: this is the single-node dev broker).

    ``bootstrap``: the broker's address, or a client's librdkafka properties (``LocalKafka.client_config()``).
    """
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap} if isinstance(bootstrap, str) else dict(bootstrap))
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names if name not in existing]
    for name, future in (admin.create_topics(wanted, operation_timeout=timeout) if wanted else {}).items():
        try:
            future.result(timeout)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerError(f"could not create topic {name}: {exc}") from exc
