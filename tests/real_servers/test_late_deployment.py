"""Finding 10: a trace is complete only with its deployment; a deployment that reaches the processors
after the trace went out completes it (a new revision of the trace).

``iris-canary`` is the iris model served under a name of its own, registered here as the version
MLServer reports (``v1``), so its lineage is known at once. Its Deployment is recorded before the
request, by a job that cannot reach Kafka: the event waits in the job's spool, and the next process
using that spool sends it once the trace is out, as a backlog reaches the processors after an outage.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local.kafka.broker import free_port
from provline.producers import JobSettings, Lineage
from tests.real_servers.audit import model_inputs, predict, v2_request, wait_for_rows, wait_for_trace
from tests.real_servers.conftest import CANARY, RealServers

pytestmark = pytest.mark.real_servers
ENDPOINT = f"/v2/models/{CANARY}/infer"


def test_a_trace_is_complete_only_with_its_deployment(servers: RealServers, tmp_path: Path) -> None:
    stack, training = servers.stack, servers.training
    topics, spool = {"prefix": stack.topics.prefix}, {"spool_dir": tmp_path / "spool"}
    online = JobSettings(kafka=stack.kafka_section("job"), topics=topics, emitter=spool)
    with Lineage(settings=online, producer_name="canary-release") as lineage:
        with lineage.run("register-canary", stage="registration") as run:
            run.use_dataset(training.model("iris")["dataset_csv"], name="iris")
            run.register_model(training.mlserver_repository / "iris" / "model.joblib", name=CANARY, version="v1",
                               framework="scikit-learn")
    assert wait_for_rows(stack, f"SELECT event_id FROM model_versions WHERE model_name = '{CANARY}'"), \
        "the canary's ModelVersion never reached the store"

    offline = JobSettings(kafka={"bootstrap": f"127.0.0.1:{free_port()}"}, topics=topics, emitter=spool)
    lineage = Lineage(settings=offline, producer_name="canary-release")
    deployment = lineage.deploy(CANARY, "v1", endpoint=ENDPOINT, environment="local", reason="canary")
    assert lineage.close(timeout=2.0) is False  # no broker there: the Deployment waits in the spool

    _, rows = model_inputs(training, "iris")
    sent = predict(servers.mlserver_sidecar, ENDPOINT, v2_request(rows[:1]))
    first = wait_for_trace(stack, sent.prediction_id)
    assert first["complete"] is False and not first.get("deployment_event_id"), \
        f"a trace without a deployment is marked complete: {first}"

    assert Lineage(settings=online, producer_name="canary-release").close(timeout=30.0), \
        "the spooled Deployment was not delivered"
    revised = wait_for_trace(stack, sent.prediction_id, until=lambda t: t.get("complete") is True)
    assert revised["complete"] is True, f"the Deployment that came late did not complete the trace: {revised}"
    assert revised["deployment_event_id"] == deployment["event_id"]
    assert revised["missing"] is None
    assert revised["trace_event_id"] != first["trace_event_id"]  # a new revision; the first one is kept
