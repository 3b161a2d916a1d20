"""The image's HEALTHCHECK: GET the health endpoint of the provline service this container runs.

The service is read from PID 1's arguments (the image's ENTRYPOINT is ``provline``), its port from the
same ``PROVLINE_*`` variable the service reads (or the sidecar's ``--admin-port`` option), defaulting
as the service does. ``HEALTHCHECK_URL`` overrides all of it. Standard library only, so a probe
every 30 s costs a few milliseconds, not an import of provline. Exit 0: healthy; 1: not.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_S = 4.0  # inside the HEALTHCHECK's --timeout=5s


@dataclass(frozen=True)
class Probe:
    variable: str  # the setting holding the port
    default_port: int  # the setting's default (tests/deploy/test_image.py checks it against the settings)
    path: str
    option: str | None = None  # a command-line option that overrides the variable


PROBES = {
    "serve": Probe("PROVLINE_API__PORT", 8700, "/healthz"),
    "sidecar": Probe("PROVLINE_SIDECAR__ADMIN_PORT", 9090, "/healthz", option="--admin-port"),
    "processors": Probe("PROVLINE_PROCESSORS__WEB_PORT", 6066, "/healthz"),
}


def option_value(argv: Sequence[str], option: str) -> str | None:
    """The value of ``--option VALUE`` or ``--option=VALUE`` in argv, the last one winning."""
    found = None
    for index, arg in enumerate(argv):
        if arg == option and index + 1 < len(argv):
            found = argv[index + 1]
        elif arg.startswith(option + "="):
            found = arg.split("=", 1)[1]
    return found


def health_url(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """The URL that says whether the service in ``argv`` (PID 1's arguments) is alive; None for a
    command that serves nothing (a one-shot audit command)."""
    if environ.get("HEALTHCHECK_URL"):
        return environ["HEALTHCHECK_URL"]
    command = next((arg for arg in argv[1:] if arg in PROBES), None)
    if command is None:
        return None
    probe = PROBES[command]
    port = (option_value(argv, probe.option) if probe.option else None) or environ.get(probe.variable)
    return f"http://127.0.0.1:{port or probe.default_port}{probe.path}"


def main() -> int:
    argv = Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    url = health_url(argv, os.environ)
    if url is not None and ":0/" in url:
        print(f"unhealthy: the service was given port 0 (any free port), so {url} cannot be probed; "
              "give it a fixed port or set HEALTHCHECK_URL")
        return 1
    if url is None:
        print(f"healthy: {' '.join(argv)!r} is no provline service; nothing to probe")
        return 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            print(f"healthy: {url} answered {response.status}")
            return 0
    except OSError as exc:  # URLError and HTTPError are OSErrors
        print(f"unhealthy: {url} did not answer 2xx: {exc}; set HEALTHCHECK_URL if the service listens elsewhere")
        return 1


if __name__ == "__main__":
    sys.exit(main())
