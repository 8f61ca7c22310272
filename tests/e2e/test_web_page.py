"""The web page of `medseg serve` in a real headless browser (Debian's chromium through chromedriver
and selenium): token, model list, upload, progress, the slice slider over the overlays, downloads,
an error shown for a bad upload; a screenshot is written."""

from __future__ import annotations

import io
import os
import shutil

import httpx
import numpy as np
import pytest

from medseg.io import read_image
from tests.conftest import BRIGHT_DATASET, require_peer
from tests.e2e.test_dicom_node import require_program, wait_for
from tests.e2e.test_serve import TOKEN, server  # noqa: F401 - the running server fixture


@pytest.fixture
def browser():
    require_peer("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = require_program("chromedriver", "chromium-driver")
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(argument)
    if shutil.which("chromium"):
        options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def test_web_page_uploads_a_case_and_slides_through_the_overlays(server, browser, tmp_path, shared_data):  # noqa: F811
    from PIL import Image
    from selenium.webdriver.common.by import By

    def element(id_):
        return browser.find_element(By.ID, id_)

    browser.get(server.url + "/")
    wait_for(lambda: "401" in element("error").text, 20, "the page did not report the missing token")
    element("token").send_keys(TOKEN)
    element("connect").click()
    wait_for(lambda: [o.get_attribute("value") for o in element("model").find_elements(By.TAG_NAME, "option")] == ["bright"], 20, "no model listed")
    assert "liver" in element("model-info").text and "liver" in element("legend").text

    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    element("file").send_keys(str(bad))
    element("run").click()
    wait_for(lambda: "415" in element("error").text, 20, f"no error shown for a text upload: {element('error').text!r}")

    image_path = server.root / "raw" / BRIGHT_DATASET / "imagesTr" / "case_000_0000.nii.gz"
    element("file").clear()
    element("file").send_keys(str(image_path))
    element("run").click()
    wait_for(lambda: "done" in element("state").text, 180, f"job not done: {element('state').text!r} {element('error').text!r}")
    assert element("error").text == ""
    depth = read_image(image_path).spatial_shape[0]
    slider = element("slider")
    assert int(slider.get_attribute("max")) == depth - 1

    browser.execute_script("const s = arguments[0]; s.value = 3; s.dispatchEvent(new Event('input'));", slider)
    shown = element("slice-image")
    wait_for(lambda: shown.get_attribute("data-slice") == "3" and browser.execute_script("return arguments[0].naturalWidth", shown) > 0, 20, "slice 3 not shown")
    assert element("slice-label").text == f"slice 4 of {depth}"
    assert [b.text for b in element("downloads").find_elements(By.TAG_NAME, "button")] == ["measurements", "nifti", "all (zip)"]
    # the review flag and the measurements table beside the overlays, as GET /jobs/{id} has them
    assert element("review").text == "no review flag: the input resembles the training images"
    [job_id] = [j.name for j in (tmp_path / "data" / "jobs").iterdir()]
    job = httpx.get(f"{server.url}/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()
    [rows] = job["measurements"].values()
    cells = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in element("measurements").find_elements(By.TAG_NAME, "tr")[1:]]
    assert cells == [[row["label"], f"{row['volume_ml']:.2f}", str(row["components"]), f"{row['mean_intensity']:.1f}"] for row in rows]
    assert rows[0]["label"] == "liver" and rows[0]["voxels"] > 0
    screenshot = tmp_path / "web_page.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    if os.environ.get("MEDSEG_SCREENSHOTS"):  # keep it where a person can look at it
        shutil.copy(screenshot, os.environ["MEDSEG_SCREENSHOTS"])

    # what the page shows is the prediction: coloured where the label is, grey elsewhere
    headers = {"Authorization": f"Bearer {TOKEN}"}
    png = httpx.get(f"{server.url}/jobs/{job_id}/slices/3.png", headers=headers, timeout=30)
    label = httpx.get(f"{server.url}/jobs/{job_id}/result?format=nifti", headers=headers, timeout=30)
    assert png.status_code == 200 and label.status_code == 200
    (tmp_path / "label.nii.gz").write_bytes(label.content)
    labels = read_image(tmp_path / "label.nii.gz").array[0, 3]
    rgb = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB")).astype(int)
    coloured = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])
    assert labels.any() and np.array_equal(coloured, labels > 0)
    assert httpx.get(f"{server.url}/jobs/{job_id}/slices/{depth}.png", headers=headers, timeout=30).status_code == 404

    # an input unlike the training images: the flag and its reason are shown
    element("file").clear()
    element("file").send_keys(str(shared_data / "ct-mr-totalsegmentator" / "example_mr_sm.nii.gz"))
    element("run").click()
    wait_for(lambda: "review recommended" in element("review").text, 180, f"no review flag shown: {element('review').text!r} {element('error').text!r}")
    assert "input field_of_view: field of view 273 mm along axis 1 (91 voxels)" in element("review").text
