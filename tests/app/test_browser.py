"""A real browser on the real server (issue 13, "a real browser"): ``pnnunet_app`` started on 127.0.0.1
in a subprocess, Debian's headless Chromium driven by selenium through upload -> model choice -> job
progress -> viewer -> statistics -> download. The viewer's canvas must really have rendered (pixel
variance of its screenshot; hiding a label changes it), the statistics table must name the labels,
and the downloaded label map must be the input's geometry.

Skipped, with the reason, where Chromium or chromedriver is absent (``.ci/run`` installs them with
apt-get: ``apt-get install -y chromium chromium-driver``). Set ``PNNUNET_APP_SCREENSHOT=FILE.png`` to
keep a screenshot of the page (how docs/app_screenshot.png was made).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.app.conftest import CASE

pytestmark = pytest.mark.e2e

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--window-size=1280,1400")


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for tool, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not tool.is_file():
            return f"{tool} not found: install Debian's {package} (apt-get install -y chromium chromium-driver)"
    return None


if _missing():
    pytest.skip(f"BROWSER TESTS SKIPPED: {_missing()}", allow_module_level=True)

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    port = _free_port()
    jobs = tmp_path_factory.mktemp("app_jobs")
    log = open(jobs.parent / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "pnnunet.app.main", "--models", str(tiny_models), "--jobs",
                             str(jobs), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(base + "/api/info", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("pnnunet_app did not start: " + (jobs.parent / "server.log").read_text())
            time.sleep(0.2)
    yield base, jobs
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}")
    options.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _open(browser, base):
    browser.get(base)
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")


def _job_state(browser) -> str | None:
    """The newest job's state text, read in one script call (the table is redrawn every 0.7 s)."""
    return browser.execute_script("const c = document.querySelector('#jobs tbody tr .job-state');"
                                  "return c ? c.textContent : null;")


def _canvas_pixels(browser) -> np.ndarray:
    from PIL import Image

    png = browser.find_element(By.ID, "gl").screenshot_as_png
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float32)


def test_upload_segment_view_statistics_download(server, browser, tmp_path):
    base, _ = server
    start = time.perf_counter()
    _open(browser, base)
    browser.find_element(By.ID, "file").send_keys(str(CASE))
    assert browser.find_element(By.ID, "chosen").text == CASE.name
    Select(browser.find_element(By.ID, "model")).select_by_index(0)
    details = browser.find_element(By.ID, "model-details").text
    assert "3d_fullres" in details and "1: Anterior" in details and "2: Posterior" in details
    browser.find_element(By.ID, "tta").click()  # no mirroring: 8x fewer network calls
    browser.find_element(By.ID, "start").click()

    states, deadline = [], time.monotonic() + 90
    while not browser.find_element(By.ID, "gl").get_attribute("data-loaded"):
        text = _job_state(browser)
        if text and (not states or text != states[-1]):
            states.append(text)
        assert "failed" not in (states[-1] if states else ""), states
        assert time.monotonic() < deadline, f"the viewer never loaded; job states seen: {states}"
        time.sleep(0.05)
    assert any(s.startswith("running") for s in states), states  # the progress was shown
    final = _job_state(browser)
    assert final.startswith("done in"), (final, states)

    time.sleep(1.0)  # the first frames of the 3D render
    pixels = _canvas_pixels(browser)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert pixels.std() > 20, "the viewer canvas is blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # an image, not a flat fill

    names = [r.find_elements(By.TAG_NAME, "td")[0].text for r in browser.find_elements(By.CSS_SELECTOR, "#stats .stat-row")]
    assert names == ["Anterior", "Posterior"]

    hover = browser.find_element(By.ID, "hover")
    canvas = browser.find_element(By.ID, "gl")
    before = hover.text
    ActionChains(browser).move_to_element_with_offset(canvas, -canvas.size["width"] // 2 + 80, 0).perform()
    WebDriverWait(browser, 5).until(lambda d: hover.text != before)
    assert hover.text in ("background", "Anterior (label 1)", "Posterior (label 2)")

    browser.find_element(By.CSS_SELECTOR, "input[data-label='1']").click()  # hide label 1
    time.sleep(0.5)
    assert np.abs(_canvas_pixels(browser) - pixels).mean() > 0.5, "hiding a label did not change the view"
    browser.find_element(By.CSS_SELECTOR, "input[data-label='1']").click()
    time.sleep(0.5)
    shown = _canvas_pixels(browser)
    browser.execute_script("const s = document.getElementById('opacity'); s.value = '1';"
                           "s.dispatchEvent(new Event('input'));")
    time.sleep(0.5)
    assert np.abs(_canvas_pixels(browser) - shown).mean() > 0.5, "the overlay opacity did not change the view"

    if os.environ.get("PNNUNET_APP_SCREENSHOT"):
        time.sleep(0.5)
        browser.save_screenshot(os.environ["PNNUNET_APP_SCREENSHOT"])

    links = {a.get_attribute("data-kind"): a.get_attribute("href")
             for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a.download")}
    assert {"segmentation", "statistics_csv", "statistics_json", "report_html", "report_png"} <= set(links)
    seg_file = tmp_path / "seg.nii.gz"
    seg_file.write_bytes(urllib.request.urlopen(links["segmentation"]).read())
    seg, img = sitk.ReadImage(str(seg_file)), sitk.ReadImage(str(CASE))
    assert (seg.GetSize(), seg.GetSpacing(), seg.GetOrigin()) == (img.GetSize(), img.GetSpacing(), img.GetOrigin())
    csv = urllib.request.urlopen(links["statistics_csv"]).read().decode()
    assert "Anterior" in csv and "Posterior" in csv
    print(f"browser flow: {time.perf_counter() - start:.1f} s; job states seen: {states}")


def test_a_bad_upload_is_explained_on_the_page(server, browser, tmp_path):
    base, _ = server
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    _open(browser, base)
    browser.find_element(By.ID, "file").send_keys(str(bad))
    browser.find_element(By.ID, "start").click()
    error = browser.find_element(By.ID, "error")
    WebDriverWait(browser, 20).until(lambda d: error.is_displayed())
    assert "'notes.txt' is not an image pnnunet can read" in error.text and "fix:" in error.text
    _open(browser, base)  # the server keeps serving
    assert browser.find_element(By.ID, "model").get_attribute("value")
