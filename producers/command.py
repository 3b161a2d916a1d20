"""``provline run -- COMMAND ...``: record any command as a run, for jobs that cannot import provline.

The command runs as a child process with the same standard streams; SIGINT and SIGTERM are
passed on to it. The run records its argv, exit code, duration, code version and environment;
a non-zero exit code makes the run FAILED. Blocks until the command ends.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from types import FrameType

from provline.producers.lineage import Lineage


def run_command(argv: list[str], lineage: Lineage, *, name: str | None = None, stage: str | None = None) -> int:
    """Run ``argv`` as a recorded run; returns its exit code (127 when it cannot be started)."""
    if not argv:
        raise ValueError("no command given: provline run -- COMMAND [ARGS...]")
    with lineage.run(name or Path(argv[0]).name, stage=stage or "command", argv=argv) as run:
        try:
            child = subprocess.Popen(argv)
        except OSError as exc:
            run.exit_code = 127
            raise SystemExit(f"provline run: cannot start {argv[0]!r}: {exc.strerror}") from exc

        def forward(signum: int, _frame: FrameType | None) -> None:
            child.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            run.exit_code = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return int(run.exit_code)
