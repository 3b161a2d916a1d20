// provline console: each page reads the audit API's JSON (same origin, session cookie) and renders it.
// Plain browser JavaScript, no build step; cytoscape.js draws graphs, uPlot draws charts.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const subject = body.dataset.subject;
  const role = body.dataset.role;
  const mayReadPayloads = role === "auditor" || role === "admin";
  const MAX_TRACES = 100;

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  class ApiError extends Error {
    constructor(status, detail) { super(detail); this.status = status; this.detail = detail; }
  }

  async function api(path) {
    const response = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
    let answer = null;
    try { answer = await response.json(); } catch (_) { answer = null; }
    if (!response.ok) {
      const detail = answer && typeof answer.detail === "string" ? answer.detail : response.statusText;
      throw new ApiError(response.status, detail);
    }
    return answer;
  }

  function say(id, text, isError) {
    const node = document.getElementById(id);
    if (node) { node.textContent = text; node.classList.toggle("failed", Boolean(isError)); }
  }

  function short(value, n) { const text = String(value); return text.length > n ? text.slice(0, n - 1) + "…" : text; }
  function consoleUrl(path, params) {
    const query = params ? "?" + new URLSearchParams(params).toString() : "";
    return "/console/" + path + query;
  }
  function predictionUrl(id) { return consoleUrl("predictions/" + encodeURIComponent(id)); }
  function modelUrl(name) { return consoleUrl("models/" + encodeURIComponent(name)); }
  function lineageUrl(node, direction) { return consoleUrl("lineage", { node: node, direction: direction || "upstream" }); }
  function seconds(iso) { return Date.parse(iso.endsWith("Z") || /[+-]\d\d:\d\d$/.test(iso) ? iso : iso + "Z") / 1000; }

  function fieldList(fields) {
    const list = el("dl", { class: "fields" });
    for (const [name, value] of Object.entries(fields || {})) {
      if (value === null || value === undefined) continue;
      const text = typeof value === "object" ? JSON.stringify(value) : String(value);
      list.append(el("dt", { text: name }), el("dd", { text: short(text, 600) }));
    }
    return list;
  }

  function table(id, columns, rows) {
    const node = document.getElementById(id);
    const head = node.tHead || node.createTHead();
    head.replaceChildren(el("tr", {}, columns.map((c) => el("th", { text: c }))));
    const tbody = node.tBodies[0];
    tbody.replaceChildren(...rows.map((row) => el("tr", {}, row.map((cell) =>
      el("td", {}, cell instanceof Node ? cell : cell === null || cell === undefined ? "" : String(cell))))));
    if (!rows.length) tbody.append(el("tr", { class: "none" }, el("td", { colspan: columns.length, text: "None recorded." })));
    return node;
  }

  // ------------------------------------------------------------------ graphs (cytoscape.js)

  const GRAPH_STYLE = [
    { selector: "node", style: { label: "data(label)", "font-size": 11, "text-wrap": "wrap", "text-max-width": 140,
      "text-valign": "bottom", "text-margin-y": 4, "background-color": "#6b7a8f", width: 22, height: 22 } },
    { selector: "node.verified", style: { "background-color": "#2e7d32" } },
    { selector: "node.not_verified", style: { "background-color": "#c62828", shape: "diamond", width: 28, height: 28 } },
    { selector: "node.unchecked", style: { "background-color": "#9e9e9e" } },
    { selector: "node.focus", style: { "border-width": 3, "border-color": "#1a237e" } },
    { selector: "edge", style: { width: 1.5, "line-color": "#b0bec5", "target-arrow-color": "#b0bec5",
      "target-arrow-shape": "triangle", "curve-style": "bezier", label: "data(relation)", "font-size": 9,
      color: "#607d8b", "text-rotation": "autorotate" } },
  ];

  function drawGraph(container, nodes, edges, root, onTap) {
    const known = new Set(nodes.map((n) => n.id));
    const elements = nodes.map((n) => ({
      data: { id: n.id, label: short(n.label || n.id, nodes.length > 6 ? 16 : 40), kind: n.kind },
      classes: [(n.verification && n.verification.status) || "", n.id === root ? "focus" : ""].join(" "),
    })).concat(edges.filter((e) => known.has(e.from) && known.has(e.to)).map((e, i) => ({
      data: { id: "e" + i, source: e.from, target: e.to, relation: e.relation },
    })));
    const graph = cytoscape({
      container: container, elements: elements, style: GRAPH_STYLE, wheelSensitivity: 0.3,
      layout: { name: "breadthfirst", directed: true, roots: known.has(root) ? [root] : undefined, spacingFactor: 1.1 },
    });
    graph.on("tap", "node", (event) => onTap(event.target.id(), event.target.data("kind")));
    window.provline = Object.assign(window.provline || {}, { graph: graph });
    container.dataset.nodes = String(nodes.length);
    return graph;
  }

  // ------------------------------------------------------------------ search

  async function tracesOf(ids) {
    const found = await Promise.all(ids.slice(0, MAX_TRACES).map((id) => api("/v1/traces/" + encodeURIComponent(id))
      .catch((error) => ({ prediction_id: id, missing_trace: error.detail }))));
    return found;
  }

  // datetime-local gives no zone: the console reads and writes times in UTC, as the answers give them
  function utc(local) { return local && !/(Z|[+-]\d\d:\d\d)$/.test(local) ? local + "Z" : local; }

  async function modelPredictions(q) {
    const params = { model: q.model.trim(), limit: String(MAX_TRACES) };
    if (q.since) params.since = utc(q.since);
    if (q.until) params.until = utc(q.until);
    return api("/v1/predictions?" + new URLSearchParams(params));
  }

  async function search(form) {
    const q = Object.fromEntries(new FormData(form).entries());
    say("search-status", "Searching…");
    let ids, truncated = false;
    if (q.prediction_id) ids = [q.prediction_id.trim()];
    else if (q.request_id) ids = (await api("/v1/predictions?" + new URLSearchParams({ request_id: q.request_id.trim() }))).prediction_ids;
    else if (q.otel_trace_id) ids = (await api("/v1/predictions?" + new URLSearchParams({ otel_trace_id: q.otel_trace_id.trim() }))).prediction_ids;
    else if (q.model) ({ prediction_ids: ids, truncated } = await modelPredictions(q));
    else { say("search-status", "Give a prediction id, a request id, a trace id or a model.", true); return; }
    const traces = await tracesOf(ids);
    const results = document.getElementById("results");
    table("results", ["Prediction", "Model", "Request time", "Status"], traces.map((t) => [
      el("a", { href: predictionUrl(t.prediction_id), class: "prediction-link", text: t.prediction_id }),
      t.missing_trace ? "" : (t.model_name || "?") + "@" + (t.model_version || "?"),
      t.request_time || "", t.missing_trace ? t.missing_trace : t.status,
    ]));
    results.hidden = traces.length === 0;
    const more = truncated ? ` (the newest ${ids.length}: narrow the time window for older ones)`
      : ids.length > MAX_TRACES ? ` (the first ${MAX_TRACES} of ${ids.length} shown)` : "";
    say("search-status", traces.length ? `${traces.length} prediction${traces.length > 1 ? "s" : ""}${more}` : "No prediction found.");
  }

  // ------------------------------------------------------------------ the prediction page

  // Today's trace answer as a chain (no verification), for a serve whose answer has no "chain" yet.
  function flatChain(t) {
    const unchecked = { status: "unchecked", hash_chain: null, signature: null, anchor: null,
      detail: "this serve's trace answer carries no verification status" };
    const nodes = [], edges = [];
    const add = (id, kind, label, eventId, fields) => nodes.push({ id, kind, label, event_id: eventId || null, fields, verification: unchecked });
    const prediction = "prediction:" + t.prediction_id;
    add(prediction, "prediction", t.prediction_id, t.request_event_id || t.sources.request, {
      request_time: t.request_time, request_sha256: t.request_sha256, request_body_sha256: t.request_body_sha256,
      response_sha256: t.response_sha256, features: t.features, outputs: t.outputs, status: t.status, endpoint: t.endpoint });
    if (t.model_name) {
      const model = "model:" + t.model_name + "@" + t.model_version;
      add(model, "model", t.model_name + "@" + t.model_version, t.sources.model_version,
        { artifact_uri: t.artifact_uri, artifact_sha256: t.artifact_sha256 });
      edges.push({ from: prediction, to: model, relation: "served_by" });
      if (t.training_run_id) {
        const run = "run:" + t.training_run_id;
        add(run, "run", t.training_run_id, t.sources.run, { run_id: t.training_run_id });
        edges.push({ from: model, to: run, relation: "trained_by" });
        if (t.code_commit) {
          const commit = "commit:" + (t.code_repo || "") + "@" + t.code_commit;
          add(commit, "commit", short(t.code_commit, 12), null, { repo: t.code_repo, commit: t.code_commit });
          edges.push({ from: run, to: commit, relation: "code" });
        }
        for (const digest of t.dataset_digests || []) {
          add("dataset:" + digest, "dataset", short(digest, 20), null, { digest });
          edges.push({ from: run, to: "dataset:" + digest, relation: "trained_on" });
        }
      }
    }
    if (t.feedback_event_id) {
      add("ground_truth:" + t.feedback_event_id, "ground_truth", "label " + t.label, t.feedback_event_id,
        { label: t.label, outcome: t.outcome, source: t.feedback_source, time: t.feedback_time });
      edges.push({ from: prediction, to: "ground_truth:" + t.feedback_event_id, relation: "labelled" });
    }
    return { nodes, edges };
  }

  const BADGE_TEXT = { verified: "verified", not_verified: "not verified", unchecked: "unchecked" };
  // a record's anchor status (sink.chain.anchored), drawn with the badge style it resembles
  const ANCHOR_BADGE = { anchored: ["anchored", "verified"], pending: ["anchor pending", "unchecked"],
    unanchored: ["not anchored", "unchecked"], head_missing: ["anchored head gone", "not_verified"] };

  function modelName(node) {
    const id = node.id.slice("model:".length);
    return (node.fields && node.fields.model_name) || id.slice(0, id.lastIndexOf("@"));
  }

  function nodeCard(node) {
    const v = node.verification || { status: "unchecked" };
    const links = [];
    if (node.kind === "model") links.push(el("a", { href: modelUrl(modelName(node)), class: "model-link", text: "model page" }));
    if (["model", "run", "dataset", "feature_set"].includes(node.kind)) {
      links.push(el("a", { href: lineageUrl(node.id, "downstream"), text: "downstream" }),
        el("a", { href: lineageUrl(node.id, "upstream"), text: "upstream" }));
    }
    return el("article", { class: "node " + v.status, id: "node-" + node.id, "data-node-id": node.id, "data-kind": node.kind },
      el("header", {},
        el("span", { class: "kind", text: node.kind.replace("_", " ") }),
        el("h3", { text: node.label || node.id }),
        el("span", { class: "badge " + v.status, "data-status": v.status, text: BADGE_TEXT[v.status] || v.status }),
        v.anchor ? el("span", { class: "badge anchor " + (ANCHOR_BADGE[v.anchor.status] || ["", "unchecked"])[1],
          "data-anchor": v.anchor.status, text: (ANCHOR_BADGE[v.anchor.status] || [v.anchor.status])[0] }) : null),
      v.detail ? el("p", { class: "detail", text: v.detail }) : null,
      el("p", { class: "event-id" }, "event ", el("code", { text: node.event_id || "—" })),
      fieldList(node.fields),
      links.length ? el("p", { class: "links" }, links) : null);
  }

  async function predictionPage() {
    const id = subject;
    const evidence = document.getElementById("evidence");
    evidence.href = "/v1/evidence/" + encodeURIComponent(id) + "?format=json";
    evidence.setAttribute("download", "evidence-" + id + ".json");
    document.getElementById("lineage-link").href = lineageUrl("prediction:" + id, "upstream");
    let trace;
    try {
      trace = await api("/v1/traces/" + encodeURIComponent(id) + (mayReadPayloads ? "?raw=true" : ""));
    } catch (error) { say("trace-status", error.detail || String(error), true); return; }
    const chain = trace.chain || flatChain(trace);
    const broken = chain.nodes.filter((n) => n.verification && n.verification.status === "not_verified").length;
    say("trace-status", `${chain.nodes.length} records in the chain of custody` +
      (broken ? `; ${broken} not verified` : "") + (trace.complete === false ? "; the trace is incomplete" : ""), broken > 0);
    const cards = document.getElementById("nodes");
    cards.replaceChildren(...chain.nodes.map(nodeCard));
    drawGraph(document.getElementById("graph"), chain.nodes, chain.edges, "prediction:" + id, (nodeId, kind) => {
      const node = chain.nodes.find((n) => n.id === nodeId);
      if (kind === "model" && node) { window.location.href = modelUrl(modelName(node)); return; }
      const card = document.getElementById("node-" + nodeId);
      if (card) { card.scrollIntoView({ block: "nearest" }); card.classList.add("selected"); }
    });
    window.provline = Object.assign(window.provline || {}, { chain: chain, trace: trace });
    const raw = document.getElementById("raw-events");
    if (raw && trace.raw_events) {
      raw.replaceChildren(...trace.raw_events.map((e) => el("details", { class: "raw-event" },
        el("summary", {}, e.kind + " ", el("code", { text: e.event_id })),
        el("pre", { text: short(typeof e.raw === "string" ? e.raw : JSON.stringify(e.raw, null, 2), 20000) }))));
    }
  }

  // ------------------------------------------------------------------ lineage explorer

  async function explore(node, direction, depth) {
    say("lineage-status", "Walking…");
    let answer;
    try {
      answer = await api("/v1/lineage/graph?" + new URLSearchParams({ node, direction, max_depth: depth }));
    } catch (error) { say("lineage-status", error.detail || String(error), true); return; }
    say("lineage-status", `${answer.nodes.length} nodes ${direction} of ${node}` +
      (answer.truncated ? " (the nearest only: the graph was cut at its limit)" : ""));
    say("downstream-count", direction === "downstream"
      ? `${answer.predictions_downstream} prediction${answer.predictions_downstream === 1 ? "" : "s"} downstream` : "");
    document.getElementById("downstream-hint").hidden = direction !== "downstream" || !answer.predictions_downstream;
    drawGraph(document.getElementById("graph"), answer.nodes, answer.edges, node, (id, kind) => {
      if (kind === "prediction") window.location.href = predictionUrl(id.slice("prediction:".length));
      else if (kind === "model") window.location.href = modelUrl(id.slice(6, id.lastIndexOf("@")));
      else window.location.href = lineageUrl(id, direction);
    });
  }

  function lineagePage() {
    const form = document.getElementById("lineage-form");
    const params = new URLSearchParams(window.location.search);
    if (params.get("node")) {
      form.node.value = params.get("node");
      form.direction.value = params.get("direction") || "downstream";
      explore(form.node.value, form.direction.value, form.max_depth.value);
    }
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      window.history.replaceState(null, "", lineageUrl(form.node.value, form.direction.value));
      explore(form.node.value.trim(), form.direction.value, form.max_depth.value);
    });
  }

  // ------------------------------------------------------------------ the model page

  function groupBy(rows, key) {
    const groups = new Map();
    for (const row of rows) { const k = key(row); if (!groups.has(k)) groups.set(k, []); groups.get(k).push(row); }
    return groups;
  }

  const PALETTE = ["#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#558b2f"];

  // One uPlot chart: x = window start, one series per version, and the threshold when given.
  function chart(container, title, rows, valueOf, threshold, attrs) {
    const windows = [...new Set(rows.map((r) => seconds(r.window_start)))].sort((a, b) => a - b);
    // one empty step either side, so a single window is a point in a range and the threshold a line across
    const step = windows.length > 1 ? (windows[windows.length - 1] - windows[0]) / (windows.length - 1) : 60;
    const times = [windows[0] - step, ...windows, windows[windows.length - 1] + step];
    const versions = [...new Set(rows.map((r) => String(r.version)))].sort();
    const data = [times];
    const series = [{}];
    versions.forEach((v, i) => {
      const byTime = new Map(rows.filter((r) => String(r.version) === v).map((r) => [seconds(r.window_start), valueOf(r)]));
      data.push(times.map((t) => (byTime.has(t) ? byTime.get(t) : null)));
      series.push({ label: "v" + v, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: true,
        points: { show: true, size: 6 } });
    });
    if (threshold !== null && threshold !== undefined) {
      data.push(times.map(() => threshold));
      series.push({ label: "breach threshold", stroke: "#c62828", dash: [6, 4], width: 1.5, points: { show: false } });
    }
    const figure = el("figure", Object.assign({ class: "chart" }, attrs || {}), el("figcaption", { text: title }));
    container.append(figure);
    const width = Math.max(320, Math.min(container.clientWidth || 640, 900));
    new uPlot({ width: width, height: 220, series: series, scales: { x: { time: true } },
      axes: [{}, { size: 60 }] }, data, figure);
    return figure;
  }

  async function modelPage() {
    const name = subject;
    let answer;
    try { answer = await api("/v1/models/" + encodeURIComponent(name) + "/overview"); }
    catch (error) { say("model-status", error.detail || String(error), true); return; }
    const cut = answer.truncated || [];
    say("model-status", cut.length ? `Only the first rows of ${cut.join(", ")} are shown (the answer's limit).` : "");
    const versions = [...answer.versions].sort((a, b) => String(a.registered_at).localeCompare(String(b.registered_at)));
    table("versions", ["Version", "Registered", "Artifact SHA-256", "Training run"], versions.map((v) => [
      v.version, v.registered_at, el("code", { text: short(v.artifact_sha256 || "", 20) }),
      v.run_id ? el("a", { href: lineageUrl("run:" + v.run_id, "downstream"), text: v.run_id }) : ""]));
    table("evaluations", ["Version", "Metric", "Value", "Threshold", "Result", "Time"], answer.evaluations.map((e) => [
      e.version, e.metric, e.value, e.threshold, el("span", { class: "badge " + (e.passed ? "verified" : "not_verified"),
        text: e.passed ? "passed" : "failed" }), e.event_time]));
    table("approvals", ["Version", "Decision", "Actor", "Role", "Rationale", "Time"], answer.approvals.map((a) => [
      a.version, a.decision, a.actor, a.role, a.rationale, a.event_time]));
    document.getElementById("deployments").replaceChildren(...answer.deployments.map((d) => el("li",
      { class: "deployment " + String(d.action).toLowerCase() },
      el("time", { text: d.event_time }), " ", el("strong", { text: d.action }), ` v${d.version}`,
      ` to ${d.environment || "?"} ${d.endpoint || ""}`, d.previous_version ? ` (replacing v${d.previous_version})` : "")));
    const traffic = document.getElementById("traffic");
    traffic.replaceChildren();
    if (answer.traffic.length) chart(traffic, "predictions per window", answer.traffic, (r) => r.predictions, null, { id: "traffic-chart" });
    else traffic.append(el("p", { class: "empty", text: "No traffic recorded." }));
    const drift = document.getElementById("drift");
    drift.replaceChildren();
    const byFeature = groupBy(answer.drift, (r) => r.feature + " · " + r.statistic);
    for (const [title, rows] of byFeature) {
      // KS and chi-squared breach on their p-value, not on the statistic charted: no line to compare with
      const onPValue = ["ks", "chi_squared"].includes(rows[0].statistic);
      const thresholds = onPValue ? [] : rows.map((r) => r.threshold).filter((t) => t !== null && t !== undefined);
      const breaches = rows.filter((r) => r.breached).length;
      chart(drift, `${title}${breaches ? ` — ${breaches} window${breaches > 1 ? "s" : ""} breached` : ""}`, rows,
        (r) => r.value, thresholds.length ? Math.max(...thresholds) : null,
        { class: "chart drift-chart", "data-feature": rows[0].feature, "data-statistic": rows[0].statistic,
          "data-breaches": String(breaches) });
    }
    if (!byFeature.size) drift.append(el("p", { class: "empty", text: "No drift metrics recorded." }));
  }

  // ------------------------------------------------------------------ the access log (admin)

  async function accessLogPage() {
    const form = document.getElementById("log-filter");
    async function load() {
      const q = Object.fromEntries(new FormData(form).entries());
      say("log-status", "Loading…");
      let answer;
      try { answer = await api("/v1/access-log?" + new URLSearchParams({ limit: q.limit || "200" })); }
      catch (error) { say("log-status", error.detail || String(error), true); return; }
      const col = (name) => answer.columns.indexOf(name);
      const rows = answer.rows.filter((r) => (!q.reader || String(r[col("reader")]).includes(q.reader))
        && (!q.path || String(r[col("path")]).includes(q.path))
        && (!q.status || String(r[col("status")]) === q.status.trim()));
      const shown = ["time", "reader", "role", "method", "path", "query", "status", "allowed", "client"];
      table("access-log", shown, rows.map((r) => shown.map((name) => r[col(name)])));
      say("log-status", `${rows.length} of the ${answer.rows.length} most recent requests`);
    }
    form.addEventListener("submit", (event) => { event.preventDefault(); load(); });
    load();
  }

  // ------------------------------------------------------------------ start

  function searchPage() {
    const form = document.getElementById("search");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      search(form).catch((error) => say("search-status", error.detail || String(error), true));
    });
  }

  const pages = { search: searchPage, prediction: predictionPage, lineage: lineagePage, model: modelPage,
    "access-log": accessLogPage };
  if (pages[page]) {
    Promise.resolve(pages[page]()).catch((error) => say("error", String(error), true))
      .finally(() => { body.dataset.ready = "true"; });
  } else {
    body.dataset.ready = "true";
  }
})();
