"""Every service through a SASL_SSL cluster (SCRAM-SHA-512 over TLS), as production clusters run.

The broker's only client listener is SASL_SSL; each service authenticates as a user of its own with
nothing but PROVLINE_KAFKA__ settings: the training job (lineage), the sidecar (inference events),
the processors (Faust: join), and ``provline serve`` (sink and audit API).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.demo.stack import DemoStack
from deploy.local.kafka import LocalKafka
from provline.producers import JobSettings, Lineage
from provline.schemas import Topics

pytestmark = pytest.mark.integration

SERVICES = ("job", "serve", "processors", "sidecar")
CUSTOMER = {"tenure_months": 5, "monthly_charges": 80.0, "support_calls": 3}


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    users = {name: f"{name}-{uuid.uuid4().hex[:12]}" for name in SERVICES}
    broker = LocalKafka(tmp_path_factory.mktemp("secure-kafka"), scram_users=users)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_every_service_records_and_traces_through_a_sasl_ssl_cluster(secure_kafka: LocalKafka, tmp_path: Path) -> None:
    with DemoStack(tmp_path, broker=secure_kafka, topics=Topics(f"secure-{uuid.uuid4().hex[:8]}")) as stack:
        stack.start_broker()
        stack.start_platform()
        facts = stack.train(rows=300)
        stack.start_serving(facts.model_path)
        [prediction] = stack.predict([CUSTOMER])
        assert prediction.status == 200
        trace = stack.wait_for_trace(prediction.prediction_id)
    assert trace["complete"] is True, trace
    assert (trace["model_version"], trace["training_run_id"]) == ("1", facts.run_id)
    assert trace["dataset_digests"] == [facts.dataset_digest]
    assert trace["artifact_sha256"] == facts.artifact_sha256


def provline(command: str, environment: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PROVLINE_STORE__URL": f"chdb://{tmp_path / 'store'}",
           "PROVLINE_PROCESSORS__DATA_DIR": str(tmp_path / "processors"), "PROVLINE_API__PORT": "0",
           "PROVLINE_PROCESSORS__METRICS_PORT": "0", **environment}
    return subprocess.run([sys.executable, "-m", "provline", command], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)


@pytest.mark.parametrize("command", ["serve", "processors"])
def test_a_wrong_password_stops_a_service_at_once_naming_the_settings(
    secure_kafka: LocalKafka, tmp_path: Path, command: str
) -> None:
    finished = provline(command, secure_kafka.client_environment(command, password="not-the-password"), tmp_path)
    assert finished.returncode == 2, finished.stdout + finished.stderr
    said = " ".join((finished.stdout + finished.stderr).split())
    assert f"Kafka refused the credentials of user '{command}' (SCRAM-SHA-512)" in said
    assert "check PROVLINE_KAFKA__SASL_USERNAME and PROVLINE_KAFKA__SASL_PASSWORD" in said


def test_an_untrusted_broker_certificate_stops_a_service_naming_the_ca_setting(
    secure_kafka: LocalKafka, tmp_path: Path
) -> None:
    environment = {**secure_kafka.client_environment("serve"),
                   "PROVLINE_KAFKA__SSL_CA_FILE": "/etc/ssl/certs/ca-certificates.crt"}
    finished = provline("serve", environment, tmp_path)
    assert finished.returncode == 2
    said = " ".join((finished.stdout + finished.stderr).split())
    assert "the TLS handshake with Kafka failed" in said and "PROVLINE_KAFKA__SSL_CA_FILE" in said


def test_a_job_with_a_wrong_password_keeps_running_says_why_once_and_keeps_its_events(
    secure_kafka: LocalKafka, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = JobSettings(kafka=secure_kafka.kafka_section("job", password="wrong"),
                           emitter={"spool_dir": tmp_path / "spool"})
    with caplog.at_level(logging.ERROR, logger="provline.emitter"):
        lineage = Lineage(settings=settings, producer_name="locked-out")
        with lineage.run("train"):  # the job itself is never failed by provline
            pass
        assert lineage.close(timeout=5) is False  # nothing delivered: it waits in the spool
    refusals = [r for r in caplog.records if "Kafka refused provline's credentials" in r.getMessage()]
    assert len(refusals) == 1 and "PROVLINE_KAFKA__SASL_PASSWORD" in refusals[0].getMessage()
    assert any((tmp_path / "spool").glob("segment-*.log"))
