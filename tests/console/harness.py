"""The console's browser tests and screenshots: the demo's stack with readers of every role, and headless Chromium.

The data is the demo's (deploy/demo/stack.py): a trained, registered and deployed churn model and
predictions sent through the sidecar, one of them with a client request id and a W3C traceparent;
the processors close drift windows within seconds, so the model page has drift to chart. Chromium
and its chromedriver are Debian's (``make browser-tools``), driven by Selenium.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from deploy.demo.stack import ENDPOINT, DemoStack, Prediction, TrainingFacts

CHROMIUM = os.environ.get("PROVLINE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PROVLINE_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
READERS = {"vic": ("viewer-token-for-console-tests", "viewer"),
           "ann": ("auditor-token-for-console-tests", "auditor"),
           "root": ("admin-token-for-console-tests-x", "admin")}
CUSTOMERS = [
    {"tenure_months": 3, "monthly_charges": 95.5, "support_calls": 4},
    {"tenure_months": 48, "monthly_charges": 40.0, "support_calls": 0},
    {"tenure_months": 12, "monthly_charges": 70.25, "support_calls": 2},
    {"tenure_months": 30, "monthly_charges": 55.0, "support_calls": 1},
]
CLIENT_REQUEST_ID = "console-test-request-1"
OTEL_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{OTEL_TRACE_ID}-00f067aa0ba902b7-01"
DRIFT_ENV = {"PROVLINE_DRIFT__WINDOW_S": "2", "PROVLINE_DRIFT__LATENESS_S": "1", "PROVLINE_DRIFT__MIN_SAMPLES": "1"}
WAIT_S = 90.0
T = TypeVar("T")


def poll(what: str, probe: Callable[[], T | None], timeout: float = WAIT_S, every: float = 0.3,
         explain: Callable[[], str] | None = None) -> T:
    """``probe()`` until it returns something other than None or False, or fail naming ``what`` (and
    what ``explain()`` says of the state then)."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout:.0f} s" + (f"\n{explain()}" if explain else ""))
        time.sleep(every)


@dataclass
class DemoData:
    stack: DemoStack
    facts: TrainingFacts
    predictions: list[Prediction]
    tagged: str  # the prediction sent with CLIENT_REQUEST_ID and TRACEPARENT

    @property
    def base(self) -> str:
        return self.stack.api_url

    def get(self, path: str, reader: str = "root") -> httpx.Response:
        return httpx.get(f"{self.base}{path}", headers={"Authorization": f"Bearer {READERS[reader][0]}"},
                         timeout=30.0)


def send_tagged(stack: DemoStack, customer: dict[str, Any]) -> str:
    reply = httpx.post(f"{stack.sidecar_url}{ENDPOINT}", content=json.dumps(customer).encode(), timeout=10.0,
                       headers={"Content-Type": "application/json", "X-Request-ID": CLIENT_REQUEST_ID,
                                "traceparent": TRACEPARENT})
    assert reply.status_code == 200, reply.text
    return reply.headers["X-Prediction-ID"]


@contextmanager
def demo_data(workdir: Path, *, kafka_bootstrap: str | None = None, prefix: str | None = None) -> Iterator[DemoData]:
    """The demo's stack with its data stored and drift computed; everything stopped on exit. Blocks for minutes."""
    stack = DemoStack(workdir, kafka_bootstrap=kafka_bootstrap)
    if prefix is not None:
        stack.topics = type(stack.topics)(prefix)
    with stack:
        stack.start_broker()
        stack.start_platform(processors_env=DRIFT_ENV, api_tokens={
            name: {"token": token, "role": role} for name, (token, role) in READERS.items()})
        facts = stack.train()
        stack.start_serving(facts.model_path)
        predictions = stack.predict(CUSTOMERS)
        tagged = send_tagged(stack, CUSTOMERS[0])
        for prediction_id in [p.prediction_id for p in predictions] + [tagged]:
            stack.wait_for_trace(prediction_id)
        data = DemoData(stack, facts, predictions, tagged)
        # drift windows close on the processors' clock, within seconds (DRIFT_ENV)
        poll("drift metrics of churn", lambda: data.get("/v1/drift/churn").json()["drift"] or None,
             explain=lambda: drift_state(data))
        yield data


def drift_state(data: DemoData) -> str:
    """What the traces and the processors say when no drift came: for a failure message."""
    traces = [data.get(f"/v1/traces/{p.prediction_id}").json() for p in data.predictions]
    counters = [line for line in httpx.get(f"http://127.0.0.1:{data.stack.processors_metrics_port}/metrics",
                                           timeout=5.0).text.splitlines()
                if line.startswith(("provline_processors_drift", "provline_processors_partial",
                                    "provline_processors_traces")) and "_created" not in line]
    processors = next(s for s in data.stack.services if s.name == "processors")
    return "\n".join([f"traces (complete, missing): {[(t.get('complete'), t.get('missing')) for t in traces]}",
                      *counters, "--- processors log", processors.log_tail(40)])


def chromium(*, log_performance: bool = True) -> webdriver.Chrome:
    """Debian's headless Chromium through its chromedriver, with the performance (network) log on."""
    for program in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(program):
            raise RuntimeError(f"{program} not found; run `make browser-tools` (Debian's chromium and "
                               "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000", "--no-first-run", "--disable-extensions",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-default-apps", "--metrics-recording-only", "--disable-domain-reliability"):
        options.add_argument(argument)
    if log_performance:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = DriverService(executable_path=CHROMEDRIVER, log_output=subprocess.DEVNULL)
    return webdriver.Chrome(options=options, service=service)


class Console:
    """A reader's browser on the console: sign in, open pages, wait for them to have rendered."""

    def __init__(self, driver: webdriver.Chrome, base: str) -> None:
        self.driver = driver
        self.base = base

    def open(self, path: str) -> None:
        self.driver.get(f"{self.base}{path}")
        self.wait_ready()

    def wait_ready(self) -> None:
        poll("the page's script to finish", lambda: self.driver.execute_script(
            "return document.readyState === 'complete' && document.body.dataset.ready === 'true'"), timeout=30)

    def sign_in(self, reader: str) -> None:
        self.driver.delete_all_cookies()
        self.driver.get(f"{self.base}/console/sign-in")
        self.find("#token").send_keys(READERS[reader][0])
        self.find("#sign-in button[type=submit]").click()
        try:
            poll("signing in", lambda: self.driver.current_url.endswith("/console/search") or None, timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: at {self.driver.current_url}, the page says "
                                 f"{self.find('main').text!r}") from None
        self.wait_ready()

    def find(self, selector: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def wait_for(self, selector: str, timeout: float = 30) -> list[WebElement]:
        return poll(f"an element {selector}", lambda: self.all(selector) or None, timeout=timeout)

    def requested_urls(self) -> list[str]:
        """Every URL the browser asked for since the last call, from Chromium's performance (DevTools) log."""
        urls = []
        try:
            entries = self.driver.get_log("performance")
        except WebDriverException as exc:
            raise AssertionError(f"Chromium gave no performance log: {exc}") from exc
        for entry in entries:
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls

    def console_messages(self) -> list[str]:
        return [entry["message"] for entry in self.driver.get_log("browser")]

