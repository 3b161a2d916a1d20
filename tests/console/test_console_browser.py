"""The web console in a real browser (issue 18, part 3): headless Chromium against ``provline serve`` holding
the demo's data, every process real.

The verified badges and the tampered record come from serve's trace ``chain``. Every node kind and a
record that fails is also tested with a chain given by the test (``answer_with``: the page's fetch of that
route returns it); so is a model overview with several versions and a rollback, which the demo's data does
not have. Everything else runs on what serve answers.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import pytest
from selenium.webdriver.common.by import By

from deploy.demo.stack import MODEL_NAME, MODEL_VERSION, REPO
from tests.console.harness import CLIENT_REQUEST_ID, OTEL_TRACE_ID, Console, DemoData, poll

pytestmark = pytest.mark.e2e


def trace_of(demo: DemoData, prediction_id: str, reader: str = "ann") -> dict[str, Any]:
    reply = demo.get(f"/v1/traces/{prediction_id}", reader)
    assert reply.status_code == 200, reply.text
    return reply.json()


def graph_node_ids(browser: Console) -> set[str]:
    return set(browser.driver.execute_script("return window.provline.graph.nodes().map((n) => n.id())"))


def search(browser: Console, field: str, value: str) -> list[str]:
    browser.open("/console/search")
    browser.find(f"#{field}").send_keys(value)
    browser.find("#search button[type=submit]").click()
    poll("search results", lambda: browser.find("#search-status").text not in ("", "Searching…") or None)
    return [link.text for link in browser.all("#results .prediction-link")]


def test_sign_in_search_by_every_key_and_open_a_prediction(demo: DemoData, browser: Console) -> None:
    browser.sign_in("vic")
    assert browser.find(".who").text.startswith("vic")
    ids = sorted(p.prediction_id for p in demo.predictions) + [demo.tagged]
    chosen = demo.predictions[1].prediction_id
    assert search(browser, "q-prediction-id", chosen) == [chosen]
    assert search(browser, "q-request-id", CLIENT_REQUEST_ID) == [demo.tagged]
    assert search(browser, "q-otel-trace-id", OTEL_TRACE_ID) == [demo.tagged]
    assert sorted(search(browser, "q-model", f"{MODEL_NAME}@{MODEL_VERSION}")) == sorted(ids)
    assert sorted(search(browser, "q-model", MODEL_NAME)) == sorted(ids)
    # a time window after every request finds none of them
    browser.open("/console/search")
    browser.find("#q-model").send_keys(MODEL_NAME)
    browser.driver.execute_script("document.getElementById('q-since').value = '2200-01-01T00:00:00'")
    browser.find("#search button[type=submit]").click()
    poll("an empty search", lambda: browser.find("#search-status").text == "No prediction found." or None)

    search(browser, "q-prediction-id", chosen)
    browser.find("#results .prediction-link").click()
    browser.wait_ready()
    assert urlsplit(browser.driver.current_url).path == f"/console/predictions/{chosen}"
    browser.wait_for("#nodes .node")
    assert f"prediction:{chosen}" in graph_node_ids(browser)


def test_the_prediction_page_draws_the_chain_of_custody_with_a_badge_per_record(
    demo: DemoData, browser: Console,
) -> None:
    chosen = demo.predictions[0].prediction_id
    browser.sign_in("ann")
    browser.open(f"/console/predictions/{chosen}")
    cards = browser.wait_for("#nodes .node")
    nodes = graph_node_ids(browser)
    model = f"model:{MODEL_NAME}@{MODEL_VERSION}"
    assert {f"prediction:{chosen}", model, f"run:{demo.facts.run_id}", f"dataset:{demo.facts.dataset_digest}"} <= nodes
    if demo.facts.commit:
        assert any(node.startswith("commit:") and node.endswith(demo.facts.commit) for node in nodes)
    assert {card.get_attribute("data-node-id") for card in cards} == nodes  # one card per graph node
    badges = {card.get_attribute("data-node-id"): card.find_element(By.CSS_SELECTOR, ".badge").text
              for card in cards}
    model_card = browser.find(f'[data-node-id="{model}"]')
    assert demo.facts.artifact_sha256 in model_card.text  # the node's record
    assert set(badges.values()) == {"verified"}, badges  # every record of an untouched store verifies
    assert {"environment", "evaluation", "deployment"} & {c.get_attribute("data-kind") for c in cards}
    status = browser.find("#trace-status").text
    assert f"{len(nodes)} records in the chain of custody" in status and "not verified" not in status


def test_a_model_node_leads_to_the_model_page_with_its_drift_chart(demo: DemoData, browser: Console) -> None:
    browser.sign_in("vic")
    browser.open(f"/console/predictions/{demo.predictions[0].prediction_id}")
    browser.wait_for("#nodes .node")
    browser.driver.execute_script(  # a click on the graph's model node
        f"window.provline.graph.$id('model:{MODEL_NAME}@{MODEL_VERSION}').emit('tap')")
    poll("the model page", lambda: urlsplit(browser.driver.current_url).path == f"/console/models/{MODEL_NAME}"
         or None)
    browser.wait_ready()
    assert [row.text.split()[0] for row in browser.all("#versions tbody tr")] == [MODEL_VERSION]
    charts = browser.wait_for("#drift .drift-chart")
    features = {chart.get_attribute("data-feature") for chart in charts}
    stored = {row["feature"] for row in demo.get(f"/v1/drift/{MODEL_NAME}").json()["drift"]}
    assert features == stored and "tenure_months" in features
    for chart in charts:
        assert chart.find_elements(By.CSS_SELECTOR, "canvas"), "a drift chart without its canvas"
        legend = chart.text
        assert f"v{MODEL_VERSION}" in legend
        # the threshold is drawn where it applies to the statistic charted (KS, chi-squared: to the p-value)
        on_p_value = chart.get_attribute("data-statistic") in ("ks", "chi_squared")
        assert ("breach threshold" in legend) != on_p_value, legend
    assert any("breach threshold" in chart.text for chart in charts)
    # the overview's other sections: the demo's one deployment, and its predictions as traffic
    [deployed] = [li.text for li in browser.all("#deployments li")]
    assert f"v{MODEL_VERSION}" in deployed and "demo" in deployed
    traffic = browser.find("#traffic-chart")
    assert traffic.find_elements(By.CSS_SELECTOR, "canvas") and f"v{MODEL_VERSION}" in traffic.text


def test_viewers_and_auditors_see_different_things(demo: DemoData, browser: Console) -> None:
    chosen = demo.predictions[0].prediction_id
    browser.sign_in("vic")
    browser.open(f"/console/predictions/{chosen}")
    browser.wait_for("#nodes .node")
    assert not browser.find("#evidence").is_displayed()  # evidence bundles need auditor
    assert browser.all("#raw-events .raw-event") == []  # nor does a viewer get the stored events
    viewer_text = browser.find("#nodes").text

    browser.sign_in("ann")
    browser.open(f"/console/predictions/{chosen}")
    browser.wait_for("#nodes .node")
    evidence = browser.find("#evidence")
    assert evidence.is_displayed() and evidence.get_attribute("href").endswith(f"/v1/evidence/{chosen}?format=json")
    raw = browser.all("#raw-events .raw-event")
    assert {"InferenceRequest", "ModelVersion"} <= {r.find_element(By.TAG_NAME, "summary").text.split()[0]
                                                    for r in raw}
    # the link works with the console's session alone: a same-origin GET of /v1/evidence
    bundle = browser.driver.execute_async_script(
        "const done = arguments[0]; fetch(document.getElementById('evidence').href)"
        ".then((r) => r.json().then((b) => done([r.status, Object.keys(b.files || {})])))")
    assert bundle[0] == 200 and bundle[1], bundle
    auditor_text = browser.find("#nodes").text  # the payload itself only for roles that may see it
    body = base64.b64encode(demo.predictions[0].request_body).decode()
    assert "request_body" in auditor_text.splitlines() and body in auditor_text, auditor_text
    assert "request_body" not in viewer_text.splitlines() and body not in viewer_text, viewer_text


def test_the_lineage_explorer_counts_the_predictions_downstream_of_the_dataset(
    demo: DemoData, browser: Console,
) -> None:
    browser.sign_in("vic")
    browser.open(f"/console/lineage?node=dataset:{demo.facts.dataset_digest}&direction=downstream")
    count = poll("the downstream count", lambda: browser.find("#downstream-count").text or None)
    assert count == f"{len(demo.predictions) + 1} predictions downstream"
    nodes = graph_node_ids(browser)
    assert {f"model:{MODEL_NAME}@{MODEL_VERSION}", f"run:{demo.facts.run_id}"} <= nodes
    assert browser.find("#downstream-hint").is_displayed()  # predictions are counted, not drawn
    # a node of the graph is explored in turn
    browser.driver.execute_script(f"window.provline.graph.$id('run:{demo.facts.run_id}').emit('tap')")
    poll("the run's lineage", lambda: f"run%3A{demo.facts.run_id}" in browser.driver.current_url or None)
    browser.wait_ready()
    poll("the run's downstream count", lambda: browser.find("#downstream-count").text.endswith("downstream") or None)


def test_admins_read_the_access_log_with_every_page_view_and_others_may_not(
    demo: DemoData, browser: Console,
) -> None:
    browser.sign_in("ann")
    browser.open("/console/access-log")
    assert "needs admin" in browser.find("#error").text
    assert not browser.all("nav .admin-only") or not browser.find("nav .admin-only").is_displayed()
    browser.sign_in("root")
    browser.open(f"/console/models/{MODEL_NAME}")
    browser.open("/console/access-log")
    poll("the access log", lambda: browser.all("#access-log tbody tr") or None)
    browser.find("#f-path").send_keys(f"/console/models/{MODEL_NAME}")
    browser.find("#log-filter button[type=submit]").click()
    poll("the filtered log", lambda: browser.find("#log-status").text.split()[0] != "Loading…" or None)
    rows = [row.text for row in browser.all("#access-log tbody tr")]
    assert rows and all(f"/console/models/{MODEL_NAME}" in row for row in rows)
    assert any("root admin GET" in row for row in rows)
    refused = [row for row in demo.get("/v1/access-log?limit=1000").json()["rows"]]
    assert any(row[2] == "ann" and row[5] == "/console/access-log" for row in refused)


def test_no_request_leaves_the_machine(demo: DemoData, browser: Console) -> None:
    browser.sign_in("root")
    chosen = demo.predictions[0].prediction_id
    for path in ("/console/search", f"/console/predictions/{chosen}", f"/console/models/{MODEL_NAME}",
                 f"/console/lineage?node=model:{MODEL_NAME}@{MODEL_VERSION}&direction=upstream",
                 "/console/access-log"):
        browser.open(path)
    browser.wait_for("#access-log tbody tr")
    urls = browser.requested_urls()
    assert any(url.endswith("/console/static/vendor/cytoscape-3.35.0.min.js") for url in urls)
    assert any("/v1/traces/" in url for url in urls)
    foreign = [url for url in urls if urlsplit(url).netloc != urlsplit(demo.base).netloc
               and urlsplit(url).scheme not in ("data", "blob")]
    assert foreign == []
    blocked = [m for m in browser.console_messages() if "Content Security Policy" in m]
    assert blocked == []  # nothing the pages need is refused by their own CSP


# ---------------------------------------------------------------- the contract's shapes, before serve answers them

def answer_with(browser: Console, path_part: str, replacement: dict[str, Any], *, merge: bool) -> None:
    """From the next page on, the answers of requests whose URL contains ``path_part`` carry ``replacement``
    (merged into the real answer, or instead of it): the issue 18 contract's shapes, given by the test."""
    constants = (f"const part = {json.dumps(path_part)}, replacement = {json.dumps(replacement)}, "
                 f"merge = {json.dumps(merge)};")
    script = constants + """
const realFetch = window.fetch.bind(window);
window.fetch = async (input, init) => {
  const response = await realFetch(input, init);
  if (!String(input).includes(part)) return response;
  const body = merge ? Object.assign(await response.json(), replacement) : replacement;
  return new Response(JSON.stringify(body), {status: 200, headers: {"Content-Type": "application/json"}});
};"""
    browser.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": script})


def contract_chain(demo: DemoData, prediction_id: str, *, altered: str) -> dict[str, Any]:
    """A chain of every node kind the contract names, all verified but ``altered``."""
    trace = trace_of(demo, prediction_id)
    model = f"model:{MODEL_NAME}@{MODEL_VERSION}"
    ids = {"prediction": f"prediction:{prediction_id}", "model": model, "run": f"run:{demo.facts.run_id}",
           "environment": f"environment:{demo.facts.run_id}", "dataset": f"dataset:{demo.facts.dataset_digest}",
           "evaluation": "evaluation:ev-1", "approval": "approval:ap-1", "deployment": "deployment:dep-2",
           "previous": "deployment:dep-1"}

    def node(key: str, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        ok = ids[key] != altered
        return {"id": ids[key], "kind": kind, "label": ids[key].split(":", 1)[1][:40], "event_id": f"e-{key}",
                "fields": fields, "verification": {
                    "status": "verified" if ok else "not_verified", "hash_chain": ok, "signature": ok,
                    "anchor": {"status": "pending" if key == "previous" else "anchored", "anchor": "a.json",
                               "created": "2026-05-03T10:00:00+00:00"},
                    "detail": "hash chain and signature checked" if ok
                    else "stored bytes differ from the hash chain"}}
    nodes = [node("prediction", "prediction", {"request_time": trace["request_time"], "features": trace["features"]}),
             node("model", "model", {"artifact_sha256": demo.facts.artifact_sha256}),
             node("run", "run", {"seed": 7}), node("environment", "environment", {"python": "3.11"}),
             node("dataset", "dataset", {"license": "synthetic"}),
             node("evaluation", "evaluation", {"metric": "accuracy", "value": 0.8, "threshold": 0.6, "passed": True}),
             node("approval", "approval", {"actor": "risk", "role": "risk-officer", "rationale": "passes"}),
             node("deployment", "deployment", {"action": "PROMOTE", "in_force": True}),
             node("previous", "deployment", {"action": "DEPLOY", "in_force": False})]
    edges = [("prediction", "model", "served_by"), ("model", "run", "trained_by"),
             ("run", "environment", "environment"), ("run", "dataset", "trained_on"),
             ("model", "evaluation", "evaluated"), ("model", "approval", "approved"),
             ("model", "deployment", "deployed"), ("deployment", "previous", "replaced")]
    return {"nodes": nodes, "edges": [{"from": ids[a], "to": ids[b], "relation": r} for a, b, r in edges]}


def test_a_chain_of_the_contracts_shape_shows_each_records_badge(demo: DemoData, browser: Console) -> None:
    """The console's side of part 1 (verified / not verified per record), with the chain given by the test."""
    chosen = demo.predictions[0].prediction_id
    model = f"model:{MODEL_NAME}@{MODEL_VERSION}"
    chain = contract_chain(demo, chosen, altered=model)
    browser.sign_in("ann")
    answer_with(browser, f"/v1/traces/{chosen}", {"chain": chain}, merge=True)
    browser.open(f"/console/predictions/{chosen}")
    cards = browser.wait_for("#nodes .node")
    assert graph_node_ids(browser) == {n["id"] for n in chain["nodes"]}
    assert browser.driver.execute_script("return window.provline.graph.edges().length") == len(chain["edges"])
    badges = {c.get_attribute("data-node-id"): c.find_element(By.CSS_SELECTOR, ".badge").text for c in cards}
    assert badges.pop(model) == "not verified"
    assert set(badges.values()) == {"verified"}
    assert "stored bytes differ" in browser.find(f'[data-node-id="{model}"]').text
    anchors = {c.get_attribute("data-node-id"): c.find_element(By.CSS_SELECTOR, ".badge.anchor").text for c in cards}
    assert anchors.pop("deployment:dep-1") == "anchor pending"
    assert set(anchors.values()) == {"anchored"}
    assert "1 not verified" in browser.find("#trace-status").text
    assert browser.driver.execute_script(f"return window.provline.graph.$id('{model}').hasClass('not_verified')")


def test_a_model_overview_of_the_contracts_shape_is_charted(demo: DemoData, browser: Console) -> None:
    """The console's side of the model overview (evaluations, approvals, timeline, traffic), given by the test."""
    overview = {
        "model_name": MODEL_NAME,
        "versions": [{"version": v, "artifact_sha256": "a" * 64, "run_id": f"run-{v}",
                      "registered_at": f"2026-05-0{v}T09:00:00Z", "event_id": f"mv-{v}"} for v in ("1", "2")],
        "evaluations": [{"version": "2", "metric": "accuracy", "value": 0.81, "threshold": 0.7, "passed": True,
                         "event_time": "2026-05-02T10:00:00Z", "event_id": "ev-2"}],
        "approvals": [{"version": "2", "actor": "rita", "role": "risk-officer", "decision": "approved",
                       "rationale": "passes", "event_time": "2026-05-02T11:00:00Z", "event_id": "ap-2"}],
        "deployments": [
            {"event_time": "2026-05-01T12:00:00Z", "version": "1", "action": "DEPLOY", "environment": "prod",
             "endpoint": "/predict", "previous_version": None, "event_id": "d-1"},
            {"event_time": "2026-05-02T12:00:00Z", "version": "2", "action": "PROMOTE", "environment": "prod",
             "endpoint": "/predict", "previous_version": "1", "event_id": "d-2"},
            {"event_time": "2026-05-03T12:00:00Z", "version": "1", "action": "ROLLBACK", "environment": "prod",
             "endpoint": "/predict", "previous_version": "2", "event_id": "d-3"}],
        "traffic": [{"window_start": f"2026-05-0{d}T00:00:00Z", "version": v, "predictions": n}
                    for d, v, n in ((1, "1", 40), (2, "1", 10), (2, "2", 30), (3, "1", 35))],
        "drift": [{"feature": "tenure_months", "window_start": f"2026-05-0{d}T00:00:00Z", "version": "1",
                   "statistic": "psi", "value": value, "threshold": 0.2, "breached": value > 0.2}
                  for d, value in ((1, 0.05), (2, 0.12), (3, 0.31))],
    }
    browser.sign_in("vic")
    answer_with(browser, f"/v1/models/{MODEL_NAME}/overview", overview, merge=False)
    browser.open(f"/console/models/{MODEL_NAME}")
    browser.wait_for("#drift .drift-chart")
    assert [r.text.split()[0] for r in browser.all("#versions tbody tr")] == ["1", "2"]
    assert "passed" in browser.find("#evaluations tbody").text
    assert "rita" in browser.find("#approvals tbody").text
    timeline = [li.text for li in browser.all("#deployments li")]
    assert len(timeline) == 3 and "ROLLBACK v1" in timeline[2] and "replacing v2" in timeline[2]
    assert browser.all("#deployments li.rollback")
    traffic = browser.find("#traffic-chart")
    assert traffic.find_elements(By.CSS_SELECTOR, "canvas") and "v1" in traffic.text and "v2" in traffic.text
    [drift] = browser.all("#drift .drift-chart")
    assert drift.get_attribute("data-breaches") == "1" and "breach threshold" in drift.text


def tamper_model_version(demo: DemoData) -> str:
    """Alter one byte of the stored ModelVersion, as someone who can write to ClickHouse would (the store is
    serve's: serve is stopped, the store altered by another process, serve started again); its event id."""
    [serve] = [service for service in demo.stack.services if service.name == "serve"]
    serve.stop()
    code = f"""
from provline.sink.store import open_store
client = open_store("chdb://{demo.stack.workdir / 'clickhouse'}")
event_id, raw = client.query("SELECT event_id, raw FROM model_versions LIMIT 1",
                             column_formats={{"raw": "bytes"}}).result_rows[0]
raw = bytearray(raw)
at = raw.index(b"{demo.facts.artifact_sha256[:8]}")
raw[at] = ord("0") if raw[at] != ord("0") else ord("1")
client.command("ALTER TABLE model_versions UPDATE raw = unhex({{hex:String}}) WHERE event_id = {{id:String}}",
               parameters={{"hex": raw.hex(), "id": event_id}}, settings={{"mutations_sync": 2}})
client.close()
print(event_id)
"""
    altered = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120, capture_output=True,
                             text=True).stdout.split()[-1]
    serve.start()
    serve.wait_healthy()
    return altered


def test_a_tampered_record_shows_not_verified(demo: DemoData, browser: Console) -> None:
    """Last in the module: it alters the store the tests before it read."""
    altered = tamper_model_version(demo)
    findings = demo.get("/v1/verify", "ann").json()["findings"]
    assert ("altered", altered) in {(f["problem"], f["event_id"]) for f in findings}, findings
    chosen = demo.predictions[0].prediction_id
    browser.sign_in("ann")
    browser.open(f"/console/predictions/{chosen}")
    model = browser.wait_for(f'[data-node-id="model:{MODEL_NAME}@{MODEL_VERSION}"]')[0]
    assert model.find_element(By.CSS_SELECTOR, ".badge").text == "not verified"
    assert "not verified" in browser.find("#trace-status").text
    others = [card.find_element(By.CSS_SELECTOR, ".badge").text for card in browser.all("#nodes .node")
              if card.get_attribute("data-kind") == "dataset"]
    assert others and set(others) == {"verified"}
