"""The dashboard in a real browser (headless Chromium from Debian, driven by selenium):
what a person sees changes with the broker. Skipped when chromium is not installed.

Screenshots of every page go to ``$CAVALCADE_SCREENSHOTS`` (default: the test's tmp dir).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from .conftest import Api, unique

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromium-driver are not installed"
)
READY_HEADER = '#queues-table th[data-col="messages_ready"]'
WAIT = 20  # seconds: the dashboard refreshes every 3 s


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--disable-gpu",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CAVALCADE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _text(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def _until(driver, check, message: str) -> None:
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    # the page re-renders every few seconds: an element read mid-refresh is read again
    WebDriverWait(
        driver,
        WAIT,
        poll_frequency=0.2,
        ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
    ).until(lambda d: check(d), message)


def _login(driver, node: Api) -> None:
    from selenium.webdriver.common.by import By

    driver.get(node.root)
    _until(driver, lambda d: d.find_element(By.ID, "login").is_displayed(), "no login form")
    driver.find_element(By.ID, "login-user").send_keys("guest")
    driver.find_element(By.ID, "login-password").send_keys("guest")
    driver.find_element(By.ID, "login-submit").click()
    _until(driver, lambda d: d.find_element(By.ID, "nav").is_displayed(), "login failed")


def _cell(driver, queue: str, column: str) -> str:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f'#queues-table tr[data-queue="{queue}"]')
    if not rows:
        return ""
    return rows[0].find_element(By.CSS_SELECTOR, f"td.col-{column}").text


def test_login_refuses_a_wrong_password(browser, node: Api) -> None:
    from selenium.webdriver.common.by import By

    browser.get(node.root)
    browser.execute_script("sessionStorage.clear()")
    browser.get(node.root)
    _until(browser, lambda d: d.find_element(By.ID, "login").is_displayed(), "no login form")
    browser.find_element(By.ID, "login-user").send_keys("guest")
    browser.find_element(By.ID, "login-password").send_keys("wrong")
    browser.find_element(By.ID, "login-submit").click()
    _until(browser, lambda d: _text(d, "#login-error") == "Login failed", "no login error")
    assert not browser.find_element(By.ID, "nav").is_displayed()


def test_a_person_watches_a_queue_fill_and_empty(browser, node: Api, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    queue = unique("ui")
    assert node.put(f"queues/%2F/{queue}", {"durable": True}).status_code == 201
    conn = pika.BlockingConnection(pika.URLParameters(node.amqp_url))
    try:
        _login(browser, node)
        _until(browser, lambda d: _text(d, "#tile-queues .v") != "", "no overview tiles")
        browser.save_screenshot(str(shots / "overview.png"))

        browser.get(node.root + "#/queues")
        _until(browser, lambda d: _cell(d, queue, "messages_ready") == "0", "queue not listed")
        ch = conn.channel()
        ch.confirm_delivery()
        for i in range(3):
            ch.basic_publish("", queue, b"task %d" % i)
        _until(
            browser,
            lambda d: _cell(d, queue, "messages_ready") == "3",
            "ready count did not follow the publishes",
        )
        browser.save_screenshot(str(shots / "queues.png"))

        # sort by Ready, largest first: our queue with 3 comes before the empty ones
        for _ in range(2):  # ascending, then descending
            _until(
                browser, lambda d: d.find_elements(By.CSS_SELECTOR, READY_HEADER), "no table header"
            )
            browser.find_element(By.CSS_SELECTOR, READY_HEADER).click()
        _until(
            browser,
            lambda d: (
                d.find_elements(By.CSS_SELECTOR, READY_HEADER + ".reverse")
                and d.find_element(By.CSS_SELECTOR, "#queues-table tbody tr").get_attribute(
                    "data-queue"
                )
                == queue
            ),
            "sorting by Ready did not put our queue first",
        )

        browser.find_element(By.LINK_TEXT, queue).click()
        _until(browser, lambda d: _text(d, "#qtile-ready .v") == "3", "queue page count")
        browser.find_element(By.ID, "publish-payload").clear()
        browser.find_element(By.ID, "publish-payload").send_keys("typed in the browser")
        browser.find_element(By.ID, "publish-button").click()
        _until(
            browser,
            lambda d: "Message published" in _text(d, "#publish-result"),
            "publish not confirmed",
        )
        _until(browser, lambda d: _text(d, "#qtile-ready .v") == "4", "publish not counted")
        browser.find_element(By.ID, "get-count").clear()
        browser.find_element(By.ID, "get-count").send_keys("4")
        browser.find_element(By.ID, "get-button").click()
        _until(
            browser,
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#get-result pre")) == 4,
            "get showed no messages",
        )
        payloads = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#get-result pre")]
        assert payloads == ["task 0", "task 1", "task 2", "typed in the browser"]
        browser.save_screenshot(str(shots / "queue.png"))

        browser.execute_script("window.cavalcadeNoConfirm = true")
        browser.find_element(By.ID, "purge-button").click()
        _until(browser, lambda d: _text(d, "#qtile-ready .v") == "0", "purge did not empty it")
        assert node.json(f"queues/%2F/{queue}")["messages"] == 0

        browser.get(node.root + "#/queues")
        _until(browser, lambda d: _cell(d, queue, "messages") == "0", "table still shows messages")

        browser.get(node.root + "#/exchanges")
        _until(browser, lambda d: "amq.topic" in _text(d, "#exchanges-table"), "no exchanges")
        browser.save_screenshot(str(shots / "exchanges.png"))

        browser.get(node.root + "#/connections")
        _until(
            browser,
            lambda d: "Pika Python Client Library" in _text(d, "#connections-table"),
            "our pika connection is not listed",
        )
        browser.save_screenshot(str(shots / "connections.png"))

        browser.get(node.root + "#/admin")
        _until(browser, lambda d: "guest" in _text(d, "#users-table"), "no users")
        browser.save_screenshot(str(shots / "admin.png"))

        browser.get(node.root + f"#/queue/%2F/{queue}")
        _until(browser, lambda d: _text(d, "#qtile-ready .v") == "0", "queue page")
        browser.find_element(By.ID, "delete-button").click()
        _until(browser, lambda d: d.current_url.endswith("#/queues"), "not back on the list")
        assert node.get(f"queues/%2F/{queue}").status_code == 404
    finally:
        conn.close()
        node.delete(f"queues/%2F/{queue}")
