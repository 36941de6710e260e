"""The web app in a real browser: Debian's headless Chromium driven by Selenium, against a studio
on the tiny test model. One journey: sign in, upload a file, start a job, watch it finish on its
page, open the report, compare two models' answers, and reach the export page."""

from __future__ import annotations

import shutil

import pytest

from tests.studio.conftest import KEY, chat_jsonl

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
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


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
    assert browser.find_element(*_by("h1")).text == "Jobs"


def test_upload_a_file_and_see_it_checked(browser, studio, intents_jsonl, tmp_path):
    path = tmp_path / "intents.jsonl"
    path.write_bytes(intents_jsonl)
    browser.get(studio.url + "/data")
    browser.find_element(*_by("#file")).send_keys(str(path))
    browser.find_element(*_by("#upload")).click()
    _wait(browser, lambda d: "/data/file-" in d.current_url)
    assert "intents.jsonl" in browser.page_source


def test_a_bad_upload_names_the_line(browser, studio, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(chat_jsonl([{"messages": [{"role": "user", "content": "hi"}]}]) + b"{oops\n")
    browser.get(studio.url + "/data")
    browser.find_element(*_by("#file")).send_keys(str(path))
    browser.find_element(*_by("#upload")).click()
    error = _wait(browser, lambda d: d.find_element(*_by("#upload-error")))
    assert "bad.jsonl:2" in error.text
