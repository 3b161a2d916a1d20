"""The package layout: one namespace, dependencies that point one way, no import cycle, a light job library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The folder of each subpackage of provline, as pyproject.toml maps them.
FOLDERS = {"provline": "provline", "provline.schemas": "schemas", "provline.producers": "producers",
           "provline.sidecar": "sidecar", "provline.stream_processors": "stream_processors",
           "provline.sink": "sink"}
# Who may import whom (DESIGN.md): schemas <- producers <- sidecar; schemas <- stream_processors; schemas <- sink.
# The root package's shared modules (provline.config) are open to all; the command line may import everything.
# Issue 17: serve publishes Feedback (POST /v1/feedback, resolved client request ids) through the producers'
# emitter and checks labels with producers.feedback, so sink may import producers (which imports no sink).
ALLOWED = {
    "provline.schemas": set(),
    "provline.producers": {"provline.schemas"},
    "provline.sidecar": {"provline.schemas", "provline.producers"},
    "provline.stream_processors": {"provline.schemas"},
    "provline.sink": {"provline.schemas", "provline.producers"},
}
SHARED = {"provline.config", "provline.kafka", "provline.topics"}
COMMAND_LINE = {"provline.cli", "provline.client", "provline.docs", "provline.__main__", "provline.feedback_file"}


def module_files() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in sorted((REPO / folder).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imports(path: Path, module: str) -> set[str]:
    """Every provline module ``module`` imports, at any depth of the file (lazy imports count)."""
    found = set()
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "provline" or name.startswith("provline.")}


def graph() -> dict[str, set[str]]:
    files = module_files()
    return {module: {name for name in imports(path, module) if name in files and name != module}
            for module, path in files.items()}


def component(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_there_is_no_import_cycle() -> None:
    edges = graph()
    visiting, done, cycles = set(), set(), []

    def visit(module: str, path: list[str]) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append(path[path.index(module):] + [module])
            return
        visiting.add(module)
        for target in sorted(edges[module]):
            visit(target, [*path, module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(edges):
        visit(module, [])
    assert cycles == []


def test_dependencies_point_one_way() -> None:
    wrong = []
    for module, targets in graph().items():
        if module in COMMAND_LINE or module in SHARED or module == "provline":
            continue
        for target in targets:
            if target in SHARED or component(target) == component(module):
                continue
            if component(target) not in ALLOWED[component(module)]:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_nothing_imports_the_component_folders_by_their_bare_names() -> None:
    bare = {"schemas", "producers", "sidecar", "stream_processors", "sink"}
    offenders = []
    for path in [*REPO.glob("*/*.py"), *REPO.glob("tests/*/*.py"), *REPO.glob("deploy/*/*/*.py")]:
        if ".venv" in path.parts or "target" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in bare]
    assert offenders == []


@pytest.mark.parametrize("heavy", ["faust", "aiokafka", "clickhouse_connect", "chdb", "fastapi", "uvicorn",
                                   "openlineage", "prov", "pandas"])
def test_a_training_job_imports_none_of_the_servers(heavy: str) -> None:
    code = ("import sys; import provline.producers; from provline.producers import Lineage, JobSettings; "
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert f"'{heavy}'" not in loaded.stdout
