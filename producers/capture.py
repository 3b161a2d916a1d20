"""What a run captures about itself: code version and environment. Pure reads, no events.

Each function returns what it can find and ``None`` (or empty) for what it cannot; none raises
because a job ran outside git, outside a container or on a machine without a GPU.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

DEFAULT_ENV_ALLOW_LIST = (
    "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED", "TZ", "LANG",
    "SLURM_JOB_ID", "KUBERNETES_SERVICE_HOST",
)
# Never captured, even when allow-listed: names that usually hold credentials.
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|(^|_)KEY($|_)|AUTH", re.IGNORECASE)
# Variables CI systems and orchestrators commonly set to the image a job runs in.
CONTAINER_IMAGE_VARS = ("CONTAINER_IMAGE", "IMAGE_NAME", "DOCKER_IMAGE", "JOB_IMAGE", "CI_JOB_IMAGE")
CONTAINER_DIGEST_VARS = ("CONTAINER_IMAGE_DIGEST", "IMAGE_DIGEST", "DOCKER_IMAGE_DIGEST")
_CONTAINER_ID = re.compile(r"(?:docker|containerd|crio|libpod|cri-containerd)[-/:]?([0-9a-f]{64})")
COMMAND_TIMEOUT_S = 5.0


def _command(args: list[str], cwd: Path | None = None) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _git(args: list[str], cwd: Path) -> str | None:
    return _command(["git", *args], cwd)


def code_version(cwd: Path | None = None, argv: list[str] | None = None) -> dict[str, Any]:
    """Git repo, commit, branch, dirty flag (and SHA-256 of the uncommitted diff), entrypoint, argv."""
    where = cwd or Path.cwd()
    argv = list(sys.argv if argv is None else argv)
    commit = _git(["rev-parse", "HEAD"], where)
    status = _git(["status", "--porcelain"], where) if commit else None
    diff = _git(["diff", "HEAD"], where) if status else None
    repo = None
    if commit:
        repo = _git(["remote", "get-url", "origin"], where) or _git(["rev-parse", "--show-toplevel"], where)
    return {
        "repo": repo,
        "commit": commit,
        "branch": _git(["rev-parse", "--abbrev-ref", "HEAD"], where) if commit else None,
        "dirty": bool(status),
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
        "entrypoint": argv[0] if argv else None,
        "argv": argv,
    }


def code_reference(function: Callable[..., Any] | Mapping[str, Any]) -> dict[str, Any]:
    """Where a transformation's code lives: repo, commit, path (relative to the repo), symbol."""
    if isinstance(function, Mapping):
        return {key: function.get(key) for key in ("repo", "commit", "path", "symbol")}
    source = inspect.getsourcefile(function)
    path = Path(source).resolve() if source else None
    code = code_version(path.parent if path else None, argv=[])
    top = _git(["rev-parse", "--show-toplevel"], path.parent) if path else None
    relative = path.relative_to(top).as_posix() if path and top else (str(path) if path else None)
    return {"repo": code["repo"], "commit": code["commit"], "path": relative,
            "symbol": f"{function.__module__}.{function.__qualname__}"}


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


def gpus() -> tuple[list[str], dict[str, str]]:
    """GPU names, and driver / CUDA versions, from nvidia-smi and (if already imported) PyTorch."""
    names: list[str] = []
    drivers: dict[str, str] = {}
    listing = _command(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    for line in (listing or "").splitlines():
        name, _, driver = (part.strip() for part in line.partition(","))
        names.append(name)
        drivers["nvidia"] = driver
    header = _command(["nvidia-smi"]) if listing else None
    if header and (match := re.search(r"CUDA Version:\s*([\d.]+)", header)):
        drivers["cuda"] = match.group(1)
    torch = sys.modules.get("torch")  # never imported here: that alone can take seconds
    if torch is not None and getattr(torch.version, "cuda", None):
        drivers["torch_cuda"] = str(torch.version.cuda)
    return names, drivers


def container(environ: Mapping[str, str], cgroup_text: str | None) -> tuple[str | None, str | None]:
    """Container image and digest from the usual variables, or the container id from cgroup data."""
    image = next((environ[name] for name in CONTAINER_IMAGE_VARS if environ.get(name)), None)
    digest = next((environ[name] for name in CONTAINER_DIGEST_VARS if environ.get(name)), None)
    if image and "@sha256:" in image and digest is None:
        digest = "sha256:" + image.split("@sha256:", 1)[1]
    if image is None and cgroup_text and (match := _CONTAINER_ID.search(cgroup_text)):
        image = f"container:{match.group(1)[:12]}"
    return image, digest


def allowed_env(environ: Mapping[str, str], allow_list: Iterable[str]) -> dict[str, str]:
    return {name: environ[name] for name in allow_list if name in environ and not SECRET_NAME.search(name)}


def _cgroup() -> str | None:
    try:
        return Path("/proc/self/cgroup").read_text()
    except OSError:
        return None


def environment(allow_list: Iterable[str] = DEFAULT_ENV_ALLOW_LIST) -> dict[str, Any]:
    """Python, packages (and their digest), OS, kernel, CPU, memory, GPUs, container, allowed env vars."""
    packages = installed_packages()
    gpu_names, drivers = gpus()
    image, digest = container(os.environ, _cgroup())
    return {
        "python": platform.python_version(),
        "packages": packages,
        "packages_sha256": packages_digest(packages),
        "os": platform.platform(),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "gpus": gpu_names,
        "accelerator_drivers": drivers,
        "container_image": image,
        "container_digest": digest,
        "env_vars": allowed_env(os.environ, allow_list),
    }


def seed_everything(seed: int) -> list[str]:
    """Seed random, NumPy and PyTorch (where installed); returns what was seeded."""
    import random

    random.seed(seed)
    seeded = ["random"]
    try:
        import numpy

        numpy.random.seed(seed % 2**32)
        seeded.append("numpy")
    except ImportError:
        pass
    try:
        import torch
    except ImportError:
        return seeded
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    seeded.append("torch")
    return seeded
