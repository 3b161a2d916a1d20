"""``pip install .`` installs exactly one top-level package, provline, with every module and data file."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHECK = """
import importlib, pkgutil, sys
import provline
assert provline.__file__.startswith(sys.argv[1]), provline.__file__
names = [m.name for m in pkgutil.walk_packages(provline.__path__, "provline.") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
from provline.schemas import default_catalog
from provline.sink.store import migration_files
from provline.sink.ingest import derived_select
assert "PredictionTrace" in default_catalog().records and migration_files()
derived_select("prediction_index", "t")
from provline.sink.console import console_router
console_router(lambda token: None)  # reads its templates and static files from the installed package
from importlib import resources
from provline.sink.openlineage import CUSTOM_FACETS
for facet in CUSTOM_FACETS:  # every facet's _schemaURL names a schema file the package installs
    assert (resources.files("provline.schemas") / "openlineage" / f"{facet.__name__}.json").is_file(), facet
bare = sorted({"schemas", "producers", "sidecar", "stream_processors", "sink"} & set(sys.modules))
assert not bare, bare
print(len(names))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"  # setuptools builds in the source tree: a copy keeps the checkout clean
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "target", "__pycache__", "*.egg-info", ".provline", ".mypy_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
                   check=True, capture_output=True, text=True, timeout=300)
    [built] = out.glob("provline-*.whl")
    return built


def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {name for name in top if not name.endswith(".dist-info")} == {"provline"}
    top_level = [name for name in names if name.endswith("top_level.txt")]
    if top_level:
        assert zipfile.ZipFile(wheel).read(top_level[0]).decode().split() == ["provline"]
    for data in ("provline/schemas/avsc/PredictionTrace.v2.avsc", "provline/sink/sql/0001_event_tables.sql",
                 "provline/schemas/py.typed", "provline/sink/py.typed",
                 "provline/sink/console/templates/layout.html", "provline/sink/console/static/console.js",
                 "provline/sink/console/static/console.css",
                 "provline/sink/console/static/vendor/cytoscape-3.35.0.min.js",
                 "provline/sink/console/static/vendor/cytoscape-3.35.0.LICENSE",
                 "provline/sink/console/static/vendor/uPlot-1.6.32.iife.min.js",
                 "provline/sink/console/static/vendor/uPlot-1.6.32.LICENSE"):
        assert data in names


def test_every_module_imports_from_the_installed_package_alone(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    # Run outside the repository, with the installed copy first on the path: the editable install and
    # the checkout's folders cannot stand in for a file the wheel forgot.
    done = subprocess.run([sys.executable, "-c", CHECK, str(target)], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) > 50
