"""The web app in a real browser: Debian's headless Chromium driven by Selenium, against a studio
on the tiny test model, in the order a user goes: sign in, upload a file, estimate and start a
job, watch it finish on its page, open its report, compare two models' streamed answers, export
the adapter and download it. Each test continues where the one before left off."""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.studio.conftest import FAST, KEY, chat_jsonl

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 90


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip(
            "the browser tests need Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; .ci/run installs them as root)"
        )
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="the browser tests need selenium (the test extras)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,1000")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout=WAIT_S):
    """Poll `condition(driver)` until it is truthy; an element that is not there yet, or was
    replaced by a page refresh between finding and reading it, counts as not yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.2,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    ).until(condition)


def _by(css):
    from selenium.webdriver.common.by import By

    return (By.CSS_SELECTOR, css)


def test_pages_need_the_key_and_sign_in_sets_it(browser, studio):
    browser.delete_all_cookies()
    browser.get(studio.url + "/jobs")
    assert "/login" in browser.current_url
    browser.find_element(*_by("#key")).send_keys("wrong")
    browser.find_element(*_by("form button")).click()
    error = _wait(browser, lambda d: d.find_element(*_by(".error")))
    assert "not the key" in error.text
    browser.find_element(*_by("#key")).send_keys(KEY)
    browser.find_element(*_by("form button")).click()
    _wait(browser, lambda d: d.current_url.endswith("/jobs"))
    _wait(browser, lambda d: d.find_element(*_by("h1")).text == "Jobs")


def test_upload_a_file_and_see_it_checked(browser, studio, intents_jsonl, tmp_path):
    path = tmp_path / "intents.jsonl"
    path.write_bytes(intents_jsonl)
    browser.get(studio.url + "/data")
    browser.find_element(*_by("#file")).send_keys(str(path))
    browser.find_element(*_by("#upload")).click()
    _wait(browser, lambda d: "/data/file-" in d.current_url)
    _wait(browser, lambda d: d.find_element(*_by("h1")).text == "intents.jsonl")
    assert browser.find_element(*_by("#format")).text == "messages"
    assert browser.find_element(*_by("#quarantined")).text == "0"
    trained = browser.find_elements(*_by(".tokens .trained"))
    assert trained and browser.find_elements(*_by(".tokens .masked"))
    assert browser.find_elements(*_by("#histogram div"))


def test_a_bad_upload_names_the_line(browser, studio, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(chat_jsonl([{"messages": [{"role": "user", "content": "hi"}]}]) + b"{oops\n")
    browser.get(studio.url + "/data")
    browser.find_element(*_by("#file")).send_keys(str(path))
    browser.find_element(*_by("#upload")).click()
    error = _wait(browser, lambda d: d.find_element(*_by("#upload-error")))
    assert "bad.jsonl:2" in error.text


def test_estimate_then_start_a_job_and_watch_it_finish(browser, studio):
    browser.get(studio.url + "/new")
    overrides = _wait(browser, lambda d: d.find_element(*_by("#overrides")))
    docs = [e.text for e in browser.find_elements(*_by("label .doc"))]
    assert "Peak learning rate." in docs  # train.lr's description in the config schema
    overrides.send_keys(FAST)
    browser.find_element(*_by("#suffix")).send_keys("pages")
    browser.find_element(*_by("#estimate-button")).click()
    estimate = _wait(browser, lambda d: d.find_element(*_by("#estimate strong")))
    assert "Dry run" in estimate.text and "tokens/s" in browser.find_element(*_by("#estimate")).text
    browser.find_element(*_by("#start")).click()  # the overrides were kept across the estimate
    _wait(browser, lambda d: "/jobs/ftjob-" in d.current_url)
    _wait(browser, lambda d: d.find_element(*_by("#status .badge")).text == "succeeded")
    job_id = browser.current_url.rsplit("/", 1)[-1]
    metrics = (studio.studio.runs_dir / job_id / "metrics.jsonl").read_text().splitlines()
    logged = str(sum('"train_loss"' in row for row in metrics))
    _wait(browser, lambda d: d.find_element(*_by("#chart")).get_attribute("data-points") == logged)
    assert "Fine-tuning job started" in browser.find_element(*_by("#events")).text
    job = studio.studio.store.job(job_id)
    assert job.status == "succeeded" and job.suffix == "pages"
    assert job.request["metadata"]["tunewright_overrides"] == FAST


def _finished_job(studio):
    done = [j for j in studio.studio.store.jobs() if j.status == "succeeded"]
    if not done:
        pytest.skip("needs the job of test_estimate_then_start_a_job_and_watch_it_finish")
    return done[0]


def test_open_the_report_of_the_finished_job(browser, studio):
    job = _finished_job(studio)
    browser.get(f"{studio.url}/jobs/{job.id}")
    _wait(browser, lambda d: d.find_element(*_by("#open-report"))).click()
    verdict = _wait(browser, lambda d: d.find_element(*_by("#verdict")))
    assert verdict.text.strip()
    titles = [e.text for e in browser.find_elements(*_by(".report-body h2"))]
    assert titles[0] == "Metrics" and "Training" in titles
    raw = browser.find_element(*_by("#report-file")).get_attribute("href")
    got = httpx.get(raw, headers={"Authorization": f"Bearer {KEY}"})
    assert got.content == (studio.studio.runs_dir / job.id / "report.html").read_bytes()


def test_compare_streams_both_answers(browser, studio):
    job = _finished_job(studio)
    browser.get(f"{studio.url}/compare?b={job.fine_tuned_model}")
    _wait(browser, lambda d: d.find_element(*_by("#prompt"))).send_keys("my card was stolen")
    browser.find_element(*_by("#max-tokens")).clear()
    browser.find_element(*_by("#max-tokens")).send_keys("6")
    browser.find_element(*_by("#send")).click()
    both_done = (
        "return [...document.querySelectorAll('.answer')].every(a => a.dataset.done === 'true')"
    )
    _wait(browser, lambda d: d.execute_script(both_done))
    a, b = (browser.find_element(*_by(f"#answer-{s}")) for s in "ab")
    assert "error" not in a.get_attribute("class") and "error" not in b.get_attribute("class")
    assert a.text and b.text and a.text != "The answer appears here."


def test_export_the_adapter_with_parity_and_download_it(browser, studio):
    job = _finished_job(studio)
    browser.get(f"{studio.url}/export/{job.id}")
    _wait(browser, lambda d: d.find_element(*_by("#export"))).click()  # adapter is preselected
    badge = 'tr[data-artifact="adapter"] .badge'
    _wait(browser, lambda d: d.find_element(*_by(badge)).text == "passed")
    link = browser.find_element(*_by('a.download[href$="/adapter/adapter_config.json"]'))
    # the browser's cookie is HttpOnly: fetch the link as a client with the key would
    got = httpx.get(link.get_attribute("href"), headers={"Authorization": f"Bearer {KEY}"})
    exported = studio.studio.runs_dir / job.id / "export" / "adapter" / "adapter_config.json"
    assert got.status_code == 200 and got.content == exported.read_bytes()
