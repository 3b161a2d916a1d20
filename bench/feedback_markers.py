"""Measurement: the memory a done marker costs the processors while it waits for late feedback.

    .venv/bin/python bench/feedback_markers.py                 # 20,000 markers, 8 features each
    .venv/bin/python bench/feedback_markers.py --features 32

A prediction joined from separate halves leaves a done marker (``join.mark_done``) holding its trace's
fields for ``PROVLINE_PROCESSORS__FEEDBACK_RETENTION_S`` (docs/operations.md, "Late labels"). Printed:
JSON bytes per marker (its changelog record), Python heap bytes per marker as a worker holds it
after recovery (tracemalloc, the marker decoded from its JSON), and the ratio against the baseline of
a bare marker without the trace's fields, measured in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

from provline.stream_processors.join import REQUEST, RESPONSE, absorb, build_trace, mark_done, summarize
from provline.stream_processors.lineage import LineageIndex

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def known_lineage() -> LineageIndex:
    """The model's deployment, version and training run: the traces are complete, so a marker keeps no halves."""
    index = LineageIndex()
    index.ingest("Deployment", {"event_id": "dep-3", "event_time": T0 - timedelta(days=1), "model_name": "churn",
                                "model_version": "3", "environment": "prod", "endpoint": "/v2/models/churn/infer",
                                "action": "DEPLOY"})
    index.ingest("ModelVersion", {"model_name": "churn", "version": "3", "artifact_uri": "s3://models/churn/3",
                                  "artifact_sha256": "a" * 64, "run_id": "run-3", "datasets": ["sha256:" + "d" * 64],
                                  "feature_sets": []})
    index.ingest("RunEvent", {"event_time": T0 - timedelta(days=2), "run_id": "run-3",
                              "code": {"repo": "git@example.com:acme/churn", "commit": "c" * 40}})
    return index


def marker(index: int, features: int, lineage: LineageIndex) -> dict[str, Any]:
    pid, at = f"0192f7c4-5b6e-7a39-9d4e-{index:012d}", T0 + timedelta(seconds=index)
    request = {"event_id": hashlib.md5(pid.encode()).hexdigest(), "event_time": at, "prediction_id": pid,
               "endpoint": "/v2/models/churn/infer", "model_name": "churn", "model_version": "3",
               "body_sha256": hashlib.sha256(pid.encode()).hexdigest(), "request_id": f"order-{index}",
               "features": {f"feature_{j}": float(index + j) for j in range(features)}}
    response = {**request, "event_id": hashlib.md5(pid.encode() + b"r").hexdigest(), "status": 200,
                "latency_us": 1500, "outputs": {"score": 0.7}, "event_time": at + timedelta(milliseconds=20)}
    entry = absorb(None, REQUEST, summarize(REQUEST, request), partition=0, now=1.0)
    entry = absorb(entry, RESPONSE, summarize(RESPONSE, response), partition=0, now=1.0)
    assert entry is not None
    trace = build_trace(entry["q"], entry["r"], lineage)
    assert trace["complete"], trace["missing"]
    return dict(mark_done(entry, trace, now=2.0))


def heap_bytes(records: list[str]) -> float:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = {i: json.loads(record) for i, record in enumerate(records)}
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(kept) == len(records)
    return used / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markers", type=int, default=20_000)
    parser.add_argument("--features", type=int, default=8)
    args = parser.parse_args()
    lineage = known_lineage()
    full = [json.dumps(marker(i, args.features, lineage), separators=(",", ":")) for i in range(args.markers)]
    bare = [json.dumps({k: v for k, v in json.loads(r).items() if k != "t"}, separators=(",", ":")) for r in full]
    json_bytes = sum(map(len, full)) / len(full)
    kept, baseline = heap_bytes(full), heap_bytes(bare)
    print(f"{args.markers} markers, {args.features} features: {json_bytes:.0f} JSON bytes and {kept:.0f} heap bytes "
          f"per marker; {kept / baseline:.1f}x a bare marker ({baseline:.0f} heap bytes)")


if __name__ == "__main__":
    main()
