"""What a run captures about itself: code version and environment. Pure reads, no events.

Each function returns what it can find and ``None`` (or empty) for what it cannot; none raises
because a job ran outside git or on a machine without some tool.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ENV_VAR_ALLOW_LIST = (
    "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED", "TZ", "LANG",
)
GIT_TIMEOUT_S = 5.0


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def code_version(cwd: Path | None = None, argv: list[str] | None = None) -> dict[str, Any]:
    """Git repo, commit, branch, dirty flag (and SHA-256 of the uncommitted diff), entrypoint, argv."""
    where = cwd or Path.cwd()
    argv = list(sys.argv if argv is None else argv)
    commit = _git(["rev-parse", "HEAD"], where)
    status = _git(["status", "--porcelain"], where) if commit else None
    diff = _git(["diff", "HEAD"], where) if status else None
    return {
        "repo": (_git(["remote", "get-url", "origin"], where) or _git(["rev-parse", "--show-toplevel"], where))
        if commit else None,
        "commit": commit,
        "branch": _git(["rev-parse", "--abbrev-ref", "HEAD"], where) if commit else None,
        "dirty": bool(status),
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
        "entrypoint": argv[0] if argv else None,
        "argv": argv,
    }


def installed_packages() -> dict[str, str]:
    packages: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages[name.lower()] = dist.version
    return dict(sorted(packages.items()))


def packages_digest(packages: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{n}=={v}\n" for n, v in sorted(packages.items())).encode()).hexdigest()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment() -> dict[str, Any]:
    """Python, packages (and their digest), OS, kernel, CPU, memory, allow-listed env vars."""
    packages = installed_packages()
    return {
        "python": platform.python_version(),
        "packages": packages,
        "packages_sha256": packages_digest(packages),
        "os": platform.platform(),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "gpus": [],
        "accelerator_drivers": {},
        "container_image": os.environ.get("CONTAINER_IMAGE"),
        "container_digest": None,
        "env_vars": {name: os.environ[name] for name in ENV_VAR_ALLOW_LIST if name in os.environ},
    }
