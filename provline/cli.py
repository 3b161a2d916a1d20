"""The ``provline`` command: starts the services and answers audit questions.

Each command imports its component lazily, so ``provline --help`` stays fast and a job that only
uses ``producers`` never loads ClickHouse or Faust. Settings come from ``PROVLINE_*`` variables
(``provline config SERVICE`` lists them); a setting that cannot work stops the command with exit
code 2 and a sentence naming the variable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from provline.config import ConfigError, ProvlineSettings, load_settings

if TYPE_CHECKING:
    from provline.client import AuditClient

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
console = Console()

ApiOption = Annotated[
    str | None, typer.Option("--api", help="URL of `provline serve`'s audit API (default: PROVLINE_CLIENT__API_URL)"),
]


@contextmanager
def _exits_on_errors() -> Iterator[None]:
    """Configuration and audit API errors become one red line and an exit code (2, or 1 for a refusal)."""
    from provline.client import ApiError

    try:
        yield
    except ConfigError as exc:
        console.print(f"[red]provline: {exc}[/red]")
        raise typer.Exit(2) from exc
    except ApiError as exc:
        console.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(1 if 0 < exc.status < 500 else 2) from exc


def _client(api: str | None) -> AuditClient:
    from provline.client import AuditClient, ClientSettings

    return AuditClient.of(load_settings(ClientSettings).client, url=api)


@app.command()
def serve() -> None:
    """Run the sink (Kafka -> ClickHouse) and the audit API."""
    from provline.sink.serve import run_serve
    from provline.sink.settings import ServeSettings

    with _exits_on_errors():
        run_serve(load_settings(ServeSettings))


@app.command()
def processors() -> None:
    """Run a Faust stream processors worker (trace joiner, drift monitor).

    Prometheus metrics on PROVLINE_PROCESSORS__METRICS_PORT (default 9466; 0: any free port, logged);
    start more workers with the same PROVLINE_PROCESSORS__APP_ID to share the partitions.
    """
    from provline.stream_processors.app import run_worker
    from provline.stream_processors.settings import ProcessorSettings

    with _exits_on_errors():
        run_worker(load_settings(ProcessorSettings))


@app.command()
def sidecar(
    upstream: Annotated[str | None, typer.Option(help="model server base URL, e.g. http://127.0.0.1:9000")] = None,
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
    admin_port: Annotated[int | None, typer.Option(help="port of /healthz, /readyz and /metrics")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="worker processes sharing the port")] = None,
    policy: Annotated[
        Path | None, typer.Option(help="YAML capture policy: redaction, capture mode, sampling per route")
    ] = None,
    model_version: Annotated[str | None, typer.Option(help="recorded when nothing better is known")] = None,
    log_format: Annotated[str | None, typer.Option(help="json or text")] = None,
) -> None:
    """Run the trace proxy in front of a model server; each option overrides its PROVLINE_SIDECAR__ variable."""
    from provline.sidecar.errors import StartupError
    from provline.sidecar.serve import run_sidecar
    from provline.sidecar.settings import SidecarSettings

    proxy = {"upstream": upstream, "host": host, "port": port, "admin_port": admin_port, "workers": workers,
             "model_version": model_version, "log_format": log_format}
    overrides: dict[str, Any] = {"sidecar": {k: v for k, v in proxy.items() if v is not None}}
    if policy is not None:
        overrides["capture"] = {"policy_file": policy}
    with _exits_on_errors():
        settings = load_settings(SidecarSettings, **overrides)  # merged with the environment, section by section
    try:
        run_sidecar(settings)
    except StartupError as exc:
        console.print(f"[red]provline sidecar: {exc}[/red]")
        raise typer.Exit(2) from exc


@app.command()
def ingest(
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port payload loggers send CloudEvents to")] = None,
    policy: Annotated[
        Path | None, typer.Option(help="YAML capture policy: redaction, capture mode, sampling per route")
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="endpoint template, e.g. '{namespace}/{service}/{component}'")
    ] = None,
    model_version: Annotated[str | None, typer.Option(help="recorded when the reply names no model_version")] = None,
    log_format: Annotated[str | None, typer.Option(help="json or text")] = None,
) -> None:
    """Record KServe and Seldon payload loggers' CloudEvents; each option overrides its PROVLINE_INGEST__ variable."""
    from provline.sidecar.errors import StartupError
    from provline.sidecar.ingest import run_ingest
    from provline.sidecar.settings import IngestSettings

    service = {"host": host, "port": port, "endpoint": endpoint, "model_version": model_version,
               "log_format": log_format}
    overrides: dict[str, Any] = {"ingest": {k: v for k, v in service.items() if v is not None}}
    if policy is not None:
        overrides["capture"] = {"policy_file": policy}
    with _exits_on_errors():
        settings = load_settings(IngestSettings, **overrides)
    try:
        run_ingest(settings)
    except StartupError as exc:
        console.print(f"[red]provline ingest: {exc}[/red]")
        raise typer.Exit(2) from exc


feedback_app = typer.Typer(no_args_is_help=True, help="Send ground truth (labels, outcomes) to `provline serve`.")
app.add_typer(feedback_app, name="feedback")
IMPORT_BATCH = 500


@feedback_app.command("import")
def feedback_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="a .csv (with a header) or .parquet file")],
    id_column: Annotated[str, typer.Option("--id-column", help="the column naming each row's prediction")] =
    "prediction_id",
    id_kind: Annotated[str, typer.Option("--id-kind", help="what the id column holds: prediction (provline's "
                                         "X-Prediction-ID) or client-request (the client's own request id)")] =
    "prediction",
    label_column: Annotated[str | None, typer.Option("--label-column", help="the column of labels")] = None,
    outcome_column: Annotated[str | None, typer.Option("--outcome-column", help="the column of numeric outcomes")]
    = None,
    source: Annotated[str, typer.Option("--source", help="where the ground truth came from")] = "import",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="rows per POST /v1/feedback")] = IMPORT_BATCH,
    api: ApiOption = None,
) -> None:
    """Send a file's labels through POST /v1/feedback in batches (token: PROVLINE_CLIENT__API_TOKEN of a
    feedback_writer); reports the rows not found or invalid, and exits 1 when there were any."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from provline.client import ApiError
    from provline.feedback_file import ID_FIELDS, FeedbackFileError, RowProblem, file_items

    if id_kind not in ID_FIELDS:
        console.print(f"[red]--id-kind must be one of {', '.join(ID_FIELDS)}, not {id_kind!r}[/red]")
        raise typer.Exit(2)
    problems: list[RowProblem] = []
    accepted = 0
    with _exits_on_errors():
        client = _client(api)

        def send(batch: list[tuple[int, dict[str, Any]]]) -> int:
            status, body = client.post("/v1/feedback", [item for _, item in batch])
            if status != 200:
                detail = body.get("detail", body) if isinstance(body, dict) else body
                raise ApiError(status, f"audit API answered {status}: {detail}")
            for result in body["results"]:
                number, item = batch[result["index"]]
                if result["status"] != "accepted":
                    problems.append(RowProblem(number, str(item.get(ID_FIELDS[id_kind], "")), result["status"],
                                               str(result.get("reason", ""))))
            return int(body["accepted"])

        try:
            rows = file_items(file, id_column=id_column, id_kind=id_kind,  # type: ignore[arg-type]
                              label_column=label_column, outcome_column=outcome_column, source=source)
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          console=console, transient=False) as progress:
                task = progress.add_task(f"feedback from {file.name}", total=None)
                batch: list[tuple[int, dict[str, Any]]] = []
                for number, item in rows:
                    if isinstance(item, RowProblem):
                        problems.append(item)
                    else:
                        batch.append((number, item))
                    if len(batch) >= batch_size:
                        accepted += send(batch)
                        batch = []
                    progress.advance(task)
                if batch:
                    accepted += send(batch)
        except FeedbackFileError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
    console.print(f"{accepted} rows accepted, {sum(p.status == 'not_found' for p in problems)} not found, "
                  f"{sum(p.status == 'invalid' for p in problems)} invalid")
    if problems:
        table = Table("row", "id", "status", "reason", title="rows not recorded")
        for problem in sorted(problems, key=lambda p: p.row):
            table.add_row(str(problem.row), problem.id[:60], problem.status, problem.reason[:120])
        console.print(table)
        raise typer.Exit(1)


MLFLOW_STATE_PATH = Path(".provline") / "mlflow-import.json"
MLFLOW_FOLLOW_INTERVAL_S = 30.0
mlflow_app = typer.Typer(no_args_is_help=True, help="Bring an MLflow tracking server's lineage into provline.")
app.add_typer(mlflow_app, name="mlflow")


def _iso_time(value: str | None) -> datetime | None:
    """An ISO 8601 time (``Z`` or an offset; naive means UTC) for --since; BadParameter otherwise."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time, e.g. 2026-01-31T12:00:00Z") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


TrackingUriOption = Annotated[str, typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                                                help="the MLflow tracking server, e.g. http://127.0.0.1:5000")]
ExperimentOption = Annotated[list[str] | None, typer.Option(
    "--experiment", help="import this experiment (by name); repeat for more (default: every experiment)")]
StateOption = Annotated[Path, typer.Option(
    "--state", help="where the import remembers what it delivered and where each alias pointed")]
NoStateOption = Annotated[bool, typer.Option("--no-state", help="keep no state file: read what earlier imports "
                                                                "sent back from the lineage topic every time")]
TokenOption = Annotated[str | None, typer.Option("--token", envvar="MLFLOW_TRACKING_TOKEN",
                                                 help="bearer token for the tracking server")]


if TYPE_CHECKING:
    import threading

    from provline.producers import JobSettings
    from provline.producers.emitter import Emitter
    from provline.producers.mlflow_bridge.client import MlflowReader
    from provline.producers.mlflow_bridge.follow import Round
    from provline.producers.mlflow_bridge.importer import ImportState


def _mlflow_destination(tracking_uri: str, state: Path, no_state: bool) -> tuple[JobSettings, ImportState, Emitter]:
    """The job settings, the import state for this server and destination, and the emitter of an import
    (``provline mlflow import`` and ``follow``); ConfigError when no broker is configured."""
    from provline.producers import JobSettings, build_emitter
    from provline.producers.errors import ProducerError
    from provline.producers.mlflow_bridge.importer import ImportState
    from provline.producers.mlflow_bridge.mapping import PRODUCER_NAME

    settings = load_settings(JobSettings)
    if settings.transport() == "none":
        raise ConfigError("no broker configured, so the import would send nothing; set "
                          "PROVLINE_KAFKA__BOOTSTRAP (or PROVLINE_EMITTER__TRANSPORT)")
    destination = f"{settings.transport()}:{settings.kafka.bootstrap or settings.emitter.file}/" \
                  f"{settings.topics.prefix}"
    try:
        import_state = ImportState.load(None if no_state else state, key=ImportState.key_of(tracking_uri, destination))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        emitter = build_emitter(settings, producer_name=PRODUCER_NAME)
    except ProducerError as exc:
        raise ConfigError(str(exc)) from exc
    return settings, import_state, emitter


def _recover_sent(settings: JobSettings, import_state: ImportState, emitter: Emitter,
                  note: Callable[[str], Any]) -> None:
    """With no state for this destination (a first import, a lost file, --no-state), what was sent already
    is read back from the lineage topic: sending it again would make provline verify flag the first copy."""
    from provline.producers.mlflow_bridge.importer import sent_before
    from provline.schemas.events import Topics

    if import_state.empty and settings.transport() == "kafka":
        topic = Topics(settings.topics.prefix).lineage
        note(f"reading what earlier imports sent from {topic}")
        import_state.recover(sent_before(settings.kafka, topic, emitter.producer["name"]))


@mlflow_app.command("import")
def mlflow_import(
    tracking_uri: TrackingUriOption,
    experiment: ExperimentOption = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="only runs started and model versions created at or after this ISO 8601 time")] = None,
    state: StateOption = MLFLOW_STATE_PATH,
    no_state: NoStateOption = False,
    token: TokenOption = None,
) -> None:
    """Import runs, their dataset inputs, registered model versions (artifacts downloaded and hashed),
    their LoggedModel metrics, approval tags and aliases as RunEvent, DatasetVersion, ModelVersion,
    Evaluation, Decision and Deployment events to the lineage topic.

    Event ids are stable, so importing twice sends the same events and the sink keeps one; what an
    earlier import delivered (the --state file) is not sent again. Exits 2 when MLflow cannot be read
    or the events were not delivered, 1 when something was imported incomplete (listed)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from provline.producers.errors import ProducerError
    from provline.producers.mlflow_bridge.client import MlflowReader
    from provline.producers.mlflow_bridge.importer import MlflowImport

    moment = _iso_time(since)
    with _exits_on_errors():
        settings, import_state, emitter = _mlflow_destination(tracking_uri, state, no_state)
    try:
        with MlflowReader(tracking_uri, token=token) as reader, \
                Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn(),
                         console=console, transient=True) as progress:
            _recover_sent(settings, import_state, emitter, lambda what: progress.add_task(what, total=None))
            task = progress.add_task(f"reading {tracking_uri}", total=None)
            report = MlflowImport(
                reader, emitter, import_state, experiments=experiment, since=moment,
                progress=lambda what: progress.update(task, description=f"reading {what} from {tracking_uri}"),
            ).run()
    except ProducerError as exc:
        emitter.close()  # what was emitted goes out (same ids next time); the state is not written
        console.print(f"[red]provline mlflow import: {exc}[/red]")
        raise typer.Exit(2) from exc
    if not emitter.close():
        console.print("[red]the events were not all delivered; check PROVLINE_KAFKA__BOOTSTRAP and import again "
                      "(the same events are sent with the same ids)[/red]")
        raise typer.Exit(2)
    import_state.commit(report)
    import_state.save()
    table = Table("event", "sent", "already sent", title=f"imported from {tracking_uri}", title_justify="left")
    for kind in sorted(set(report.sent) | set(report.skipped)):
        table.add_row(kind, str(report.sent[kind]), str(report.skipped[kind]))
    console.print(table)
    console.print(", ".join(f"{count} {what}" for what, count in report.read.items()) + " read; "
                  f"{sum(report.sent.values())} events sent, {sum(report.skipped.values())} already sent before")
    if report.problems:
        for problem in report.problems:
            console.print(f"[yellow]  - {problem}[/yellow]")
        raise typer.Exit(1)


class _StoreCheck:
    """The promotion guard's questions to the store, through the audit API as ``provline promote`` asks
    them (:func:`provline.sink.facts.promotion_gaps`); an API that fails is GuardUnavailable, not an exit."""

    def __init__(self, client: AuditClient, policy: Any) -> None:
        self.client, self.policy = client, policy

    def _query(self, statement: str) -> list[dict[str, Any]]:
        from provline.client import ApiError
        from provline.producers.mlflow_bridge.follow import GuardUnavailable

        try:
            return self.client.query(statement)
        except ApiError as exc:
            raise GuardUnavailable(exc.detail) from exc

    def stored(self, event_ids: list[str]) -> set[str]:
        from provline.sink.facts import stored_event_ids

        return stored_event_ids(self._query, event_ids)

    def missing(self, model_name: str, version: str, environment: str) -> list[str]:
        from provline.sink.facts import promotion_gaps

        return promotion_gaps(self._query, model_name, version, self.policy, environment)


def _show_round(outcome: Round) -> None:
    """One round of ``provline mlflow follow`` as lines: what it sent, the guard's verdicts, failures."""
    where = f"round {outcome.number}"
    if outcome.error:
        console.print(f"[yellow]{where}: {outcome.error}; {outcome.failures} failed round(s) in a row, "
                      f"next try in {outcome.next_in_s:.1f} s[/yellow]")
    report = outcome.report
    if report is not None and outcome.sent:
        console.print(f"{where}: sent " + ", ".join(f"{count} {kind}" for kind, count in sorted(report.sent.items())))
    elif not outcome.error and not console.is_terminal:  # a heartbeat in logs; a terminal has the status line
        console.print(f"{where}: nothing new")
    for verdict in outcome.verdicts:
        move = f"{verdict.model_name}@{verdict.version} as {verdict.alias!r}"
        if verdict.passed:
            console.print(f"[green]{where}: guard: {move} meets the promotion policy for {verdict.environment}"
                          "[/green]")
            continue
        console.print(f"[bold red]{where}: guard REJECTED {move} (from {verdict.previous_version or 'nothing'}) "
                      f"for {verdict.environment}; recorded as Decision {verdict.decision_id}; missing:[/bold red]")
        for item in verdict.missing:
            console.print(f"[red]  - {item}[/red]")
        if verdict.rolled_back:
            console.print(f"[red]  moved {verdict.alias!r} back to {verdict.previous_version} in MLflow "
                          "(recorded as a ROLLBACK)[/red]")
        elif verdict.not_rolled_back:
            console.print(f"[red]  not moved back: {verdict.not_rolled_back}[/red]")
    for item in outcome.deferred:
        console.print(f"[yellow]{where}: {item}[/yellow]")
    for problem in report.problems if report is not None else []:
        console.print(f"[yellow]{where}: {problem}[/yellow]")
    if not outcome.delivered:
        console.print(f"[yellow]{where}: the broker has not acknowledged every event yet; the state is saved once "
                      "it has (check PROVLINE_KAFKA__BOOTSTRAP)[/yellow]")


@contextmanager
def _webhook(reader: MlflowReader, listen: tuple[str, int], url: str | None, secret: str,
             wake: threading.Event) -> Iterator[None]:
    """`provline mlflow follow --webhook-listen`: the listener, and a webhook registered in MLflow for as
    long as it serves (deleted when the block ends). A server without webhooks, or that refuses this
    one, is said so once; follow then polls only."""
    import secrets

    from provline.producers.mlflow_bridge.client import MlflowError
    from provline.producers.mlflow_bridge.webhooks import EVENTS, WebhookListener

    host, port = listen
    url = url or f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    try:
        listener = WebhookListener(listen, secret, on_delivery=wake.set).start()
    except OSError as exc:
        raise ConfigError(f"--webhook-listen {host}:{port}: cannot listen there: {exc}") from exc
    webhook_id: str | None = None
    try:
        try:
            webhook_id = reader.create_webhook(f"provline-follow-{secrets.token_hex(4)}", url, list(EVENTS), secret)
        except MlflowError as exc:
            console.print(f"[yellow]MLflow refused the webhook for {url}: {exc}; polling only (an http URL needs "
                          "the server started with MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https, a private address "
                          "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true)[/yellow]")
        else:
            if webhook_id is None:
                console.print(f"[yellow]{reader.tracking_uri} has no webhooks API (MLflow 3.3 or later with a "
                              "database backend has): polling only[/yellow]")
            else:
                console.print(f"MLflow webhook {webhook_id} POSTs to {url}: a delivery starts the next round")
        yield
    finally:
        if webhook_id is not None:
            try:
                reader.delete_webhook(webhook_id)
            except MlflowError as exc:
                console.print(f"[yellow]could not delete MLflow webhook {webhook_id}: {exc}[/yellow]")
        listener.close()


@mlflow_app.command("follow")
def mlflow_follow(
    tracking_uri: TrackingUriOption,
    experiment: ExperimentOption = None,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="seconds between rounds")]
    = MLFLOW_FOLLOW_INTERVAL_S,
    guard: Annotated[list[str] | None, typer.Option(
        "--guard", help="ALIAS=ENV: check each move of ALIAS with the promotion policy for ENV (repeatable)")] = None,
    policy: Annotated[Path | None, typer.Option(
        "--policy", exists=True, dir_okay=False, help="promotion policy (JSON or YAML) of the guard")] = None,
    enforce: Annotated[bool, typer.Option(
        "--enforce", help="move a guarded alias whose move was rejected back to its previous version in MLflow")]
    = False,
    state: StateOption = MLFLOW_STATE_PATH,
    no_state: NoStateOption = False,
    token: TokenOption = None,
    api: ApiOption = None,
    webhook_listen: Annotated[str | None, typer.Option(
        "--webhook-listen", metavar="HOST:PORT",
        help="serve MLflow webhook deliveries here; each one starts the next round at once")] = None,
    webhook_url: Annotated[str | None, typer.Option(
        "--webhook-url", help="the URL MLflow POSTs to (default http://HOST:PORT/ of --webhook-listen)")] = None,
    webhook_secret_file: Annotated[Path | None, typer.Option(
        "--webhook-secret-file", exists=True, dir_okay=False,
        help="the webhook's signing secret (default: a random one for this run)")] = None,
) -> None:
    """Keep importing (an incremental `provline mlflow import` every --interval seconds, same state file)
    until Ctrl-C or SIGTERM, so each alias move becomes one Deployment naming the version it left.

    With --guard, a move of that alias is first checked with `provline promote`'s policy (--policy) over
    the store, through the audit API (--api): one that fails is recorded as a REJECTED Decision beside
    its Deployment, and with --enforce the alias is moved back in MLflow. A tracking server that does not
    answer is retried with backoff. Exits 0 when stopped with everything delivered, 2 otherwise.

    With --webhook-listen, follow registers an MLflow webhook for model version, tag and alias events
    and starts a round as soon as a delivery with a valid signature arrives (polling goes on at
    --interval); it deletes the webhook when it stops."""
    import secrets
    import signal
    import threading

    from pydantic import ValidationError

    from provline.client import ApiError
    from provline.producers.errors import ProducerError
    from provline.producers.mlflow_bridge.client import MlflowReader
    from provline.producers.mlflow_bridge.follow import Follower, parse_guard
    from provline.producers.mlflow_bridge.webhooks import parse_listen
    from provline.sink.promotion import PromotionPolicy

    with _exits_on_errors():
        try:
            guards = dict(parse_guard(text) for text in guard or [])
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if (enforce or policy is not None) and not guards:
            raise ConfigError("--enforce and --policy apply to guarded aliases; name them with --guard ALIAS=ENV")
        check = None
        if guards:
            try:
                rules = PromotionPolicy.load(policy)
            except (ValidationError, ValueError) as exc:
                raise ConfigError(f"--policy {policy}: {exc}") from exc
            check = _StoreCheck(_client(api), rules)
            try:
                check.client.query("SELECT 1")
            except ApiError as exc:
                raise ConfigError(f"the promotion guard reads the store through the audit API: {exc.detail}") from exc
        listen: tuple[str, int] | None = None
        if webhook_listen is not None:
            try:
                listen = parse_listen(webhook_listen)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
            if webhook_url is None and listen[0] in ("0.0.0.0", "::", ""):
                raise ConfigError(f"--webhook-listen {webhook_listen} listens on every address: name the one MLflow "
                                  "reaches with --webhook-url")
        elif webhook_url is not None or webhook_secret_file is not None:
            raise ConfigError("--webhook-url and --webhook-secret-file apply to webhooks; "
                              "add --webhook-listen HOST:PORT")
        secret = (webhook_secret_file.read_text().strip() if webhook_secret_file is not None
                  else secrets.token_urlsafe(32))
        if not secret:
            raise ConfigError(f"--webhook-secret-file {webhook_secret_file} is empty")
        settings, import_state, emitter = _mlflow_destination(tracking_uri, state, no_state)
    stop = threading.Event()
    wake = threading.Event() if listen is not None else None

    def stopped(*_: object) -> None:
        stop.set()
        if wake is not None:
            wake.set()

    handlers = {number: signal.signal(number, stopped) for number in (signal.SIGINT, signal.SIGTERM)}
    rules_text = ", ".join(f"{a} -> {e}{' (enforced)' if enforce else ''}" for a, e in guards.items())
    console.print(f"following {tracking_uri} every {interval:g} s"
                  + (f"; promotion guard: {rules_text}" if guards else "") + "; Ctrl-C stops")
    try:
        with MlflowReader(tracking_uri, token=token) as reader, \
                console.status(f"following {tracking_uri}") as status, ExitStack() as webhooks:
            try:
                _recover_sent(settings, import_state, emitter, status.update)
            except ProducerError as exc:
                console.print(f"[red]provline mlflow follow: {exc}[/red]")
                raise typer.Exit(2) from exc
            if listen is not None and wake is not None:
                with _exits_on_errors():
                    webhooks.enter_context(_webhook(reader, listen, webhook_url, secret, wake))
            follower = Follower(reader, emitter, import_state, experiments=experiment, guards=guards, check=check,
                                enforce=enforce, progress=lambda what: status.update(
                                    f"round {follower.rounds}: reading {what} from {tracking_uri}"))

            def shown(outcome: Round) -> None:
                _show_round(outcome)
                status.update(f"following {tracking_uri}: {outcome.number} rounds, {follower.sent_total} events "
                              f"sent; next round in {outcome.next_in_s:.0f} s (Ctrl-C stops)")

            follower.run(stop, interval_s=interval, on_round=shown, wake=wake)
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    delivered = emitter.close()
    if delivered:
        import_state.save()
    console.print(f"stopped after {follower.rounds} rounds; {follower.sent_total} events sent"
                  + ("" if delivered else "; [red]not all were delivered: they stay in the spool, and the state "
                                          "was not saved[/red]"))
    if not delivered:
        raise typer.Exit(2)


topics_app = typer.Typer(no_args_is_help=True, help="Show or create provline's Kafka topics (PROVLINE_TOPICS__*).")
app.add_typer(topics_app, name="topics")


@topics_app.command("describe")
def topics_describe(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Each topic as the settings want it and as the brokers have it; exits 1 when one is missing or different."""
    from confluent_kafka import KafkaException

    from provline.topics import TopicAdminSettings, describe_all, differences

    with _exits_on_errors():
        settings = load_settings(TopicAdminSettings)
        try:
            found = describe_all(settings.kafka, settings.topics)
        except KafkaException as exc:
            raise ConfigError(f"no Kafka broker answered: {exc}; check PROVLINE_KAFKA__BOOTSTRAP") from exc
    rows: list[dict[str, Any]] = [{"topic": spec.name, "exists": state.exists, "partitions": state.partitions,
             "replication_factor": state.replication_factor,
             "retention_ms": state.config.get("retention.ms"),
             "differences": differences(spec, state) if state.exists else ["missing"]} for spec, state in found]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        table = Table(title="provline topics", title_justify="left")
        for column in ("topic", "partitions", "replicas", "retention.ms", "differs from the settings"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(row["topic"], str(row["partitions"] or "-"), str(row["replication_factor"] or "-"),
                          row["retention_ms"] or "-", "; ".join(row["differences"]) or "no",
                          style="yellow" if row["differences"] else None)
        console.print(table)
    if any(row["differences"] for row in rows):
        raise typer.Exit(1)


@topics_app.command("create")
def topics_create() -> None:
    """Create the missing topics with the partitions, replication and retention of the settings."""
    from confluent_kafka import KafkaException

    from provline.topics import TopicAdminSettings, ensure_topics

    with _exits_on_errors():
        settings = load_settings(TopicAdminSettings)
        try:
            reports = ensure_topics(settings.kafka, settings.topics.model_copy(update={"create": True}),
                                    service="provline topics")
        except KafkaException as exc:
            raise ConfigError(f"no Kafka broker answered: {exc}; check PROVLINE_KAFKA__BOOTSTRAP") from exc
    for report in reports:
        detail = f" ({'; '.join(report.details)})" if report.details else ""
        console.print(f"{report.name}: {report.status}{detail}")


# ---------------------------------------------------------------- configuration


SERVICES = ("job", "sidecar", "ingest", "processors", "serve", "client", "topics")


def settings_classes() -> dict[str, type[ProvlineSettings]]:
    """Every deployable's settings class, by the name ``provline config`` knows it by."""
    from provline.client import ClientSettings
    from provline.producers.settings import JobSettings
    from provline.sidecar.settings import IngestSettings, SidecarSettings
    from provline.sink.settings import ServeSettings
    from provline.stream_processors.settings import ProcessorSettings
    from provline.topics import TopicAdminSettings

    classes: list[type[ProvlineSettings]] = [JobSettings, SidecarSettings, IngestSettings, ProcessorSettings,
                                             ServeSettings, ClientSettings, TopicAdminSettings]
    return {cls.service: cls for cls in classes}


@app.command()
def config(
    service: Annotated[str, typer.Argument(help=f"one of {', '.join(SERVICES)}")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Print every setting SERVICE reads: its variable, value (secrets masked) and where the value came from.

    Exits 2, naming each problem, when the settings would not let SERVICE start.
    """
    from provline.config import describe

    classes = settings_classes()
    if service not in classes:
        console.print(f"[red]unknown service {service!r}; choose one of {', '.join(SERVICES)}[/red]")
        raise typer.Exit(2)
    rows = describe(classes[service])
    if as_json:
        print(json.dumps([row.__dict__ for row in rows], indent=2))
    else:
        table = Table(title=f"settings of {service}", title_justify="left")
        for column in ("variable", "value", "source"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(row.variable, row.value, row.source, style=None if row.source == "default" else "bold")
        console.print(table)
    with _exits_on_errors():
        load_settings(classes[service])


# ---------------------------------------------------------------- audit questions


@app.command()
def trace(
    prediction_id: Annotated[str | None, typer.Argument(help="the prediction id the sidecar gave the exchange")] = None,
    request_id: Annotated[str | None, typer.Option(
        "--request-id", help="find the prediction by the client's or model server's own request id instead")] = None,
    otel_trace_id: Annotated[str | None, typer.Option(
        "--otel-trace-id", help="find the prediction(s) by the OpenTelemetry trace id (32 lower-case hex) "
        "of the request's traceparent instead")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the trace as JSON")] = False,
    api: ApiOption = None,
) -> None:
    """Print the whole chain behind one prediction (by its prediction id, --request-id or --otel-trace-id).

    An OpenTelemetry trace id may cover several predictions: then their ids are listed.
    """
    given = [value for value in (prediction_id, request_id, otel_trace_id) if value is not None]
    if len(given) != 1:
        console.print("[red]give one of a prediction id, --request-id or --otel-trace-id[/red]" if not given
                      else "[red]give a prediction id, --request-id or --otel-trace-id, only one of them[/red]")
        raise typer.Exit(2)
    if request_id is not None:
        prediction_id = _prediction_of_request(api, request_id)
    if otel_trace_id is not None:
        found = _predictions_of_otel_trace(api, otel_trace_id)
        if len(found) > 1:
            if as_json:
                print(json.dumps({"otel_trace_id": otel_trace_id, "prediction_ids": found}, indent=2))
            else:
                console.print(f"{len(found)} predictions carry OpenTelemetry trace id {otel_trace_id} "
                              "(newest first); show one with provline trace PREDICTION_ID:")
                for one in found:
                    print(one)
            return
        prediction_id = found[0]
    with _exits_on_errors():
        status, body = _client(api).get(f"/v1/traces/{prediction_id}")
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


def _prediction_of_request(api: str | None, request_id: str) -> str:
    """The one prediction whose request carried ``request_id``; exits 1 when none or several do."""
    found = _answer(api, "/v1/predictions", {"request_id": request_id})["prediction_ids"]
    if len(found) == 1:
        return str(found[0])
    if not found:
        console.print(f"[yellow]no trace carries request id {request_id!r} (yet)[/yellow]")
    else:
        console.print(f"[yellow]{len(found)} predictions carry request id {request_id!r}; ask for one by its "
                      f"prediction id: {', '.join(found)}[/yellow]")
    raise typer.Exit(1)


_REDACTED_TRACEPARENT = {
    "hash": "the capture policy stores traceparent as a keyed hash (headers: hash: [traceparent])",
    "mask": "the capture policy masks traceparent (headers: mask: [traceparent])",
}


def _predictions_of_otel_trace(api: str | None, trace_id: str) -> list[str]:
    """The predictions whose request's traceparent carries ``trace_id``, newest first (at least one);
    exits 2 on an invalid id, 1 when none does."""
    from provline.schemas.tracecontext import check_trace_id

    try:
        check_trace_id(trace_id)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    answer = _answer(api, "/v1/predictions", {"otel_trace_id": trace_id})
    found = [str(one) for one in answer["prediction_ids"]]
    if found:
        return found
    why = _REDACTED_TRACEPARENT.get(answer.get("traceparent_redacted") or "")
    if why is not None:
        console.print(
            f"[yellow]no stored request carries OpenTelemetry trace id {trace_id}, but {why}, so a trace id "
            "cannot be found in what is stored. Find the prediction instead by its prediction id (the sidecar "
            "returns it in the x-prediction-id reply header, and the OTLP span it exports carries it as "
            "provline.prediction_id) or by --request-id; to make trace ids findable, keep traceparent in the "
            "policy (a trace id is random, not personal data).[/yellow]")
    else:
        console.print(f"[yellow]no stored request carries OpenTelemetry trace id {trace_id} (yet)[/yellow]")
    raise typer.Exit(1)


def print_trace(trace: dict[str, Any]) -> None:
    """The trace for a reader: its chain of custody record by record (``chain``, from an API of issue 18 or
    later), each with its verification; the stored fields as one table from an older API."""
    chain = trace.get("chain")
    if not chain or not chain.get("nodes"):
        table = Table(title=f"prediction {trace.get('prediction_id')}", show_header=False, title_justify="left")
        table.add_column(style="bold cyan")
        table.add_column(overflow="fold")
        for name, value in trace.items():
            if isinstance(value, dict | list):
                value = json.dumps(value, sort_keys=True, default=str)
            table.add_row(name, "" if value is None else str(value))
        console.print(table)
        return
    for renderable in trace_renderables(trace):
        console.print(renderable)


# What the human output shows of each node kind, in order (--json has every field).
CHAIN_FIELDS: dict[str, tuple[str, ...]] = {
    "prediction": ("request_time", "endpoint", "status", "latency_us", "request_body_sha256", "features", "outputs",
                   "request_body", "missing"),
    "model": ("artifact_uri", "artifact_sha256", "framework", "registered_at"),
    "run": ("state", "started", "hyperparameters", "seeds", "metrics"),
    "commit": ("repo", "commit", "branch", "dirty", "entrypoint"),
    "environment": ("python", "packages_sha256", "package_count", "container_image", "container_digest", "os", "cpu",
                    "gpus"),
    "dataset": ("digest", "license", "consent", "pii_tags", "row_count"),
    "feature_set": ("digest", "features"),
    "evaluation": ("dataset", "slice", "metrics", "passed"),
    "approval": ("outcome", "actor", "role", "rationale", "event_time"),
    "deployment": ("action", "environment", "endpoint", "event_time", "reason"),
    "ground_truth": ("label", "outcome", "source", "observed_time"),
}
CHAIN_TITLES = {"prediction": "prediction", "model": "model version", "run": "training run", "commit": "code",
                "environment": "environment", "dataset": "dataset", "feature_set": "feature set",
                "evaluation": "evaluation", "approval": "decision", "deployment": "deployment",
                "ground_truth": "ground truth"}
BADGES = {"verified": "[green]✓ verified[/green]", "not_verified": "[bold red]✗ NOT VERIFIED[/bold red]",
          "unchecked": "[yellow]? unchecked[/yellow]"}


def _chain_value(kind: str, name: str, value: Any) -> str:
    """A field of a chain node as one readable cell."""
    if kind == "feature_set" and name == "features":
        parts = []
        for feature in value or []:
            code = feature.get("code") or {}
            where = ":".join(str(p) for p in (code.get("path"), code.get("symbol")) if p)
            at = f"@{_cell(code['commit'])}" if code.get("commit") else ""
            parts.append(f"{feature.get('name')} <- {where}{at}" if where or at else str(feature.get("name")))
        return "; ".join(parts)
    if kind == "evaluation" and name == "metrics":
        return "; ".join(_metric(m) for m in value or [])
    if isinstance(value, dict):
        return ", ".join(f"{key}={_cell(item)}" for key, item in value.items())
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _cell(value)


def _metric(metric: dict[str, Any]) -> str:
    text = f"{metric.get('name')} {_cell(metric.get('value'))}"
    if metric.get("threshold") is None:
        return text
    passed = metric.get("passed")
    outcome = ", passed" if passed is True else ", failed" if passed is False else ""
    return f"{text} (threshold {_cell(metric.get('threshold'))}{outcome})"


def trace_renderables(trace: dict[str, Any]) -> list[Any]:
    """The human output of a complete trace: a heading, then per node its kind, label and badge, its event
    id, the fields a reader looks for, and why a record is not verified. Fits any console width (values fold)."""
    from rich.markup import escape
    from rich.padding import Padding
    from rich.text import Text

    chain = trace["chain"]
    nodes = chain["nodes"]
    counts: dict[str, int] = {}
    for item in nodes:
        status = item["verification"]["status"]
        counts[status] = counts.get(status, 0) + 1
    summary = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in sorted(counts.items()))
    out: list[Any] = [Text.from_markup(f"[bold]prediction {trace.get('prediction_id')}[/bold]: "
                                       f"{len(nodes)} records ({summary})")]
    relation: dict[str, str] = {}
    for edge in chain.get("edges", []):
        relation.setdefault(edge["to"], edge["relation"])
    for item in nodes:
        kind, check = item["kind"], item["verification"]
        via = relation.get(item["id"])
        heading = (f"[bold cyan]{CHAIN_TITLES.get(kind, kind)}[/bold cyan] {escape(item['label'])}  "
                   f"{BADGES.get(check['status'], check['status'])}")
        if via:
            heading += f"  [dim]({via.replace('_', ' ')})[/dim]"
        out.append(Text(""))
        out.append(Text.from_markup(heading))
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(overflow="fold")
        fields = item.get("fields") or {}
        for name in CHAIN_FIELDS.get(kind, ()):
            value = fields.get(name)
            if value in (None, "", [], {}):
                continue
            grid.add_row(name.replace("_", " "), _chain_value(kind, name, value))
        if kind == "deployment":
            grid.add_row("in force", "yes, at request time" if fields.get("in_force") else "no: the one it replaced")
        if item.get("event_id"):
            grid.add_row("event", str(item["event_id"]))
        if check.get("anchor"):
            grid.add_row("anchor", Text(*_anchor_text(check["anchor"])))
        if check["status"] != "verified":
            grid.add_row(Text("why", style="red"), Text(str(check.get("detail", "")), style="red"))
        out.append(Padding(grid, (0, 0, 0, 2), expand=False))
    if any(item["verification"].get("signature") is None for item in nodes):
        out.append(Text(""))
        out.append(Text("signatures not checked: the server trusts no producer keys "
                        "(PROVLINE_EVIDENCE__TRUSTED_KEYS)", style="yellow"))
    out.append(Text(""))
    anchors = [item["verification"]["anchor"]["status"] for item in nodes if item["verification"].get("anchor")]
    if anchors:
        tally = ", ".join(f"{anchors.count(status)} {status.replace('_', ' ')}" for status in sorted(set(anchors)))
        out.append(Text(f"anchors: {tally}; `provline verify --anchor` checks every session against them",
                        style="dim"))
    else:
        out.append(Text("anchors are checked by `provline verify --anchor` (the server reads none: "
                        "PROVLINE_ANCHOR__DESTINATION and PROVLINE_ANCHOR__PUBLIC_KEYS)", style="dim"))
    return out


def _anchor_text(anchor: dict[str, Any]) -> tuple[str, str]:
    """A record's anchor status in words, and its colour."""
    created = str(anchor.get("created") or "")[:19].replace("T", " ")
    shown = {"anchored": (f"anchored ({created})", "green"),
             "pending": (f"pending: stored after the newest anchor ({created})", "yellow"),
             "unanchored": ("no trusted anchor lists its session", "yellow"),
             "head_missing": (f"the head its anchor ({created}) signed is gone from the store", "red")}
    return shown.get(str(anchor.get("status")), (str(anchor.get("status")), ""))


def _query(api: str | None) -> Callable[[str], list[dict[str, Any]]]:
    """Rows of one read-only query through the audit API; an error exits with the API's reason."""
    client = _client(api)

    def query(statement: str) -> list[dict[str, Any]]:
        with _exits_on_errors():
            return client.query(statement)

    return query


@app.command()
def sql(query: str, api: ApiOption = None) -> None:
    """Run one read-only SQL statement against the store and print the result as JSON lines."""
    for row in _query(api)(query):
        print(json.dumps(row, default=str))


@app.command("sql-grants")
def sql_grants() -> None:
    """Print the statements that create the read-only ClickHouse users `/v1/sql` runs as (a server store only)."""
    from urllib.parse import urlsplit

    from provline.sink.sandbox import audit_tables, server_grants, sql_users
    from provline.sink.settings import ServeSettings

    with _exits_on_errors():
        settings = load_settings(ServeSettings)
    database = urlsplit(settings.store.url).path.strip("/") or "default"
    users = sql_users(settings.sql)
    for statement in server_grants(settings.sql, database=database, tables=audit_tables(), users=users):
        print(f"{statement};")


def _answer(api: str | None, path: str, params: dict[str, Any] | None = None) -> Any:
    """The JSON answer of a GET on the audit API; exits 1 (not found / refused) or 2 (unreachable)."""
    with _exits_on_errors():
        return _client(api).answer(path, params)


def _print_rows(rows: list[dict[str, Any]], as_json: bool, title: str, columns: tuple[str, ...] = ()) -> None:
    """Rows as JSON (every field), or as a table of ``columns`` (default: every field) that fits the terminal:
    digests and ids shortened, times to the second; ``--json`` has the full values."""
    if as_json:
        print(json.dumps(rows, indent=2, sort_keys=True, default=str))
        return
    shown = columns or tuple(rows[0] if rows else ())
    cells = [[_cell(row.get(column)) for column in shown] for row in rows]
    widths = [max([len(column), *(len(line[i]) for line in cells)]) for i, column in enumerate(shown)]
    if sum(widths) + 3 * len(shown) + 1 <= console.width:
        table = Table(title=title, title_justify="left")
        for column in shown:
            table.add_column(column, overflow="fold")
        for line in cells:
            table.add_row(*line)
        console.print(table)
        return
    # too narrow for one line per row: one block per row, a field per line, values whole
    console.print(title)
    for line in cells:
        block = Table(show_header=False, box=None, padding=(0, 1))
        block.add_column(style="bold cyan", no_wrap=True)
        block.add_column(overflow="fold")
        for column, cell in zip(shown, line, strict=True):
            block.add_row(column, cell)
        console.print(block)
        console.print()


_DIGEST = re.compile(r"^(?:sha256:|hmac-sha256:)?[0-9a-f]{32,}$")
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)")
SHORT_DIGEST = 12


def _cell(value: Any) -> str:
    """One table cell: a digest or commit cut to its first characters, a time to the second, lists joined."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(_cell(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    if _DIGEST.match(text):
        return text[: text.index(":") + 1 + SHORT_DIGEST] if ":" in text else text[:SHORT_DIGEST]
    stamp = _TIMESTAMP.match(text)
    return f"{stamp.group(1)} {stamp.group(2)}" if stamp else text


RUN_COLUMNS = ("run_id", "name", "state", "stage", "owner", "code_commit", "started")
MODEL_COLUMNS = ("model_name", "model_version", "last_action", "environment", "run_id", "evaluations_passed",
                 "registered")
DRIFT_COLUMNS = ("model_version", "feature", "metric", "window_start", "value", "p_value", "breached", "sample_size")


JsonOption = Annotated[bool, typer.Option("--json", help="print JSON")]
SinceOption = Annotated[str | None, typer.Option(help="from this time (ISO 8601)")]
UntilOption = Annotated[str | None, typer.Option(help="before this time (ISO 8601)")]
ProjectOption = Annotated[str | None, typer.Option(help="only this project (the producing job or service)")]
OwnerOption = Annotated[str | None, typer.Option(help="only this owner")]
LimitOption = Annotated[int, typer.Option(help="at most this many rows")]


@app.command()
def migrate() -> None:
    """Create or upgrade the ClickHouse schema (idempotent; applied files are recorded). Not while serving chDB."""
    from provline.sink.settings import ServeSettings
    from provline.sink.store import migrate as apply_migrations
    from provline.sink.store import open_store

    with _exits_on_errors():
        store = load_settings(ServeSettings).store
    client = open_store(store.url)
    try:
        applied = apply_migrations(client, cluster=store.cluster, retention_days=store.retention_days)
    finally:
        client.close()
    console.print(f"applied {', '.join(applied)}" if applied else "the store is up to date")


@app.command()
def lineage(
    direction: Annotated[str, typer.Argument(help="upstream or downstream")],
    entity: Annotated[str, typer.Argument(help="kind:id, e.g. dataset:sha256:…, model:churn@3, prediction:<id>")],
    kind: Annotated[list[str] | None, typer.Option("--kind", help="only nodes of this kind (repeatable)")] = None,
    max_depth: Annotated[int, typer.Option(help="hops to walk at most")] = 12,
    limit: LimitOption = 1000,
    as_json: JsonOption = False,
    api: ApiOption = None,
) -> None:
    """Walk the lineage graph from ENTITY, e.g. every prediction downstream of a dataset."""
    body = _answer(api, f"/v1/lineage/{direction}",
                   {"node": entity, "kinds": kind, "max_depth": max_depth, "limit": limit})
    _print_rows(body["nodes"], as_json, f"{direction} of {entity}")


@app.command()
def runs(
    since: SinceOption = None, until: UntilOption = None, project: ProjectOption = None, owner: OwnerOption = None,
    limit: LimitOption = 100, as_json: JsonOption = False, api: ApiOption = None,
) -> None:
    """Pipeline runs, newest first."""
    body = _answer(api, "/v1/runs", {"since": since, "until": until, "project": project, "owner": owner,
                                     "limit": limit})
    _print_rows(body["runs"], as_json, "runs (all fields: --json)", RUN_COLUMNS)


@app.command()
def models(
    model: Annotated[str | None, typer.Argument(help="only this model name")] = None,
    since: SinceOption = None, until: UntilOption = None, project: ProjectOption = None, owner: OwnerOption = None,
    limit: LimitOption = 100, as_json: JsonOption = False, api: ApiOption = None,
) -> None:
    """Registered model versions with their latest deployment and evaluations."""
    body = _answer(api, "/v1/models", {"model": model, "since": since, "until": until, "project": project,
                                       "owner": owner, "limit": limit})
    _print_rows(body["models"], as_json, "models (all fields: --json)", MODEL_COLUMNS)


# The model page's sections as tables: (section, title, {column header: field}), chosen to fit 80
# columns (a row too wide for the terminal is shown as a block); --json has every field.
MODEL_PAGE: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("versions", "versions", {"version": "version", "artifact": "artifact_sha256", "run": "run_id",
                              "registered": "registered_at"}),
    ("evaluations", "evaluations", {"when": "event_time", "version": "version", "metric": "metric", "value": "value",
                                    "threshold": "threshold", "passed": "passed"}),
    ("approvals", "approvals", {"when": "event_time", "version": "version", "decision": "decision",
                                "actor": "actor", "role": "role"}),
    ("deployments", "deployment timeline", {"when": "event_time", "version": "version", "action": "action",
                                            "replaced": "previous_version", "env": "environment",
                                            "endpoint": "endpoint"}),
    ("traffic", "predictions per window", {"window": "window_start", "version": "version",
                                           "predictions": "predictions"}),
    ("drift", "drift per feature", {"window": "window_start", "version": "version", "feature": "feature",
                                    "stat": "statistic", "value": "value", "threshold": "threshold",
                                    "breach": "breached"}),
)


@app.command()
def model(
    name: Annotated[str, typer.Argument(help="model name")],
    since: SinceOption = None, until: UntilOption = None,
    window_s: Annotated[int, typer.Option("--window-s", help="seconds per traffic window")] = 3600,
    limit: Annotated[int, typer.Option(help="at most this many rows per section")] = 1000,
    as_json: JsonOption = False, api: ApiOption = None,
) -> None:
    """MODEL's page: versions, evaluations, approvals, deployment timeline, traffic per version, drift."""
    from urllib.parse import quote

    body = _answer(api, f"/v1/models/{quote(name, safe='')}/overview",
                   {"since": since, "until": until, "window_s": window_s, "limit": limit})
    if as_json:
        print(json.dumps(body, indent=2, sort_keys=True))
        return
    for section, title, columns in MODEL_PAGE:
        rows = [{column: row[field] for column, field in columns.items()} for row in body[section]]
        if rows:
            _print_rows(rows, False, f"{name}: {title}")
        else:
            console.print(f"{name}: no {title}")
    if body.get("truncated"):
        console.print(f"[yellow]cut at {limit} rows: {', '.join(body['truncated'])}; narrow with --since and "
                      "--until, or raise --limit[/yellow]")


@app.command()
def drift(
    model: Annotated[str, typer.Argument(help="model name, or NAME@VERSION")],
    since: SinceOption = None, until: UntilOption = None, project: ProjectOption = None,
    breached: Annotated[bool, typer.Option("--breached", help="only breached windows")] = False,
    limit: LimitOption = 1000, as_json: JsonOption = False, api: ApiOption = None,
) -> None:
    """Drift statistics of MODEL per window, feature and metric."""
    name, _, version = model.partition("@")
    body = _answer(api, f"/v1/drift/{name}", {"version": version, "since": since, "until": until,
                                              "project": project, "breached_only": breached, "limit": limit})
    _print_rows(body["drift"], as_json, f"drift of {model} (all fields: --json)", DRIFT_COLUMNS)


PERFORMANCE_COLUMNS = ("model_version", "window_start", "metric", "value", "sample_count", "ci_low", "ci_high",
                       "baseline")


@app.command()
def performance(
    model: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[str | None, typer.Option("--version", help="only this model version")] = None,
    refresh: Annotated[bool, typer.Option("--refresh", help="compute now instead of reading the last round")] = False,
    as_json: JsonOption = False, api: ApiOption = None,
) -> None:
    """MODEL's performance per version and window (labels joined to predictions), with its evaluated baseline."""
    body = _answer(api, f"/v1/performance/{model}", {"version": version or "", "refresh": refresh})
    _print_rows(body["performance"], as_json, f"performance of {model} (all fields: --json)", PERFORMANCE_COLUMNS)


@app.command()
def export(
    subject: Annotated[str, typer.Argument(help="a prediction id, or MODEL@VERSION")],
    out: Annotated[Path, typer.Option("--out", "-o", help="directory to write the bundle into")] = Path("evidence"),
    fmt: Annotated[str, typer.Option("--format", help="json, prov (W3C PROV-JSON) or openlineage")] = "json",
    api: ApiOption = None,
) -> None:
    """Write a self-contained evidence bundle (signed when serve has PROVLINE_EVIDENCE__SIGNING_KEY)."""
    import base64

    body = _answer(api, f"/v1/evidence/{subject}", {"format": fmt})
    out.mkdir(parents=True, exist_ok=True)
    for name, data in body["files"].items():
        (out / name).write_bytes(base64.b64decode(data))
    console.print(f"wrote {len(body['files'])} files to {out}")


@app.command()
def verify(
    bundle: Annotated[Path | None, typer.Argument(help="an evidence bundle directory; omit to check the store")] = None,
    public_key: Annotated[str | None, typer.Option(help="bundles: the Ed25519 public key (PEM or base64) the bundle "
                                                       "must be signed with")] = None,
    trusted_keys: Annotated[Path | None, typer.Option(help="bundles: JSON file {producer: [public keys]} its events "
                                                           "must be signed by")] = None,
    session: Annotated[str | None, typer.Option(help="check only this producer session in the store")] = None,
    anchor: Annotated[list[str] | None, typer.Option("--anchor", help="an anchor file, directory or URL to check "
                                                                      "the store against (repeatable)")] = None,
    anchor_public_key: Annotated[list[str] | None, typer.Option(
        help="a key anchors must be signed by (repeatable; default: PROVLINE_ANCHOR__PUBLIC_KEYS)")] = None,
    api: ApiOption = None,
) -> None:
    """Check a bundle offline, or the store: every event's bytes, chains, signatures, columns, derived rows
    and, with --anchor, that nothing anchored is gone. Exits 1 listing every problem."""
    if bundle is not None:
        _verify_bundle(bundle, public_key, trusted_keys)
        return
    with _exits_on_errors():
        claims = _checked_anchors(anchor or [], anchor_public_key)
        client = _client(api)
    with _exits_on_errors():
        if claims:
            status, body = client.post("/v1/verify", {"session": session or "", "anchors": claims})
            if status != 200:
                console.print(f"[red]audit API answered {status}: {body}[/red]")
                raise typer.Exit(2)
        else:
            body = client.answer("/v1/verify", {"session": session})
    for finding in body["findings"]:
        where = " ".join(part for part in (f"session {finding['session']}" if finding["session"] else "",
                                           finding["table"], finding["event_id"] and f"event {finding['event_id']}")
                         if part)
        console.print(f"[red]{finding['problem']}: {where}: {finding['detail']}[/red]")
    if body["unsealed"]:
        console.print(f"[yellow]{len(body['unsealed'])} sessions have no final seal (still running, or ended without "
                      "closing); their last events are vouched for only by an anchor[/yellow]")
    if body["findings"]:
        raise typer.Exit(1)
    console.print(f"[green]{body['events']} events in {body['sessions']} sessions: every chain intact, every column "
                  f"matches its event{', every event signed by a trusted key' if body['signatures'] else ''}"
                  f"{f', consistent with {len(claims)} anchors' if claims else ''}[/green]")


def _verify_bundle(bundle: Path, public_key: str | None, trusted_keys: Path | None) -> None:
    from provline.schemas import default_catalog
    from provline.schemas.integrity import load_public_key
    from provline.sink.evidence import verify_bundle
    from provline.sink.verify import Trust

    files = {path.name: path.read_bytes() for path in sorted(bundle.iterdir()) if path.is_file()}
    key = load_public_key(public_key) if public_key else None
    trust = Trust.from_config(json.loads(trusted_keys.read_text())) if trusted_keys else Trust()
    problems = verify_bundle(files, default_catalog(), public_key=key, trust=trust)
    for problem in problems:
        console.print(f"[red]{problem}[/red]")
    if problems:
        raise typer.Exit(1)
    console.print(f"[green]{bundle}: every file matches the manifest, the manifest its signature"
                  f"{' and every event its producer' if trust.enabled else ''}[/green]")


def _checked_anchors(sources: list[str], keys: list[str] | None) -> list[dict[str, Any]]:
    """Every anchor at ``sources``, its signature checked with the trusted keys; ConfigError listing problems."""
    if not sources:
        return []
    from provline.client import ClientSettings
    from provline.schemas.integrity import load_public_key
    from provline.sink import anchor as anchors

    trusted = [load_public_key(text) for text in (keys or load_settings(ClientSettings).anchor.public_keys)]
    claims, problems = [], []
    for source in sources:
        for name, document in anchors.load(source):
            sessions, found = anchors.check(document, trusted)
            problems += [f"anchor {name}: {problem}" for problem in found]
            claims.append({"name": name, "sessions": [vars(s) for s in sessions]})
    if problems:
        raise ConfigError("; ".join(problems))
    return claims


@app.command("anchor")
def anchor_command(
    to: Annotated[
        str | None,
        typer.Option("--to", help="a directory or http(s) URL (default: PROVLINE_ANCHOR__DESTINATION)"),
    ] = None,
    method: Annotated[
        str, typer.Option(help="for an http(s) destination: POST, or PUT (an object-store key)")
    ] = "POST",
    api: ApiOption = None,
) -> None:
    """Sign every session's chain head and publish it outside the store (run it on a schedule)."""
    from provline.client import ClientSettings
    from provline.schemas.integrity import load_private_key
    from provline.sink import anchor as anchors

    with _exits_on_errors():
        settings = load_settings(ClientSettings).anchor
        destination = to or settings.destination
        if settings.signing_key is None or destination is None:
            raise ConfigError("anchoring needs PROVLINE_ANCHOR__SIGNING_KEY and a destination (--to or "
                              "PROVLINE_ANCHOR__DESTINATION)")
        signer = load_private_key(settings.signing_key.get_secret_value())
        heads = _client(api).answer("/v1/anchor")["sessions"]
    broken = [h["session"] for h in heads if not h["intact"]]
    document = anchors.build(anchors.anchored_sessions(heads), signer)
    where = anchors.publish(document, destination, method=method.upper())
    console.print(f"anchored {len(document['sessions'])} sessions, root {document['root'][:16]}…, at {where}")
    if broken:
        console.print(f"[red]not anchored, their chains are broken (run provline verify): {', '.join(broken)}[/red]")
        raise typer.Exit(1)


# ---------------------------------------------------------------- recording


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="run name (default: the command's name)")] = None,
    stage: Annotated[str | None, typer.Option(help="pipeline stage, e.g. training")] = None,
) -> None:
    """Record any command as a run: provline run [--name N] -- COMMAND [ARGS...]."""
    from provline.producers import Lineage
    from provline.producers.command import run_command

    with _exits_on_errors():
        lineage = Lineage(producer_name="provline-run")
    try:
        code = run_command(list(ctx.args), lineage, name=name, stage=stage)
    finally:
        lineage.close()
    raise typer.Exit(code)


@app.command()
def promote(
    model: str,
    version: str,
    to: Annotated[str, typer.Option("--to", help="target environment, e.g. production")],
    endpoint: Annotated[str, typer.Option(help="endpoint the model will serve, e.g. /predict")],
    policy: Annotated[Path | None, typer.Option(help="promotion policy (JSON or YAML)")] = None,
    reason: Annotated[str | None, typer.Option(help="why, recorded with the Deployment")] = None,
    api: ApiOption = None,
) -> None:
    """Record a promotion only if the model's lineage is complete; otherwise list what is missing."""
    from provline.producers import Lineage
    from provline.sink.facts import current_deployment, promotion_gaps
    from provline.sink.promotion import PromotionPolicy

    query = _query(api)
    missing = promotion_gaps(query, model, version, PromotionPolicy.load(policy), to)
    if missing:
        console.print(f"[red]{model}@{version} cannot be promoted to {to}; missing:[/red]")
        for item in missing:
            console.print(f"  - {item}")
        raise typer.Exit(1)
    previous = current_deployment(query, endpoint, to)
    with _exits_on_errors():
        lineage = Lineage(producer_name="provline-promote")
    lineage.deploy(model, version, endpoint=endpoint, environment=to, action="PROMOTE", reason=reason,
                   previous_version=previous["model_version"] if previous else None)
    if not lineage.close():
        console.print("[red]the Deployment event was not delivered; check PROVLINE_KAFKA__BOOTSTRAP[/red]")
        raise typer.Exit(2)
    console.print(f"[green]promoted {model}@{version} to {to} on {endpoint}[/green]")


@app.command()
def openlineage(
    run_id: Annotated[str | None, typer.Argument(help="the run to export")] = None,
    model: Annotated[str | None, typer.Option("--model", help="export NAME@VERSION's deployments instead: one "
                                              "event per endpoint, with endpointDeploymentChain and "
                                              "stageLifecycle facets")] = None,
    namespace: Annotated[str, typer.Option(help="OpenLineage namespace of the job")] = "provline",
    post: Annotated[str | None, typer.Option(help="also POST each event to this OpenLineage endpoint, "
                                                  "e.g. http://marquez:5000/api/v1/lineage")] = None,
    api: ApiOption = None,
) -> None:
    """Export a recorded run, or a model version's deployments, as OpenLineage RunEvents (JSON, one per line)."""
    import httpx

    from provline.sink.facts import (
        datasets,
        evaluations_of_run,
        model_deployments,
        model_facts,
        models_of_run,
        run_states,
    )
    from provline.sink.openlineage import deployments_to_openlineage, run_to_openlineage

    if (run_id is None) == (model is None):
        console.print("[red]give a run id or --model NAME@VERSION (one of them)[/red]")
        raise typer.Exit(2)
    query = _query(api)
    if model is not None:
        name, _, version = model.rpartition("@")
        if not name or not version:
            console.print(f"[red]--model wants NAME@VERSION, not {model!r}[/red]")
            raise typer.Exit(2)
        facts = model_facts(query, name, version)
        if facts.model is None:
            console.print(f"[yellow]no model version {name}@{version} in the store[/yellow]")
            raise typer.Exit(1)
        events = deployments_to_openlineage(facts.model, deployments=model_deployments(query, name),
                                            decisions=facts.decisions, namespace=namespace)
        if not events:
            console.print(f"[yellow]{name}@{version} was never deployed[/yellow]")
            raise typer.Exit(1)
    else:
        assert run_id is not None
        states = run_states(query, run_id)
        if not states:
            console.print(f"[yellow]no run {run_id} in the store[/yellow]")
            raise typer.Exit(1)
        digests = sorted({d for s in states for d in (s.get("inputs") or []) + (s.get("outputs") or [])})
        models = models_of_run(query, run_id)
        events = run_to_openlineage(states, datasets=datasets(query, digests), models=models,
                                    evaluations=evaluations_of_run(query, run_id, models), namespace=namespace)
    timeout = _client(api).timeout_s
    for event in events:
        print(json.dumps(event, sort_keys=True))
        if post:
            response = httpx.post(post, json=event, timeout=timeout)
            if response.status_code >= 300:
                console.print(f"[red]{post} refused the event: {response.status_code} {response.text[:200]}[/red]")
                raise typer.Exit(2)
