"""app.py in a real browser (headless Chromium from the system's packages, driven by Selenium) as a person uses it:
upload a photo and read its landmarks; upload two photos, click a point on the first, read where it lands.
Screenshots go to runs/test_app/. Skipped, with the reason, where gradio, selenium or Chromium is missing."""
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, tiny_regressor

pytest.importorskip("gradio", reason="the web page's extra: pip install -r requirements-app.txt")
webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -r requirements-app.txt")
CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no chromium / chromedriver: "
                                                   "apt-get install chromium chromium-driver")]
SHOTS = ROOT / "runs" / "test_app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """app.py serving a tiny stage-2 model and a 5-point regressor on it; the URL."""
    root = tiny_regressor(tmp_path_factory.mktemp("app"))
    port = free_port()
    server = subprocess.Popen([sys.executable, "app.py", "--regressor", str(root / "reg"), "--model", str(root / "s2"),
                               "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(120):
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"app.py exited: {server.stdout.read()[-2000:]}")
            time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(10)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, find, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(lambda d: find(d))


def json_of(driver, elem_id: str) -> dict:
    """The JSON a text box of the page shows, as a person would copy it."""
    from selenium.webdriver.common.by import By
    text = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea").get_attribute("value")
    return json.loads(text) if text.strip() else {}


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    from skimage.data import astronaut
    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    Image.fromarray(astronaut()).save(path)
    return path


def test_a_photo_uploaded_gets_its_landmarks_drawn(page, browser, astronaut):
    from selenium.webdriver.common.by import By
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.get(page)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(astronaut))
    drawn = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#drawn img"))[0]
    record = wait_for(browser, lambda d: json_of(d, "record").get("faces"))
    browser.save_screenshot(str(SHOTS / "landmarks.png"))
    (face,) = record
    x0, y0, x1, y1 = face["box"]
    assert len(face["points"]) == 5 and x0 < 224 < x1 and y0 < 80 < y1     # around the astronaut's face
    # the drawn picture is the photo with marks on it: same size, not the same pixels
    src = drawn.get_attribute("src")
    shown = np.asarray(Image.open(urllib.request.urlopen(src)).convert("RGB"), dtype=np.int16)
    assert shown.shape == (512, 512, 3)
    assert np.abs(shown - np.asarray(Image.open(astronaut), dtype=np.int16)).max() > 100


def test_a_point_clicked_on_the_reference_lands_on_the_query(page, browser, astronaut):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.get(page)
    tab = wait_for(browser, lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                                       if b.text.strip() == "Match"])[0]
    tab.click()
    for elem in ("ref", "query"):
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"#{elem} input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, f"#{elem} input[type=file]").send_keys(str(astronaut))
    shown = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#ref img"))[0]
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#query img"))
    time.sleep(1)                                            # the image laid out at its final size
    # a click at a quarter of the shown width and height: (128, 128) in the photo's 512 px
    ActionChains(browser).move_to_element_with_offset(shown, -shown.size["width"] // 4,
                                                      -shown.size["height"] // 4).click().perform()
    result = wait_for(browser, lambda d: json_of(d, "result").get("query_points"))
    browser.save_screenshot(str(SHOTS / "match.png"))
    ref_points = json_of(browser, "result")["ref_points"]
    assert len(ref_points) == 1 and np.abs(np.array(ref_points[0]) - 128).max() < 12
    # the same photo on both sides: the point lands where it was, to a model pixel (512 px at 32: 16 px)
    assert len(result) == 1 and np.abs(np.array(result[0]) - ref_points[0]).max() <= 16
