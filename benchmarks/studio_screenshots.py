"""Screenshots of every page of the studio's web app, to look at them and to show them.

    PYTHONPATH=src python benchmarks/studio_screenshots.py [FOLDER]    (default docs/screenshots/)

Starts a studio on a tiny random model (the test suite's, built locally: nothing is downloaded),
uploads the intents fixture through the API, trains a short job to the end, exports it through
the Export page, then drives headless Chromium (Debian's `chromium` and `chromium-driver`, and
selenium from the test extras) through the pages and saves one full-page PNG per page; a second,
longer job is shot while it trains (its page and the job list), then cancelled. The figures on
the pages are the tiny model's: the screenshots show the pages, not results.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tiny model is built by the test suite's own helper

from tests.conftest import build_tiny_model  # noqa: E402
from tunewright.studio.server import start_studio  # noqa: E402
from tunewright.studio.settings import StudioSettings  # noqa: E402
from tunewright.studio.store import FINISHED  # noqa: E402

SYSTEM = "Name the intent."
# A short job with a base model to compare against, a few validation points and a forgetting
# check, so every section of the report has something in it.
JOB_OVERRIDES = (
    "train.epochs=6 train.batch_size=8 train.lora_r=8 train.lr=0.02 train.lr_warmup_steps=2 "
    "train.log_every_steps=1 train.eval_every_steps=6 train.checkpoint_every_steps=12 "
    "train.report_to=[] data.max_seq_len=64 evaluate.models=[base_0shot,tuned] "
    "evaluate.max_new_tokens=6"
)
PAGE_WIDTH = 1280
MAX_PAGE_HEIGHT = 4000
WAIT_S = 600
LIVE_ROWS = 40  # metrics rows of the longer job before its page is shot mid-training


def intents_jsonl() -> bytes:
    """The test fixture's intents as chat JSONL, one example per line."""
    with (ROOT / "tests" / "fixtures" / "intents_train.csv").open() as f:
        rows = [
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": r["text"]},
                    {"role": "assistant", "content": r["category"]},
                ]
            }
            for r in csv.DictReader(f)
        ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def browser():
    from selenium import webdriver

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        sys.exit(
            "needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={PAGE_WIDTH},900")
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))


def wait_until(check, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    sys.exit(f"gave up waiting for {what} after {timeout:.0f} s")


def shoot(driver, url: str, path: Path, *, before=None, settle_s: float = 1.0) -> None:
    """Open `url`, do `before(driver)`, and save the whole page as one PNG."""
    driver.set_window_size(PAGE_WIDTH, 900)
    driver.get(url)
    if before is not None:
        before(driver)
    time.sleep(settle_s)  # let the page's scripts draw (loss curve, streamed answers)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(PAGE_WIDTH, min(int(height) + 20, MAX_PAGE_HEIGHT))
    time.sleep(0.3)
    driver.save_screenshot(str(path))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=ROOT / "docs" / "screenshots", type=Path)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="tunewright-screenshots-"))
    model = build_tiny_model(scratch / "tiny-model")
    running = start_studio(StudioSettings(port=0, home=scratch / "home", model=str(model)))
    driver = None
    try:
        api = httpx.Client(base_url=running.url, timeout=120)
        uploaded = api.post(
            "/v1/files",
            files={"file": ("intents.jsonl", intents_jsonl())},
            data={"purpose": "fine-tune"},
        ).json()
        job = api.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": model.name,
                "training_file": uploaded["id"],
                "suffix": "intents",
                "seed": 7,
                "metadata": {"tunewright_overrides": JOB_OVERRIDES},
            },
        ).json()
        job_id = job["id"]

        def finished() -> dict | None:
            current = api.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            return current if current["status"] in FINISHED else None

        done = wait_until(finished, "the job to finish")
        if done["status"] != "succeeded":
            sys.exit(f"the job {done['status']}: {done.get('error')}")
        # export through the page, as a user would; GGUF of a random tiny model may miss its
        # parity threshold, which the page then shows as not published
        api.post(f"/export/{job_id}", data={"formats": ["adapter", "merged", "gguf"]})
        wait_until(lambda: "Exporting" not in api.get(f"/export/{job_id}").text, "the export")

        driver = browser()
        url, out = running.url, args.folder

        def estimate(d):
            d.find_element("css selector", "#estimate-button").click()
            wait_until(lambda: d.find_elements("css selector", "#estimate strong"), "the estimate")

        def ask(d):
            d.find_element("css selector", "#prompt").send_keys("my card was stolen")
            d.find_element("css selector", "#send").click()
            wait_until(
                lambda: all(
                    d.find_element("css selector", f"#answer-{s}").get_attribute("data-done")
                    == "true"
                    for s in "ab"
                ),
                "both answers",
            )

        shoot(driver, f"{url}/data", out / "data.png")
        shoot(driver, f"{url}/data/{uploaded['id']}", out / "data-file.png")
        shoot(driver, f"{url}/new?file={uploaded['id']}", out / "new-job.png", before=estimate)
        shoot(driver, f"{url}/jobs/{job_id}", out / "job.png", settle_s=2.0)
        shoot(driver, f"{url}/report/{job_id}", out / "report.png")
        shoot(
            driver, f"{url}/compare?b={done['fine_tuned_model']}", out / "compare.png", before=ask
        )
        shoot(driver, f"{url}/export/{job_id}", out / "export.png")

        # a second, longer job, to show a job page (and the list) while a job trains; then cancel
        longer = JOB_OVERRIDES.replace("train.epochs=6", "train.epochs=200")
        live = api.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": model.name,
                "training_file": uploaded["id"],
                "suffix": "longer",
                "metadata": {"tunewright_overrides": longer},
            },
        ).json()
        metrics = running.studio.runs_dir / live["id"] / "metrics.jsonl"
        wait_until(
            lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= LIVE_ROWS,
            "the longer job's first steps",
        )
        shoot(driver, f"{url}/jobs/{live['id']}", out / "job-running.png", settle_s=2.0)
        shoot(driver, f"{url}/jobs", out / "jobs.png")
        api.post(f"/v1/fine_tuning/jobs/{live['id']}/cancel")
    finally:
        if driver is not None:
            driver.quit()
        running.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
