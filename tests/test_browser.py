"""The playground and the API docs in a real headless Chromium (Debian's chromium and
chromium-driver; .ci/run installs them), against the tiny-model service on a loopback port.

Each test saves a screenshot under build/test-artifacts/ and fails on a console error or on
any request to a host other than the service.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from app.api.app import create_app
from tests.service import ROOT, live_server, tiny_settings

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = ROOT / "build" / "test-artifacts"
TIMEOUT_S = 60

if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium and chromium-driver (.ci/run installs them)")
    pytest.skip(
        "needs chromium and chromedriver on PATH (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
if sys.platform != "linux":  # pragma: no cover - the packages above are Debian's
    pytest.skip("browser tests run on Linux", allow_module_level=True)

from selenium import webdriver  # noqa: E402 - only once the browser is known to be there
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service as ChromeService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def scene(path: Path, width: int = 640, height: int = 480) -> Path:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([120 + 80 * x / width, 160 - 60 * y / height, 90 + 50 * (x + y) / 1120], -1)
    image = Image.fromarray(rgb.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((64, 96, 288, 384), fill=(60, 60, 70))
    draw.rectangle((352, 240, 576, 432), fill=(200, 190, 60))
    image.save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,950"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    browser = webdriver.Chrome(service=ChromeService(CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(TIMEOUT_S)
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def demo(tiny_model_dir: Path) -> Iterator[str]:
    with live_server(create_app(tiny_settings(tiny_model_dir))) as url:
        # Healthy first: a page loaded during start-up sees /health answer 503, which the
        # browser logs as a failed load (the page then polls until ready).
        wait_until_healthy(url)
        yield url


def wait_until_healthy(url: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while httpx.get(f"{url}/health", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the service did not become healthy"
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def fresh_logs(driver: WebDriver) -> None:
    """Each test judges only its own console messages and requests."""
    driver.get_log("browser")
    driver.get_log("performance")


def by_id(driver: WebDriver, testid: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def wait(driver: WebDriver, condition: Any, message: str) -> Any:
    return WebDriverWait(driver, TIMEOUT_S).until(lambda d: condition(d), message)


def requested_urls(driver: WebDriver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def assert_clean(driver: WebDriver, origin: str) -> None:
    """No console error, no request to any host but the service (data:/blob: stay local)."""
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    foreign = [u for u in requested_urls(driver) if not u.startswith((origin, "data:", "blob:"))]
    assert not foreign, foreign


def screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path))
    return path


def test_playground_segments_a_dropped_in_image(
    driver: WebDriver, demo: str, tmp_path: Path
) -> None:
    driver.get(f"{demo}/")
    wait(driver, lambda d: by_id(d, "health").text.startswith("Ready"), "service never ready")
    assert by_id(driver, "random-banner").is_displayed()
    by_id(driver, "image-input").send_keys(str(scene(tmp_path / "street.jpg")))
    by_id(driver, "prompt-input").send_keys("cat ; dog")
    by_id(driver, "submit").click()
    wait(driver, lambda d: by_id(d, "status").text.startswith("Found"), "no answer")
    objects = driver.find_elements(By.CSS_SELECTOR, '[data-testid="object"]')
    assert [o.text.split()[0] for o in objects] == ["cat", "dog"]
    assert all(o.text.split()[1] == "0.00" for o in objects)  # random weights: scores near 0
    overlay = by_id(driver, "overlay")
    assert overlay.is_displayed()
    assert driver.execute_script("return [arguments[0].width, arguments[0].height]", overlay) == [
        640,
        480,
    ]
    assert by_id(driver, "download-json").is_enabled()
    screenshot(driver, "playground")
    assert_clean(driver, demo)


def test_threshold_and_toggles_hide_objects(driver: WebDriver, demo: str) -> None:
    """Runs on the page the previous test left: hiding changes the picture, not the list."""
    if not driver.find_elements(By.CSS_SELECTOR, '[data-testid="object"]'):
        pytest.skip("needs the result of the previous test")
    canvas = by_id(driver, "overlay")
    before = driver.execute_script("return arguments[0].toDataURL()", canvas)
    slider = by_id(driver, "threshold")
    driver.execute_script(
        "arguments[0].value = 0.5; arguments[0].dispatchEvent(new Event('input'))", slider
    )
    items = driver.find_elements(By.CSS_SELECTOR, '[data-testid="object"]')
    assert all("below" in item.get_attribute("class") for item in items)
    hidden = driver.execute_script("return arguments[0].toDataURL()", canvas)
    assert hidden != before
    assert_clean(driver, demo)


def test_errors_are_shown_in_plain_words(driver: WebDriver, demo: str, tmp_path: Path) -> None:
    driver.get(f"{demo}/")
    wait(driver, lambda d: by_id(d, "health").text.startswith("Ready"), "service never ready")
    bogus = tmp_path / "notes.png"
    bogus.write_text("not an image at all")
    by_id(driver, "image-input").send_keys(str(bogus))
    by_id(driver, "prompt-input").send_keys("cat")
    by_id(driver, "submit").click()
    wait(driver, lambda d: "not a recognised image" in by_id(d, "status").text, "no error")
    assert "error" in by_id(driver, "status").get_attribute("class")
    # The browser logs the 415 itself; nothing else may fail.
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert all("415" in e["message"] for e in errors), errors


def test_the_page_asks_for_the_token_when_one_is_set(
    driver: WebDriver, tiny_model_dir: Path, tmp_path: Path
) -> None:
    app = create_app(tiny_settings(tiny_model_dir, api_token="s3cret"))
    with live_server(app) as url:
        wait_until_healthy(url)
        driver.get(f"{url}/")
        wait(driver, lambda d: by_id(d, "health").text.startswith("Ready"), "never ready")
        by_id(driver, "image-input").send_keys(str(scene(tmp_path / "a.jpg", 320, 240)))
        by_id(driver, "prompt-input").send_keys("cat")
        by_id(driver, "submit").click()
        wait(driver, lambda d: by_id(d, "token-row").is_displayed(), "no token field")
        assert "token" in by_id(driver, "status").text.lower()
        token = by_id(driver, "token-input")
        token.send_keys("s3cret")
        by_id(driver, "prompt-input").click()  # leaving the field stores the token
        by_id(driver, "submit").click()
        wait(driver, lambda d: by_id(d, "status").text.startswith("Found"), "no answer")
        assert "s3cret" not in driver.current_url
        assert driver.execute_script("return sessionStorage.getItem('segment-api-token')") == (
            "s3cret"
        )
        driver.execute_script("sessionStorage.clear()")


@pytest.mark.parametrize(
    ("path", "ready"),
    [("/docs", ".opblock"), ("/redoc", "[data-section-id]")],
)
def test_api_docs_render_offline(driver: WebDriver, demo: str, path: str, ready: str) -> None:
    driver.get(f"{demo}{path}")
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ready), f"{path} did not render")
    assert "/segment" in driver.find_element(By.TAG_NAME, "body").text
    screenshot(driver, path.strip("/"))
    assert_clean(driver, demo)
