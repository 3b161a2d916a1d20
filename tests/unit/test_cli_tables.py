"""The CLI's tables stay readable in an 80-column terminal; --json keeps every field whole."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from provline import cli

RUN = {"run_id": "0193c0de-7a2b-7cc1-9d1e-5f0a4c3b2a10", "name": "train-iris", "state": "COMPLETED",
       "stage": "training", "project": "iris-job", "owner": "ana", "code_repo": "git@github.com:acme/iris.git",
       "code_commit": "4f2a9c1e0b7d6a5c3e2f1a0b9c8d7e6f5a4b3c2d", "started": "2026-12-01T09:00:00.123456+00:00",
       "last_event": "2026-12-01T09:05:00.654321+00:00"}


def rendered(monkeypatch: pytest.MonkeyPatch, rows: list[dict], columns: tuple[str, ...], as_json: bool = False,
             capsys: pytest.CaptureFixture[str] | None = None) -> str:
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, width=80, force_terminal=False))
    cli._print_rows(rows, as_json, "runs", columns)
    return out.getvalue()


def test_runs_fit_80_columns_with_ids_whole_and_digests_and_times_short(monkeypatch: pytest.MonkeyPatch) -> None:
    text = rendered(monkeypatch, [RUN, {**RUN, "run_id": "r2", "state": "FAILED"}], cli.RUN_COLUMNS)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "4f2a9c1e0b7d" in text and RUN["code_commit"] not in text  # commit cut to 12 characters
    assert "2026-12-01 09:00:00" in text and ".123456" not in text
    assert RUN["run_id"] in text and "COMPLETED" in text and "training" in text  # ids whole, on one line


def test_json_keeps_every_field_whole(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    cli._print_rows([RUN], True, "runs", cli.RUN_COLUMNS)
    assert json.loads(capsys.readouterr().out) == [RUN]


def test_cells_shorten_digests_keep_their_scheme_and_join_lists() -> None:
    assert cli._cell("sha256:" + "ab" * 32) == "sha256:" + "ab" * 6
    assert cli._cell(["sha256:" + "cd" * 32, "x"]) == "sha256:" + "cd" * 6 + ", x"
    assert cli._cell(0.123456789) == "0.1235" and cli._cell(None) == "" and cli._cell("plain") == "plain"
