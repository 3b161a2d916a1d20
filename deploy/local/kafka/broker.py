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

Command line (foreground until Ctrl-C / SIGTERM):

    python -m deploy.local.kafka --data-dir /tmp/kafka [--port 9092] [--controller-port 9093]
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

HERE = Path(__file__).resolve().parent
LIB_DIR = HERE / "target" / "lib"
DEFAULT_START_TIMEOUT_S = 90.0
DEFAULT_STOP_TIMEOUT_S = 30.0
BROKER_HEAP = "-Xmx768m"


class BrokerError(RuntimeError):
    """The local broker could not be prepared, started or stopped."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def _server_properties(data_dir: Path, port: int, controller_port: int, *, internal_port: int | None = None,
                       keystore: Path | None = None) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        *_listener_properties(port, controller_port, internal_port=internal_port, keystore=keystore),
        "controller.listener.names=CONTROLLER",
        f"log.dirs={data_dir / 'logs'}",
        "num.partitions=4",
        "auto.create.topics.enable=true",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=8",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
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


class LocalKafka:
    """One broker process; not thread-safe. Ports are chosen once and kept across restarts."""

    def __init__(self, data_dir: Path | str, *, port: int | None = None, controller_port: int | None = None,
                 scram_users: dict[str, str] | None = None) -> None:
        """``port`` (clients) and ``controller_port`` (KRaft): None or 0, any free port."""
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        if self.controller_port == self.port:
            raise BrokerError(f"the client and controller ports are both {self.port}; give them different ports")
        self.scram_users = dict(scram_users or {})
        self.internal_port = free_port() if self.scram_users else None
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

    def _java(self, main_class: str, *args: str) -> list[str]:
        classpath = os.pathsep.join(str(jar) for jar in ensure_artifacts())
        return [
            "java", BROKER_HEAP, "-XX:+UseG1GC", "-Djava.awt.headless=true",
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
        config.write_text(_server_properties(self.data_dir, self.port, self.controller_port,
                                             internal_port=self.internal_port, keystore=self._keystore()))
        (self.data_dir / "log4j2.properties").write_text(_log4j_properties(self.log_file))
        if not (self.data_dir / "logs" / "meta.properties").exists():
            cluster_id = _kafka_cluster_id()
            users = [arg for name, password in self.scram_users.items()
                     for arg in ("--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]")]
            result = subprocess.run(
                self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "--config", str(config),
                           *users),
                capture_output=True, text=True, check=False,
            )
            if result.returncode != 0:
                raise BrokerError(f"formatting the KRaft storage failed:\n{result.stdout}{result.stderr}")
        return config

    def start(self, timeout: float = DEFAULT_START_TIMEOUT_S) -> LocalKafka:
        """Start the broker and block until it serves metadata, or raise BrokerError."""
        if self._process is not None and self._process.poll() is None:
            return self
        config = self._prepare()
        with open(self.data_dir / "broker.stdout", "ab") as out:
            self._process = subprocess.Popen(
                self._java("kafka.Kafka", str(config)), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({**self.client_config(), "log_level": 0})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise BrokerError(
                    f"the Kafka broker exited with code {self._process.returncode}; "
                    f"see {self.log_file} and {self.data_dir / 'broker.stdout'}"
                )
            try:
                metadata = admin.list_topics(timeout=1.0)
                if metadata.brokers:
                    return
            except Exception:  # noqa: BLE001 - not ready yet, keep polling until the deadline
                pass
            time.sleep(0.2)
        self.stop()
        raise BrokerError(f"the Kafka broker did not become ready within {timeout:.0f}s; see {self.log_file}")

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop the broker cleanly (SIGTERM), killing it if it has not exited within ``timeout``."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> LocalKafka:
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
