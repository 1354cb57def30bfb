"""``python demo.py`` in a real headless browser: Debian's ``chromium`` + ``chromedriver`` driven by Selenium (no
browser is downloaded). The server runs as a user starts it, on a free localhost port, with the tiny model of the
shared ``pipe`` fixture; the browser uploads a wav, waits for the result, plays the video's metadata (duration > 0),
downloads the npz and loads it; then a text file uploaded as audio must give a message in the page, not a traceback;
an example is one click away. Slow (a minute or two on 2 cores), run by .ci/run:

    python -m pytest -q -m slow tests/test_demo_browser.py

Without chromium it skips, saying what to install; under CI (``CI`` or ``GESTURELSM_REQUIRE_SHARED=1``) it fails.
``GESTURELSM_DEMO_SCREENSHOT=docs/demo.png`` writes the page with its result there (the README's screenshot).
"""

from __future__ import annotations

import base64
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
import soundfile as sf

from dataloaders.synthetic import SR
from tests.conftest import REPO_ROOT, REQUIRE_SHARED_ENV, speech

pytestmark = pytest.mark.slow
SECONDS = 4.0
APT = "apt-get install -y chromium chromium-driver (Debian's packages; no browser is downloaded)"


def _required() -> bool:
    return os.environ.get(REQUIRE_SHARED_ENV, "") not in ("", "0") or os.environ.get("CI", "") not in ("", "0", "false")


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver) from PATH; skips (fails under CI) with what to install when one is missing."""
    chrome = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    driver = shutil.which("chromedriver")
    missing = [name for name, p in (("chromium", chrome), ("chromedriver", driver)) if p is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    if missing:
        hints = ([APT] if chrome is None or driver is None else []) + (["pip install -r requirements-dev.txt"]
                                                                       if "selenium" in missing else [])  # fmt: skip
        msg = f"the browser test needs {', '.join(missing)}: {'; '.join(hints)}"
        if _required():
            pytest.fail(f"{msg} (CI must not skip it)", pytrace=False)
        pytest.skip(msg)
    return chrome, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def browser() -> tuple[str, str]:
    return browser_paths()


@pytest.fixture(scope="module")
def server(browser, pipe, tmp_path_factory):  # browser first: a missing one is said before the model is trained
    base = tmp_path_factory.mktemp("demo_server")
    port = _free_port()
    log = base / "server.log"
    env = dict(os.environ, GRADIO_TEMP_DIR=str(base / "gradio"), GRADIO_ANALYTICS_ENABLED="False",
               PYTHONUNBUFFERED="1")  # fmt: skip
    argv = [sys.executable, "demo.py", "--ckpt", str(pipe["out"]), "--port", str(port), "--device", "cpu",
            "--workdir", str(base / "work"), "--examples-dir", str(base / "examples")]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 240
    while True:
        if proc.poll() is not None:
            pytest.fail(f"demo.py exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"demo.py did not answer on {url} within 240 s:\n{log.read_text()}")
        time.sleep(1)
    yield {"url": url, "work": base / "work", "log": log, "proc": proc, "base": base}
    proc.terminate()  # SIGTERM: the demo exits as on Ctrl+C
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def driver(browser, server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chrome, chromedriver = browser
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500",
                "--mute-audio"):  # fmt: skip
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(chromedriver), options=opts)
    d.set_script_timeout(60)
    yield d
    d.quit()


def _open(d, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d.get(url)
    WebDriverWait(d, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#audio-in input[type=file]"))


def _upload_and_generate(d, path: Path, timeout: float = 600) -> str:
    """Upload ``path`` as the speech, press Generate, wait for a result or an error; returns the status text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d.find_element(By.CSS_SELECTOR, "#audio-in input[type=file]").send_keys(str(path))
    # the upload is done when the component links the uploaded file
    WebDriverWait(d, 60).until(lambda d: any((a.get_attribute("href") or "").find("file=") >= 0 for a in
                                             d.find_elements(By.CSS_SELECTOR, "#audio-in a")))  # fmt: skip
    before = d.find_element(By.ID, "status").text
    d.find_element(By.ID, "generate").click()

    def finished(d):
        text = d.find_element(By.ID, "status").text
        return text if text != before and ("Error" in text or "Real-time factor" in text) else False

    return WebDriverWait(d, timeout, poll_frequency=0.5).until(finished)


def _fetch_in_browser(d, href: str) -> bytes:
    """Download ``href`` with the page's own fetch (as the browser's download link does)."""
    b64 = d.execute_async_script(
        """const [url, done] = arguments;
        fetch(url).then(r => r.ok ? r.arrayBuffer() : Promise.reject(r.status)).then(buf => {
          let s = ''; const b = new Uint8Array(buf);
          for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode.apply(null, b.subarray(i, i + 0x8000));
          done(btoa(s));
        }).catch(e => done('ERROR ' + e));""",
        href,
    )
    assert not b64.startswith("ERROR"), (href, b64)
    return base64.b64decode(b64)


def test_upload_a_wav_get_the_video_and_the_npz(server, driver, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    y, _ = speech(SECONDS, seed=7)
    wav = tmp_path / "hello.wav"
    sf.write(wav, y, SR, subtype="PCM_16")
    _open(driver, server["url"])
    status = _upload_and_generate(driver, wav)
    assert "Real-time factor" in status and "hello.wav" in status, status
    # the video plays: the browser reads its metadata (duration of the whole audio)
    WebDriverWait(driver, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#result-video video")
        and d.find_element(By.CSS_SELECTOR, "#result-video video").get_attribute("src")
    )
    duration = driver.execute_async_script(
        """const done = arguments[0]; const v = document.querySelector('#result-video video');
        if (v.readyState >= 1) done(v.duration); else {
          v.addEventListener('loadedmetadata', () => done(v.duration)); v.addEventListener('error', () => done(-1));
          v.load(); }"""
    )
    assert duration > 0 and abs(duration - SECONDS) < 0.2, duration
    # the npz downloads from the page and loads: the whole audio's frames, finite motion
    links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#result-npz a")]
    href = next(h for h in links if h and h.endswith(".npz"))
    npz = np.load(io.BytesIO(_fetch_in_browser(driver, href)), allow_pickle=False)
    n = int(np.ceil(SECONDS * 30))
    assert npz["poses"].shape == (n, 165) and np.all(np.isfinite(npz["poses"])) and np.abs(npz["poses"]).max() > 0
    assert int(npz["mocap_frame_rate"]) == 30
    rtf = float(driver.find_element(By.CSS_SELECTOR, "#rtf input").get_attribute("value"))
    assert rtf > 0
    # the page fetched nothing from outside this server (no web fonts, no analytics, no CDN)
    fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert len(fetched) > 10
    assert [u for u in fetched if u.startswith(("http:", "https:")) and not u.startswith(server["url"])] == []
    # the request's folder is removed once the page has its files
    deadline = time.time() + 30
    while list(server["work"].glob("req_*")) and time.time() < deadline:
        time.sleep(0.5)
    assert list(server["work"].glob("req_*")) == []
    shot = os.environ.get("GESTURELSM_DEMO_SCREENSHOT")
    driver.execute_script("window.scrollTo(0, 0)")
    png = driver.get_screenshot_as_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "demo.png").write_bytes(png)
    if shot:  # 256 colours: the README's picture stays small
        from PIL import Image

        from utils.io import atomic_path

        with atomic_path(Path(shot)) as tmp:
            Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256).save(tmp, format="PNG", optimize=True)


def test_a_text_file_as_audio_is_a_message_not_a_traceback(server, driver, tmp_path):
    from selenium.webdriver.common.by import By

    notes = tmp_path / "notes.wav"
    notes.write_text("these are my notes, not a recording\n")
    _open(driver, server["url"])
    status = _upload_and_generate(driver, notes, timeout=120)
    assert status.startswith("Error: notes.wav: unreadable audio"), status
    assert "Traceback" not in driver.page_source
    assert not driver.find_elements(By.CSS_SELECTOR, "#result-video video[src]")
    assert "Traceback" not in server["log"].read_text()  # a user's mistake is not a server error either


def test_an_example_is_one_click_away(server, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(driver, server["url"])
    rows = driver.find_elements(By.CSS_SELECTOR, "tr.tr-body")
    assert len(rows) == 3
    rows[0].click()  # the TextGrid example, side by side with its ground truth
    WebDriverWait(driver, 30).until(lambda d: any("file=" in (a.get_attribute("href") or "")
                                                  for a in d.find_elements(By.CSS_SELECTOR, "#audio-in a")))
    # the TextGrid and the reference motion of that row are in their inputs (not only in the examples table)
    WebDriverWait(driver, 30).until(lambda d: "1_ava_0_1_1" in d.find_element(By.ID, "reference-in").text)
    assert "1_ava_0_1_1" in driver.find_element(By.ID, "textgrid-in").text
    assert driver.find_element(By.CSS_SELECTOR, "#audio-in audio") is not None
