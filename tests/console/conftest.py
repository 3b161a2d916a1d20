"""One demo stack for the module's browser tests, and a fresh Chromium per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.console.harness import Console, DemoData, chromium, demo_data


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[DemoData]:
    workdir: Path = tmp_path_factory.mktemp("console-demo")
    with demo_data(workdir, kafka_bootstrap=kafka_bootstrap, prefix=f"console-{uuid.uuid4().hex[:8]}") as data:
        yield data


@pytest.fixture
def browser(demo: DemoData) -> Iterator[Console]:
    driver = chromium()
    try:
        yield Console(driver, demo.base)
    finally:
        driver.quit()
