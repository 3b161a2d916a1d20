"""What the real-server tests do as a client and as an auditor: send requests through a sidecar, then
ask provline (the audit API, the ``provline`` command) what it recorded, polling with deadlines."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from deploy.demo.stack import DEMO_API_TOKEN, REPO, DemoStack
from deploy.local.model_servers import Server, TrainingRun

TRACE_TIMEOUT_S = 30.0
DRIFT_TIMEOUT_S = 45.0
POLL_S = 0.25
CLI_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 10.0

Row = list[float]
LABEL = "target"  # the label column of the data sets train.py writes (it imports scikit-learn, so not from there)


@dataclass(frozen=True)
class Sent:
    """One exchange through a sidecar: its reply and the wall-clock times around it (UTC)."""

    response: httpx.Response
    sent_at: datetime
    answered_at: datetime

    @property
    def prediction_id(self) -> str:
        found = self.response.headers.get("X-Prediction-ID")
        assert found, f"the sidecar's reply has no X-Prediction-ID header: {dict(self.response.headers)}"
        return found

    def json(self) -> Any:
        return self.response.json()


def send(server: Server, method: str, path: str, *, body: Any = None, headers: dict[str, str] | None = None) -> Sent:
    """One request (JSON ``body``) to ``server``; the reply is read whole (decoded when compressed)."""
    sent_at = datetime.now(UTC)
    response = httpx.request(method, f"{server.url}{path}", json=body, headers=headers, timeout=HTTP_TIMEOUT_S)
    return Sent(response, sent_at, datetime.now(UTC))


def predict(server: Server, path: str, body: Any, *, headers: dict[str, str] | None = None) -> Sent:
    """POST ``body`` to ``path``; asserts the model server answered 200."""
    sent = send(server, "POST", path, body=body, headers=headers)
    assert sent.response.status_code == 200, f"POST {path}: {sent.response.status_code} {sent.response.text[:500]}"
    return sent


def v2_request(rows: Sequence[Row], *, request_id: str | None = None, outputs: list[str] | None = None) -> dict:
    """A KServe V2 inference request with the usual single 2-D tensor ``input-0`` of shape [rows, columns]."""
    body: dict[str, Any] = {"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64",
                                        "data": [value for row in rows for value in row]}]}
    if request_id is not None:
        body["id"] = request_id
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return body


def v2_output(reply: dict, name: str = "predict") -> list[list[Any]]:
    """The rows of one output tensor of a V2 reply."""
    [tensor] = [t for t in reply["outputs"] if t["name"] == name]
    width = 1 if len(tensor["shape"]) < 2 else int(tensor["shape"][1])
    return [tensor["data"][i:i + width] for i in range(0, len(tensor["data"]), width)]


def model_inputs(training: TrainingRun, model: str, *, evaluation: bool = False) -> tuple[list[str], list[Row]]:
    """Columns and rows of the features the training job wrote for ``model``: its whole data set
    (without the label), or its evaluation split."""
    path = training.model(model).get("eval_csv" if evaluation else "dataset_csv")
    assert path, f"the training job wrote no data set for {model}; {training.summary()}"
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [[float(value) for value in row] for row in reader]
    keep = [i for i, column in enumerate(header) if column != LABEL]
    return [header[i] for i in keep], [[row[i] for i in keep] for row in rows]


def as_utc(value: Any) -> datetime:
    """A time as the audit answers give it: ISO 8601 text (naive means UTC) or epoch seconds/ms/µs."""
    if isinstance(value, int | float):
        scale = 1e6 if value > 1e14 else 1e3 if value > 1e11 else 1.0
        return datetime.fromtimestamp(value / scale, UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# ---------------------------------------------------------------- asking provline


def _services_tail(stack: DemoStack, lines: int = 15) -> str:
    return "\n".join(f"--- {s.name} ({'running' if s.process and s.process.poll() is None else 'exited'})\n"
                     f"{s.log_tail(lines)}" for s in stack.services)


def trace_of(stack: DemoStack, prediction_id: str) -> dict[str, Any] | None:
    """The stored trace of a prediction through the audit API (its newest revision), or None."""
    response = httpx.get(f"{stack.api_url}/v1/traces/{prediction_id}", headers=stack.api_headers,
                         timeout=HTTP_TIMEOUT_S)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, f"GET /v1/traces/{prediction_id}: {response.status_code} {response.text}"
    return dict(response.json())


def wait_for_trace(stack: DemoStack, prediction_id: str, until: Callable[[dict[str, Any]], bool] | None = None, *,
                   timeout: float = TRACE_TIMEOUT_S) -> dict[str, Any]:
    """The trace of ``prediction_id`` once ``until`` holds for it (default: once there is one).

    When the deadline passes with a trace for which ``until`` never held, that trace is returned for
    the test's own assertions to say what is wrong; with no trace at all, AssertionError with the
    last log lines of every service.
    """
    deadline = time.monotonic() + timeout
    trace = None
    while True:
        trace = trace_of(stack, prediction_id) or trace
        if trace is not None and (until is None or until(trace)):
            return trace
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    assert trace is not None, f"no trace of prediction {prediction_id} within {timeout:.0f} s\n{_services_tail(stack)}"
    return trace


def wait_for_rows(stack: DemoStack, query: str, *, at_least: int = 1,
                  timeout: float = TRACE_TIMEOUT_S) -> list[dict[str, Any]]:
    """The rows of a read-only query once there are ``at_least`` of them (else the last rows seen)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = stack.sql(query)
        if len(rows) >= at_least or time.monotonic() >= deadline:
            return rows
        time.sleep(POLL_S)


def drift_rows(stack: DemoStack, model: str, *, since: datetime | None = None,
               until: datetime | None = None) -> list[dict[str, Any]]:
    """``GET /v1/drift/<model>``: what ``provline drift <model> --json`` prints."""
    params = {name: value.isoformat() for name, value in (("since", since), ("until", until)) if value is not None}
    response = httpx.get(f"{stack.api_url}/v1/drift/{model}", params=params, headers=stack.api_headers,
                         timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 200, f"GET /v1/drift/{model}: {response.status_code} {response.text}"
    return list(response.json()["drift"])


def provline(stack: DemoStack | None, *args: str, columns: int = 200,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The ``provline`` command as a user runs it: audit commands read through ``stack``'s API; ``env``
    adds settings (the Kafka ones of ``provline topics``)."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PROVLINE_")}
    if stack is not None:
        environment.update(PROVLINE_CLIENT__API_URL=stack.api_url, PROVLINE_CLIENT__API_TOKEN=DEMO_API_TOKEN)
    environment.update(COLUMNS=str(columns), **(env or {}))
    return subprocess.run([sys.executable, "-m", "provline", *args], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, cwd=REPO, env=environment, check=False)


def provline_json(stack: DemoStack, *args: str) -> Any:
    """The JSON a ``provline ... --json`` command prints; AssertionError with its output when it fails."""
    done = provline(stack, *args, "--json")
    command = " ".join(("provline", *args, "--json"))
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return json.loads(done.stdout)
