"""``python -m tests.console.screenshots DIR`` (``make screenshots``): the console's main pages as PNG files.

Starts the demo's stack with its own broker (tests/console/harness.py), signs in as an auditor or an
admin in headless Chromium, and saves each page as the README shows it. Blocks for a few minutes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from deploy.demo.stack import MODEL_NAME, MODEL_VERSION
from tests.console.harness import CUSTOMERS, Console, chromium, demo_data, poll

WIDTH, HEIGHT = 1400, 1000
DRIFT_ROUNDS = 4


def take(console: Console, path: str, out: Path, *, wait_for: str | None = None, height: int = HEIGHT) -> Path:
    console.driver.set_window_size(WIDTH, height)
    console.open(path)
    if wait_for:
        console.wait_for(wait_for)
    console.driver.execute_script("window.scrollTo(0, 0)")
    console.driver.save_screenshot(str(out))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="folder for the PNG files")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="provline-screenshots-") as workdir, demo_data(Path(workdir)) as demo:
        def drift_windows() -> int:
            return len({row["window_start"] for row in demo.get(f"/v1/drift/{MODEL_NAME}").json()["drift"]})

        for round_ in range(DRIFT_ROUNDS):  # a few drift windows to chart, each waited for by polling
            demo.stack.predict(CUSTOMERS)
            poll("another drift window", lambda: drift_windows() > round_ + 1 or None)  # noqa: B023 (called here)
        driver = chromium(log_performance=False)
        driver.set_window_size(WIDTH, HEIGHT)
        try:
            console = Console(driver, demo.base)
            driver.get(f"{demo.base}/console/sign-in")
            driver.save_screenshot(str(args.out / "sign-in.png"))
            console.sign_in("ann")
            console.find("#q-model").send_keys(MODEL_NAME)
            console.find("#search button[type=submit]").click()
            poll("search results", lambda: len(console.all("#results .prediction-link")) > 1 or None)
            driver.save_screenshot(str(args.out / "search.png"))
            chosen = demo.predictions[0].prediction_id
            take(console, f"/console/predictions/{chosen}", args.out / "prediction.png", wait_for="#nodes .node")
            take(console, f"/console/models/{MODEL_NAME}", args.out / "model.png", wait_for="#drift .drift-chart",
                 height=2000)
            take(console, f"/console/lineage?node=dataset:{demo.facts.dataset_digest}&direction=downstream",
                 args.out / "lineage.png", wait_for="#graph canvas")
            console.sign_in("root")
            take(console, "/console/access-log", args.out / "access-log.png", wait_for="#access-log tbody tr")
        finally:
            driver.quit()
    for name in sorted(p.name for p in args.out.glob("*.png")):
        print(f"{args.out / name}")
    print(f"console pages of {MODEL_NAME}@{MODEL_VERSION} saved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
