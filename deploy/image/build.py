"""Build provline's image here, with podman, no Docker engine and no registry: ``python -m deploy.image.build``.

1. podman's configuration, in build/image/: containers.conf (no default ulimits, which this sandbox
   refuses to raise; runc; no systemd) and storage.conf (images kept under build/image/storage).
   Every podman call goes through :func:`podman`, which passes both.
2. The base image: Debian bookworm (minbase + python3, python3-venv) made by debootstrap into
   build/image/rootfs once, then ``podman import``-ed as ``BASE_IMAGE``.
3. A wheelhouse of provline's dependencies, made on the host by pip (build/image/wheels, remade when
   pyproject.toml's dependencies change): bookworm's python3 is 3.11 like this machine's, so the wheels
   fit. The image is then built with the wheelhouse mounted, no index and no network: hermetic, and a
   rebuild after a code change downloads nothing.
4. ``podman build`` of deploy/image/Containerfile (docker format, which keeps its HEALTHCHECK).

Needs root (debootstrap, podman's storage) and Debian's podman, runc and debootstrap (``make image``
installs them). Each step prints what it does; a failing one names its log.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "build" / "image"
ROOTFS = WORK / "rootfs"
WHEELS = WORK / "wheels"
CONTAINERS_CONF = WORK / "containers.conf"
STORAGE_CONF = WORK / "storage.conf"
BASE_IMAGE = "localhost/provline-base:bookworm"
IMAGE = "localhost/provline:latest"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv")
# Trimmed from the rootfs before import: debootstrap's downloaded packages, apt's lists, docs and translations.
ROOTFS_TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale",
               "usr/share/info")
BASE_PYTHON = (3, 11)  # bookworm's python3: the wheelhouse must be made by the same minor version


class BuildError(Exception):
    """A step failed; the message says which and what to do."""


def podman_env() -> dict[str, str]:
    """The environment for podman: this build's containers.conf and storage.conf (written on first use)."""
    WORK.mkdir(parents=True, exist_ok=True)
    CONTAINERS_CONF.write_text(
        "# written by deploy/image/build.py\n"
        "[containers]\n"
        "default_ulimits = []  # the sandbox refuses to raise rlimits; containers keep the caller's\n"
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"  # no systemd here\n'
        'events_logger = "file"\n'
        f'tmp_dir = "{WORK / "tmp"}"  # libpod\'s run state beside this storage, apart from any other podman\'s\n'
    )
    STORAGE_CONF.write_text(
        "# written by deploy/image/build.py\n"
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{WORK / "storage"}"\n'
        f'runroot = "{WORK / "run"}"\n'
    )
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF), "CONTAINERS_STORAGE_CONF": str(STORAGE_CONF)}


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS`` with this build's configuration; output captured. Blocks up to ``timeout``
    seconds. ``check``: a non-zero exit raises :class:`BuildError` with podman's own words."""
    if shutil.which("podman") is None:
        raise BuildError("podman is not installed; run `make image` (it installs podman, runc and debootstrap)")
    result = subprocess.run(["podman", *args], env=podman_env(), capture_output=True, timeout=timeout, text=True)
    if check and result.returncode != 0:
        raise BuildError(f"`podman {' '.join(args)}` exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result


def _run_logged(step: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
    """Run argv with its output to ``log``; a failure raises with the log's tail and path."""
    with log.open("w") as out:
        code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise BuildError(f"{step} failed (exit {code}); its last lines, full log in {log}:\n{tail}")


def _say(message: str) -> None:
    print(f"image: {message}", flush=True)


def build_base() -> None:
    """Debian bookworm minbase with python3 as ``BASE_IMAGE``; debootstrap runs once (stamped)."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        _say(f"base {BASE_IMAGE} present")
        return
    stamp = ROOTFS / ".provline-rootfs"
    if not stamp.exists():
        if shutil.which("debootstrap") is None:
            raise BuildError("debootstrap is not installed; run `make image` (it installs it)")
        if os.geteuid() != 0:
            raise BuildError("debootstrap needs root; run as root, or build with a registry: "
                             "podman build --format docker -f deploy/image/Containerfile .")
        shutil.rmtree(ROOTFS, ignore_errors=True)  # a half-made rootfs from an interrupted run
        _say(f"debootstrap bookworm (minbase + {', '.join(BASE_PACKAGES)}) into {ROOTFS.relative_to(REPO)}")
        _run_logged("debootstrap", ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                                    "bookworm", str(ROOTFS), DEBIAN_MIRROR], WORK / "debootstrap.log")
        for folder in ROOTFS_TRIM:
            shutil.rmtree(ROOTFS / folder, ignore_errors=True)
        stamp.touch()
    _say(f"podman import the rootfs as {BASE_IMAGE}")
    tar = subprocess.Popen(["tar", "-C", str(ROOTFS), "--numeric-owner", "--exclude=./.provline-rootfs", "-c", "."],
                           stdout=subprocess.PIPE)
    imported = subprocess.run(["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout, env=podman_env(),
                              capture_output=True, text=True)
    tar.wait()
    if tar.returncode != 0 or imported.returncode != 0:
        raise BuildError(f"podman import of {ROOTFS} failed: {imported.stderr.strip()}; delete {ROOTFS} to "
                         "debootstrap it again")


def _dependencies() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [*project["build-system"]["requires"], *project["project"]["dependencies"]]


def build_wheelhouse() -> None:
    """Wheels of provline's dependencies and build requirements for python 3.11 (remade when they change)."""
    if sys.version_info[:2] != BASE_PYTHON:
        raise BuildError(f"the wheelhouse must be made by Python {'.'.join(map(str, BASE_PYTHON))} (bookworm's "
                         f"python3), not {sys.version.split()[0]}; run this with a 3.11 interpreter")
    requirements = "\n".join(_dependencies()) + "\n"
    digest = hashlib.sha256(requirements.encode()).hexdigest()
    stamp = WHEELS / ".requirements-sha256"
    if stamp.exists() and stamp.read_text() == digest:
        _say(f"wheelhouse {WHEELS.relative_to(REPO)} up to date")
        return
    shutil.rmtree(WHEELS, ignore_errors=True)
    WHEELS.mkdir(parents=True)
    (WORK / "requirements.txt").write_text(requirements)
    _say(f"pip wheel provline's dependencies into {WHEELS.relative_to(REPO)}")
    _run_logged("pip wheel", [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(WHEELS),
                              "-r", str(WORK / "requirements.txt")], WORK / "pip-wheel.log")
    stamp.write_text(digest)


def _git(*args: str) -> str | None:
    result = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return result.stdout.strip() or None if result.returncode == 0 else None


def build_image() -> None:
    """``podman build`` of the Containerfile on the local base, offline from the wheelhouse."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    labels = {"VERSION": version, "REVISION": _git("rev-parse", "HEAD") or "unknown",
              "SOURCE": _git("remote", "get-url", "origin") or "unknown"}
    _say(f"podman build {IMAGE} (provline {version}, revision {labels['REVISION'][:12]})")
    args = ["podman", "build", "--format", "docker", "--network", "none",
            "--file", str(REPO / "deploy/image/Containerfile"),
            "--ignorefile", str(REPO / "deploy/image/Containerfile.dockerignore"),
            "--tag", IMAGE, "--tag", f"localhost/provline:{version}",
            "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", "PIP_FIND_LINKS=/wheels",
            "--build-arg", "PIP_NO_INDEX=1", "--volume", f"{WHEELS}:/wheels:ro"]
    for name, value in labels.items():
        args += ["--build-arg", f"{name}={value}"]
    _run_logged("podman build", [*args, str(REPO)], WORK / "podman-build.log", env=podman_env())


def main() -> int:
    started = time.monotonic()
    try:
        build_base()
        build_wheelhouse()
        build_image()
        size = podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip()
    except BuildError as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 1
    _say(f"built {IMAGE}, {int(size) / 1e6:.0f} MB, in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
