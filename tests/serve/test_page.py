"""The upload page in a real headless Chromium: choosing an image shows its detections, classes and overlay.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make install`` brings them); skipped, saying so, without."""

from __future__ import annotations

import shutil

import httpx
import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

BROWSER = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if BROWSER is None or DRIVER is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (make install does)")
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)  # an explicit driver: nothing downloaded
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_uploading_an_image_shows_its_detections(server, browser, sample_image, tmp_path):
    want = httpx.post(f"{server.url}/predict", files={"image": (sample_image.name, sample_image.read_bytes())}).json()
    assert want["annotations"], "the test model should detect something at score_thr=0"

    browser.get(f"{server.url}/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: "heads: cls, det, inst, sem" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "image").send_keys(str(sample_image))  # the page predicts on change
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
    status = browser.find_element(By.ID, "status").text
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", status

    rows = browser.find_elements(By.CSS_SELECTOR, "#detections tbody tr")
    assert len(rows) == len(want["annotations"])
    for row, ann in zip(rows, want["annotations"]):
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert cells[1] == ann["category_name"] and float(cells[2]) == pytest.approx(ann["score"], abs=1e-3)
    assert f"{len(rows)} detections" in status
    assert want["image"]["classification"]["class_name"] in browser.find_element(By.ID, "image-preds").text
    overlay = browser.find_element(By.ID, "overlay")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) >= 64
