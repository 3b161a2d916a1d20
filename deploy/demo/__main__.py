"""``python -m deploy.demo``: train, deploy, serve and trace one prediction end to end."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from rich.console import Console

from deploy.demo.stack import DEMO_API_TOKEN, DemoStack, StackError
from provline.cli import print_trace

SAMPLE_CUSTOMERS = [
    {"tenure_months": 3, "monthly_charges": 95.5, "support_calls": 4},
    {"tenure_months": 48, "monthly_charges": 40.0, "support_calls": 0},
    {"tenure_months": 12, "monthly_charges": 70.25, "support_calls": 2},
]


def wait_for_interrupt() -> None:
    """Block until Ctrl-C (SIGINT), a hang-up or SIGTERM; then ignore them, so stopping the stack is not cut short."""
    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):  # SIGINT too: ignored when started in background
        signal.signal(signum, interrupted)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=None, help="keep data and logs here (default: a temp dir)")
    parser.add_argument("--keep", action=argparse.BooleanOptionalAction, default=None,
                        help="keep everything running for the web console until Ctrl-C (default: when run from a "
                        "terminal)")
    args = parser.parse_args()
    keep = sys.stdin.isatty() if args.keep is None else args.keep
    console = Console()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="provline-demo-"))
    console.print(f"[bold]provline demo[/bold] — data and logs in {workdir}")
    with DemoStack(workdir) as stack:
        try:
            with console.status("starting the Kafka broker (KRaft, from Maven artifacts)…"):
                stack.start_broker()
            console.print(f"  broker ready at {stack.kafka_bootstrap}")
            with console.status("starting provline serve (sink + audit API) and the stream processors…"):
                stack.start_platform()
            console.print(f"  audit API at {stack.api_url}")
            with console.status("training the churn model; recording dataset, run, model, deployment…"):
                facts = stack.train()
            console.print(f"  run {facts.run_id} on commit {facts.commit}, accuracy {facts.accuracy:.3f}")
            with console.status("starting the model server and the sidecar…"):
                stack.start_serving(facts.model_path)
            with console.status("sending predictions through the sidecar…"):
                predictions = stack.predict(SAMPLE_CUSTOMERS)
            for prediction in predictions:
                console.print(f"  {prediction.prediction_id} -> {prediction.status} "
                              f"{prediction.response_body.decode()}")
            chosen = predictions[0]
            with console.status(f"waiting for the trace of {chosen.prediction_id}…"):
                trace = stack.wait_for_trace(chosen.prediction_id)
        except StackError as exc:
            console.print(f"[red]demo failed:[/red] {exc}")
            return 1
        print_trace(trace)
        console.print(f"\n[bold]web console[/bold] at {stack.console_url} — sign in with the token "
                      f"[bold]{DEMO_API_TOKEN}[/bold] (role admin);\n  this prediction's page is "
                      f"{stack.console_url}predictions/{chosen.prediction_id}")
        if keep:
            console.print("everything keeps running for the console; press Ctrl-C to stop")
            wait_for_interrupt()
        console.print("stopping everything the demo started…")
    return 0


if __name__ == "__main__":
    sys.exit(main())
