"""The explorer page in a real browser: headless Chromium driven by Selenium, against a live
server for a small colour net trained on real CIFAR-10 images (the `cifar_small` store).

Needs Debian's chromium and chromium-driver (`make test` installs them where apt works as root);
skipped with the reason otherwise. ALEXNET_EXPLORER_SCREENSHOT=docs/explorer.png saves the
page's screenshot there (the README's picture); by default it goes to the test's temp folder.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.cli import main
from alexnet.config import load_config
from alexnet.data import open_dataset
from alexnet.serve import Explorer, ServeOptions
from alexnet.serve.server import BackgroundServer
from alexnet.train import train

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip("Debian's chromium and chromium-driver are not installed (make test installs them as root)",
                allow_module_level=True)  # fmt: skip
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements.txt pins it)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# A narrow alexnet-small, two epochs over the 1,440 training images: ~5 s on two cores.
COLOUR_NET = ["model.options.widths=[32,32,48,48,32]", "model.options.fc=[64,64]", "epochs=2", "eval_every=1",
              "log_every=4", "batch_size=32", "optim.lr=0.02", "data.workers=0", "data.crop=32", "data.pad=0",
              "precision=fp32", "channels_last=false"]  # fmt: skip
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]  # fmt: skip
WAIT = 90  # seconds: the first neighbours request builds the fc7 index of 1,440 images while the page waits


@pytest.fixture(scope="module")
def colour_run(cifar_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve-browser") / "run"
    train(load_config("demo", None, COLOUR_NET), cifar_small, out, progress=False)
    return out


@pytest.fixture(scope="module")
def server(colour_run, cifar_small):
    with BackgroundServer(Explorer(str(colour_run), ServeOptions(data=str(cifar_small), index_progress=False))) as s:
        yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument("--window-size=1400,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout: float = WAIT):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d) or None)


def loaded(driver) -> bool:
    """Every section of the first load has answered: bars, maps, kernels, neighbours, table, curves."""
    return driver.execute_script("""
        const imgs = (sel) => [...document.querySelectorAll(sel)];
        const ok = (sel) => imgs(sel).length > 0 && imgs(sel).every((i) => i.complete && i.naturalWidth > 0);
        return document.body.dataset.loaded === "1" && document.querySelectorAll('#top5 .bar').length === 5
            && ok('#layer-view img') && ok('#kernels img') && ok('#view') && ok('#neighbors img')
            && document.querySelectorAll('#summary tr').length > 3 && document.querySelectorAll('#run polyline').length > 0;
    """)


def bars(driver) -> list[tuple[str, float, str]]:
    return [(b.get_attribute("data-class"), float(b.get_attribute("data-probability")), b.find_element(By.CSS_SELECTOR, ".p").text)
            for b in driver.find_elements(By.CSS_SELECTOR, "#top5 .bar")]  # fmt: skip


def severe(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_page_loads_everything_without_console_errors(browser, server, tmp_path):
    browser.get(server.url + "/")
    wait_for(browser, loaded)
    assert severe(browser) == []
    assert len(browser.find_elements(By.CSS_SELECTOR, "#neighbors .neighbor")) == 8
    assert len(browser.find_elements(By.CSS_SELECTOR, "#kernels img")) == 2  # two towers (Fig. 3)
    assert browser.find_element(By.ID, "notes").text == ""  # nothing missing: store, neighbours and run all given
    assert browser.find_element(By.ID, "store-title").text.startswith("test images (400, 32×32×3)")
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(height + 40, 4000))
    out = Path(os.environ.get("ALEXNET_EXPLORER_SCREENSHOT") or tmp_path / "explorer.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(out))
    browser.set_window_size(1400, 1000)
    assert Image.open(out).size[0] >= 1000


def test_five_bars_match_alexnet_predict(browser, server, colour_run, cifar_small, tmp_path, capsys):
    browser.get(server.url + "/")
    wait_for(browser, lambda d: len(bars(d)) == 5)
    assert browser.find_element(By.ID, "view").get_attribute("data-image") == "test:0"
    path = tmp_path / "test0.png"
    Image.fromarray(open_dataset(cifar_small)["test"].read(np.array([0]))[0]).save(path)
    assert main(["predict", "--checkpoint", str(colour_run), str(path), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)[0]["top"]
    shown = bars(browser)
    assert [c for c, _, _ in shown] == [t["class"] for t in expected]
    assert np.allclose([p for _, p, _ in shown], [t["probability"] for t in expected], atol=1e-6)
    assert [text for _, _, text in shown] == [f"{t['probability']:.3f}" for t in expected]


def test_choosing_a_layer_shows_its_maps(browser, server):
    browser.get(server.url + "/")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#layer-view .layer"))
    browser.find_element(By.CSS_SELECTOR, "#layer-buttons button[data-layer=conv2]").click()
    shown = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#layer-view .layer[data-layer=conv2] img"))
    assert len(shown) == 2 and "32 × 16 × 16" in browser.find_element(By.CSS_SELECTOR, "#layer-view .layer h3").text
    wait_for(browser, lambda d: all(i.get_attribute("naturalWidth") not in (None, "0") for i in shown))
    browser.find_element(By.CSS_SELECTOR, "#layer-buttons button[data-layer=fc7]").click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#layer-view .layer[data-layer=fc7] img"))
    browser.find_element(By.CSS_SELECTOR, "#layer-buttons button[data-layer=all]").click()
    names = [e.get_attribute("data-layer") for e in browser.find_elements(By.CSS_SELECTOR, "#layer-view .layer")]
    assert names[:2] == ["conv1", "pool1"] and names[-3:] == ["fc6", "fc7", "fc8"]
    assert severe(browser) == []


def test_thumbnail_upload_and_drop_choose_the_image(browser, server, tmp_path):
    browser.get(server.url + "/")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#thumbs .thumb"))
    browser.find_element(By.CSS_SELECTOR, "#thumbs .thumb[data-index='3']").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "view").get_attribute("data-image") == "test:3")
    assert len(bars(browser)) == 5
    # upload through the file input
    rng = np.random.default_rng(0)
    path = tmp_path / "upload.png"
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    browser.find_element(By.ID, "upload").send_keys(str(path))
    wait_for(browser, lambda d: (d.find_element(By.ID, "view").get_attribute("data-image") or "").startswith("upload:"))
    first = browser.find_element(By.ID, "view").get_attribute("data-image")
    # a file dropped on the page
    other = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    other.save(path)
    b64 = base64.b64encode(path.read_bytes()).decode()
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
        document.body.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    """, b64)  # fmt: skip
    wait_for(browser, lambda d: d.find_element(By.ID, "view").get_attribute("data-image") not in (first, "test:3"))
    assert browser.find_element(By.ID, "view").get_attribute("data-image").startswith("upload:")
    assert severe(browser) == []


def test_a_bad_upload_shows_the_servers_message(browser, server, tmp_path):
    browser.get(server.url + "/")
    wait_for(browser, lambda d: len(bars(d)) == 5)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not an image")
    browser.find_element(By.ID, "upload").send_keys(str(bad))
    error = wait_for(browser, lambda d: d.find_element(By.ID, "upload-error").is_displayed() and d.find_element(By.ID, "upload-error"))
    assert "not an image" in error.text
    assert browser.find_element(By.ID, "view").get_attribute("data-image") == "test:0"  # the last good image stays
