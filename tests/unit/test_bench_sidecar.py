"""The pieces of bench/sidecar.py its figures rest on: wrk's report read right, CPU time counted whole."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.sidecar import nginx_config, parse_wrk, tree_cpu_seconds

REPORT = """Running 1s test @ http://127.0.0.1:18333/predict
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.79ms    5.63ms  42.00ms   94.56%
    Req/Sec    13.25k     6.40k   20.56k    60.00%
  13481 requests in 1.05s, 2.06MB read
Requests/sec:  12830.66
Transfer/sec:      1.96MB
"""


def test_wrk_reports_are_read_as_requests_and_seconds() -> None:
    assert parse_wrk(REPORT) == (13481, 1.05)
    assert parse_wrk(REPORT.replace("in 1.05s", "in 950.00ms")) == (13481, pytest.approx(0.95))
    assert parse_wrk(REPORT.replace("in 1.05s", "in 1.00m")) == (13481, pytest.approx(60.0))


@pytest.mark.parametrize("failure", ["  Non-2xx or 3xx responses: 1179\n",
                                     "  Socket errors: connect 0, read 3, write 0, timeout 0\n"])
def test_a_run_with_failed_requests_is_refused(failure: str) -> None:
    with pytest.raises(RuntimeError, match="wrk saw failed requests"):
        parse_wrk(REPORT.replace("Requests/sec", failure + "Requests/sec"))


def test_cpu_time_of_a_process_counts_its_children() -> None:
    """A parent that only waits for a child that spins: the child's CPU is counted too."""
    child = ("import sys, time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
             "print('spun', flush=True)\nsys.stdin.read()")
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys\nsubprocess.run([sys.executable, "
                               f"'-c', {child!r}])"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None and parent.stdout.readline() == b"spun\n"
        assert tree_cpu_seconds(parent.pid) >= 0.3
    finally:
        parent.communicate(b"")


def test_nginx_proxies_with_one_worker_and_keep_alive_upstream_connections(tmp_path: Path) -> None:
    config = nginx_config(8000, 9000, tmp_path)
    assert "worker_processes 1;" in config and "server 127.0.0.1:8000;" in config
    assert "listen 127.0.0.1:9000" in config
    assert "keepalive 128;" in config and 'proxy_set_header Connection "";' in config
    assert "proxy_http_version 1.1;" in config
