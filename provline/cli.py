"""The ``provline`` command: starts the services and answers audit questions.

Each command imports its component lazily, so ``provline --help`` stays fast and a job that only
uses ``producers`` never loads ClickHouse or Faust.
"""

from __future__ import annotations

import json
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
console = Console()
DEFAULT_API_URL = "http://127.0.0.1:8700"
API_TIMEOUT_S = 30.0

ApiOption = Annotated[
    str, typer.Option("--api", envvar="PROVLINE_API_URL", help="URL of `provline serve`'s audit API")
]


@app.command()
def serve() -> None:
    """Run the sink (Kafka -> ClickHouse) and the audit API; settings from PROVLINE_* variables."""
    from sink.serve import run_serve
    from sink.settings import SinkSettings

    run_serve(SinkSettings())


@app.command()
def processors() -> None:
    """Run the Faust stream processors (trace joiner); settings from PROVLINE_* variables."""
    from stream_processors.app import run_worker
    from stream_processors.settings import ProcessorSettings

    run_worker(ProcessorSettings())


@app.command()
def sidecar(
    upstream: Annotated[str | None, typer.Option(help="model server base URL, e.g. http://127.0.0.1:9000")] = None,
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
    admin_port: Annotated[int | None, typer.Option(help="port of /healthz, /readyz and /metrics")] = None,
) -> None:
    """Run the trace proxy in front of a model server."""
    from sidecar.app import run_sidecar
    from sidecar.settings import SidecarSettings

    overrides = {"upstream": upstream, "host": host, "port": port, "admin_port": admin_port}
    run_sidecar(SidecarSettings(**{name: value for name, value in overrides.items() if value is not None}))


def _api_get(api: str, path: str) -> tuple[int, dict]:
    response = httpx.get(f"{api.rstrip('/')}{path}", timeout=API_TIMEOUT_S)
    return response.status_code, response.json()


def _api_post(api: str, path: str, body: dict) -> tuple[int, dict]:
    response = httpx.post(f"{api.rstrip('/')}{path}", json=body, timeout=API_TIMEOUT_S)
    return response.status_code, response.json()


def _unreachable(api: str, exc: Exception) -> typer.Exit:
    console.print(f"[red]cannot reach the audit API at {api}: {exc}[/red]\n"
                  "start it with `provline serve` or point --api / PROVLINE_API_URL at it")
    return typer.Exit(2)


@app.command()
def trace(
    prediction_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="print the trace as JSON")] = False,
    api: ApiOption = DEFAULT_API_URL,
) -> None:
    """Print the whole chain behind one prediction."""
    try:
        status, body = _api_get(api, f"/v1/traces/{prediction_id}")
    except httpx.HTTPError as exc:
        raise _unreachable(api, exc) from exc
    if status == 404:
        console.print(f"[yellow]no trace for prediction {prediction_id} (yet)[/yellow]")
        raise typer.Exit(1)
    if status != 200:
        console.print(f"[red]audit API answered {status}: {body}[/red]")
        raise typer.Exit(2)
    if as_json:
        print(json.dumps(body, indent=2, sort_keys=True, default=str))
        return
    print_trace(body)


def print_trace(trace: dict) -> None:
    table = Table(title=f"prediction {trace.get('prediction_id')}", show_header=False, title_justify="left")
    table.add_column(style="bold cyan")
    table.add_column(overflow="fold")
    for name, value in trace.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, sort_keys=True, default=str)
        table.add_row(name, "" if value is None else str(value))
    console.print(table)


@app.command()
def sql(query: str, api: ApiOption = DEFAULT_API_URL) -> None:
    """Run one read-only SQL statement against the store and print the result as JSON lines."""
    try:
        status, body = _api_post(api, "/v1/sql", {"sql": query})
    except httpx.HTTPError as exc:
        raise _unreachable(api, exc) from exc
    if status != 200:
        console.print(f"[red]{body.get('detail', body)}[/red]")
        raise typer.Exit(1)
    for row in body["rows"]:
        print(json.dumps(dict(zip(body["columns"], row, strict=True)), default=str))

