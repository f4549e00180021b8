"""The playground and the API docs in a real headless Chromium (Debian's chromium and
chromium-driver; .ci/run installs them), against the tiny-model service on a loopback port.

Each test saves a screenshot under build/test-artifacts/ and fails on a console error, on a
Content-Security-Policy violation, or on any request to a host other than the service.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from app.api.app import create_app
from app.api.docs import REDOC_CONTENT_SECURITY_POLICY
from app.api.headers import CONTENT_SECURITY_POLICY
from scripts.harness import ROOT, live_server, tiny_settings, wait_healthy

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
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service as ChromeService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
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
        wait_healthy(url)
        yield url


@pytest.fixture(autouse=True)
def fresh_logs(driver: WebDriver) -> None:
    """Each test judges only its own console messages and requests."""
    driver.get_log("browser")
    driver.get_log("performance")


def by_id(driver: WebDriver, testid: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def seen(driver: WebDriver) -> str:
    """What the page shows now: its health and status lines, else the start of its text."""
    shown = [
        f"{testid}: {found[0].text!r}"
        for testid in ("health", "status")
        if (found := driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]'))
    ]
    return "; ".join(shown) or repr(driver.find_element(By.TAG_NAME, "body").text[:300])


def wait(driver: WebDriver, condition: Any, message: str) -> Any:
    """`condition(driver)` once truthy; else fails after TIMEOUT_S with what the page shows."""
    try:
        return WebDriverWait(driver, TIMEOUT_S).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(
            f"{message} within {TIMEOUT_S} s; {driver.current_url} shows {seen(driver)}"
        ) from None


def requested_urls(driver: WebDriver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def assert_clean(driver: WebDriver, origin: str) -> None:
    """No console error or CSP report, no request to any host but the service (data:/blob: stay
    local)."""
    console = driver.get_log("browser")
    errors = [e for e in console if e["level"] == "SEVERE" or "Content Security Policy" in str(e)]
    assert not errors, errors
    foreign = [u for u in requested_urls(driver) if not u.startswith((origin, "data:", "blob:"))]
    assert not foreign, foreign


def assert_policy(url: str, policy: str) -> None:
    """The page came with `policy` (so a clean console means it runs under it)."""
    response = httpx.get(url, headers={"accept": "text/html"}, timeout=5)
    assert response.status_code == 200
    assert response.headers.get("content-security-policy") == policy


def screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path))
    return path


def segment_on_the_page(driver: WebDriver, demo: str, image: Path) -> list[WebElement]:
    """The playground, fresh, asked for `cat ; dog` in `image`: the listed objects."""
    driver.get(f"{demo}/")
    wait(driver, lambda d: by_id(d, "health").text.startswith("Ready"), "service never ready")
    by_id(driver, "image-input").send_keys(str(image))
    by_id(driver, "prompt-input").send_keys("cat ; dog")
    by_id(driver, "submit").click()
    wait(driver, lambda d: by_id(d, "status").text.startswith("Found"), "no answer")
    return objects_listed(driver)


def objects_listed(driver: WebDriver) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, '[data-testid="object"]')


def test_playground_segments_a_dropped_in_image(
    driver: WebDriver, demo: str, tmp_path: Path
) -> None:
    objects = segment_on_the_page(driver, demo, scene(tmp_path / "street.jpg"))
    assert by_id(driver, "random-banner").is_displayed()
    assert [o.text.split()[0] for o in objects] == ["cat", "dog"]
    # Random weights: scores near 0, shown with the digits that tell them apart, not as 0.00.
    scores = [o.text.split()[1] for o in objects]
    assert all(re.fullmatch(r"0\.\d*[1-9]\d?%", score) for score in scores), scores
    overlay = by_id(driver, "overlay")
    assert overlay.is_displayed()
    width, height = driver.execute_script(
        "return [arguments[0].width, arguments[0].height]", overlay
    )
    assert width >= 640 and abs(width / height - 640 / 480) < 0.01, (width, height)
    assert by_id(driver, "download-json").is_enabled()
    screenshot(driver, "playground")
    assert_clean(driver, demo)


def test_threshold_and_toggles_hide_objects(driver: WebDriver, demo: str, tmp_path: Path) -> None:
    """Hiding changes the picture, not the list: an object's checkbox hides it alone, the
    score threshold hides all below it (random weights: every score is near 0)."""
    assert len(segment_on_the_page(driver, demo, scene(tmp_path / "street.jpg"))) == 2
    canvas = by_id(driver, "overlay")

    def picture() -> str:
        return str(driver.execute_script("return arguments[0].toDataURL()", canvas))

    def hidden() -> list[bool]:
        return ["below" in item.get_attribute("class") for item in objects_listed(driver)]

    shown = picture()
    assert hidden() == [False, False]
    toggle = "input[type=checkbox]"
    objects_listed(driver)[0].find_element(By.CSS_SELECTOR, toggle).click()  # the list re-renders
    assert hidden() == [True, False]
    one_hidden = picture()
    assert one_hidden != shown
    objects_listed(driver)[0].find_element(By.CSS_SELECTOR, toggle).click()
    assert hidden() == [False, False] and picture() == shown
    slider = by_id(driver, "threshold")
    driver.execute_script(
        "arguments[0].value = 0.5; arguments[0].dispatchEvent(new Event('input'))", slider
    )
    assert hidden() == [True, True]
    assert picture() not in (shown, one_hidden)
    assert_clean(driver, demo)


def test_errors_are_shown_in_plain_words(driver: WebDriver, demo: str, tmp_path: Path) -> None:
    """A damaged PNG: the page cannot show it, so it is the service's to judge, and its answer
    is shown as it said it."""
    driver.get(f"{demo}/")
    wait(driver, lambda d: by_id(d, "health").text.startswith("Ready"), "service never ready")
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not the rest of a PNG" * 4)
    by_id(driver, "image-input").send_keys(str(damaged))
    wait(driver, lambda d: "cannot show this PNG" in by_id(d, "status").text, "no notice")
    by_id(driver, "prompt-input").send_keys("cat")
    by_id(driver, "submit").click()
    wait(driver, lambda d: "corrupt or truncated" in by_id(d, "status").text, "no error")
    assert "error" in by_id(driver, "status").get_attribute("class")
    # The browser logs the 400 itself; nothing else may fail.
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert all("400" in e["message"] for e in errors), errors


def test_a_file_that_is_no_image_is_never_offered_to_the_service(
    driver: WebDriver, demo: str, tmp_path: Path
) -> None:
    """Judged by its first bytes (as the service judges it), before anything is sent."""
    driver.get(f"{demo}/")
    wait(driver, lambda d: by_id(d, "health").text.startswith("Ready"), "service never ready")
    by_id(driver, "prompt-input").send_keys("cat")
    for name in ("notes.txt", "notes.png"):  # a name that lies changes nothing
        notes = tmp_path / name
        notes.write_text("a shopping list, not a picture")
        by_id(driver, "image-input").send_keys(str(notes))
        says = f"{name} is not an image the service takes"
        wait(driver, lambda d, says=says: says in by_id(d, "status").text, "no refusal")
        status = by_id(driver, "status")
        assert "PNG, JPEG, WebP, GIF, BMP or TIFF" in status.text
        assert "error" in status.get_attribute("class")
        assert "cannot show" not in status.text
        assert not by_id(driver, "submit").is_enabled()
        assert by_id(driver, "file-name").text == ""
        assert not by_id(driver, "result").is_displayed()
    by_id(driver, "prompt-input").send_keys(Keys.ENTER)  # submitting anyway sends nothing
    screenshot(driver, "playground-not-an-image")
    assert not [u for u in requested_urls(driver) if u.startswith(f"{demo}/segment")]
    assert_clean(driver, demo)


def test_a_small_image_is_scaled_up_to_the_panel(
    driver: WebDriver, demo: str, tmp_path: Path
) -> None:
    """A 96x72 image fills the picture's panel (aspect kept), drawn at the size it is shown
    so boxes and labels stay sharp, rather than sitting small in a large blank gap."""
    objects = segment_on_the_page(driver, demo, scene(tmp_path / "small.png", 96, 72))
    assert len(objects) == 2
    overlay = by_id(driver, "overlay")
    drawn = driver.execute_script("return [arguments[0].width, arguments[0].height]", overlay)
    shown = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height]", overlay
    )
    panel = driver.execute_script("return arguments[0].parentElement.clientWidth", overlay)
    room = driver.execute_script("return window.innerHeight - 12 * 16")
    assert drawn[0] > 4 * 96, drawn  # drawn big, not stretched from 96 pixels by CSS
    assert abs(drawn[0] / drawn[1] - 96 / 72) < 0.02, drawn
    assert abs(shown[0] - (drawn[0] + 2)) <= 1, (shown, drawn)  # shown at the size drawn
    assert panel - shown[0] <= 4 or room - shown[1] <= 4, (shown, panel, room)  # fills one way
    screenshot(driver, "playground-small-image")
    assert_clean(driver, demo)


def test_the_page_asks_for_the_token_when_one_is_set(
    driver: WebDriver, tiny_model_dir: Path, tmp_path: Path
) -> None:
    app = create_app(tiny_settings(tiny_model_dir, api_token="s3cret"))
    with live_server(app) as url:
        wait_healthy(url)
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


@pytest.mark.parametrize("path", ["/", "/static/index.html"])
def test_playground_runs_under_the_policy(driver: WebDriver, demo: str, path: str) -> None:
    driver.get(f"{demo}{path}")
    wait(driver, lambda d: by_id(d, "health").text.startswith("Ready"), "service never ready")
    assert_clean(driver, demo)
    assert_policy(f"{demo}{path}", CONTENT_SECURITY_POLICY)


@pytest.mark.parametrize(
    ("path", "ready", "policy"),
    [
        ("/docs", ".opblock-post", CONTENT_SECURITY_POLICY),
        ("/redoc", "[data-section-id]", REDOC_CONTENT_SECURITY_POLICY),
    ],
)
def test_api_docs_render_offline(
    driver: WebDriver, demo: str, path: str, ready: str, policy: str
) -> None:
    """Under their Content-Security-Policy: a violation shows in the console (assert_clean)."""
    driver.get(f"{demo}{path}")
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ready), f"{path} did not render")
    body = driver.find_element(By.TAG_NAME, "body").text
    assert "/segment" in body
    assert "PaliGemma segmentation" in body  # the API's title
    screenshot(driver, path.strip("/"))
    assert_clean(driver, demo)
    assert_policy(f"{demo}{path}", policy)


def test_redoc_search_runs_in_its_worker(driver: WebDriver, demo: str) -> None:
    """ReDoc searches in a Worker made from a blob: URL; blocked, it finds nothing, silently."""
    driver.get(f"{demo}/redoc")
    search = wait(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, "input.search-input"), "no search box"
    )
    search[0].send_keys("segment")
    results = "[data-role='search:results'] > *"
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, results), "search found nothing")
    assert_clean(driver, demo)


def open_try_it_out(driver: WebDriver, demo: str) -> WebElement:
    """/docs with POST /segment expanded and in Try it out mode: the operation's element."""
    driver.get(f"{demo}/docs")
    operation = wait(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-post"), "no POST operation"
    )[0]
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    try_it = wait(
        driver, lambda d: operation.find_elements(By.CSS_SELECTOR, ".try-out__btn"), "no Try it"
    )
    try_it[0].click()
    return operation


def execute(driver: WebDriver, operation: WebElement) -> str:
    """Press Execute; the response code Swagger UI shows."""
    operation.find_element(By.CSS_SELECTOR, ".execute").click()
    status = ".live-responses-table tr.response .response-col_status"
    wait(driver, lambda d: operation.find_elements(By.CSS_SELECTOR, status), "no response")
    return str(operation.find_element(By.CSS_SELECTOR, status).text.strip())


def test_swagger_try_it_out_with_a_file_and_a_prompt(
    driver: WebDriver, demo: str, tmp_path: Path
) -> None:
    """Only a file and a prompt: the optional fields start empty (no `image_url=string` to
    compete with the upload, no `max_new_tokens=1` to cut the answer short)."""
    operation = open_try_it_out(driver, demo)
    content_type = operation.find_element(By.CSS_SELECTOR, ".body-param-content-type select")
    content_type.find_element(By.CSS_SELECTOR, "option[value='multipart/form-data']").click()
    field = "[data-property-name='{}'] input[type={}]"
    image = operation.find_element(By.CSS_SELECTOR, field.format("image_file", "file"))
    image.send_keys(str(scene(tmp_path / "swagger.jpg", 320, 240)))
    prompt = operation.find_element(By.CSS_SELECTOR, field.format("prompt", "text"))
    prompt.send_keys(Keys.CONTROL, "a", Keys.BACKSPACE)  # the example prompt, replaced
    prompt.send_keys("cat")
    code = execute(driver, operation)
    body = operation.find_element(By.CSS_SELECTOR, ".live-responses-table .microlight").text
    shown = operation.find_element(By.CSS_SELECTOR, ".live-responses-table")
    driver.execute_script("arguments[0].scrollIntoView()", shown)
    screenshot(driver, "docs-try-it-out")
    assert code == "200", body
    assert '"objects"' in body and '"segment cat"' in body
    assert_clean(driver, demo)
    assert_policy(f"{demo}/docs", CONTENT_SECURITY_POLICY)


def test_swagger_try_it_out_runs_the_json_example_as_it_stands(
    driver: WebDriver, demo: str
) -> None:
    """The JSON body comes first, pre-filled with a whole request (a small base64 PNG)."""
    operation = open_try_it_out(driver, demo)
    content_type = operation.find_element(By.CSS_SELECTOR, ".body-param-content-type select")
    assert content_type.get_attribute("value") == "application/json"
    code = execute(driver, operation)
    body = operation.find_element(By.CSS_SELECTOR, ".live-responses-table .microlight").text
    assert code == "200", body
    assert '"objects"' in body
    assert_clean(driver, demo)
