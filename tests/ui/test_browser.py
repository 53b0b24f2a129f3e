"""The web UI in a real browser: headless Chromium from the system's packages, driven by Playwright, against
`tinypipe ui` started as a user starts it. A new user trains a tiny LoRA from the page, watches it succeed, sees its
images and loss curve, and downloads its zip; a UI served to other machines refuses the browser until it has the
printed token.

Needs `pip install playwright` and a system Chromium (`apt-get install chromium`); `.ci/run` installs both. Without
them these tests are skipped, saying so. `TINYPIPE_UI_SCREENSHOTS=docs` also saves the README's screenshots there.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the ui extra is not installed (pip install -e '.[ui]'): the web UI's tests are skipped")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright): the web "
                                                             "UI's browser tests are skipped")
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (apt-get install chromium): the web UI's "
                                                         "browser tests are skipped")
SCREENSHOTS = os.environ.get("TINYPIPE_UI_SCREENSHOTS")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(home: Path, *options: str):
    """`tinypipe ui --port P OPTIONS` in a subprocess, until it answers; yields (its address, the line it printed)."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "tinypipe", "ui", "--port", str(port), *options],
                               env={**os.environ, "TINYPIPE_HOME": str(home)}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        printed = process.stdout.readline().strip()
        deadline = time.monotonic() + 60
        while True:  # the line is printed just before uvicorn listens: wait for the port to take connections
            assert process.poll() is None, f"tinypipe ui exited: {printed} {process.stdout.read()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "tinypipe ui did not start listening within 60 s"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/", printed
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def test_a_new_user_trains_a_tiny_lora_from_the_page_sees_it_succeed_and_downloads_its_zip(browser, home):
    steps = "60" if SCREENSHOTS else "3"
    with serving(home) as (address, printed):
        assert printed == f"tinypipe UI on {address}"
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(120_000)  # the machine's cores are shared with the job's process
        page.goto(address)
        page.click("text=New job")
        page.fill("input[name=name]", "circles")
        assert page.input_value("input[name=model]") == "tinypipe/tiny-sd"  # the built-in is the default
        page.fill("input[name=dataset]", "tinypipe/shapes")
        page.fill("input[name=prompt]", "a photo of sks circle")
        page.fill("input[name=max_train_steps]", steps)
        page.fill("input[name=num_validation_images]", "2" if SCREENSHOTS else "1")
        page.fill("input[name=validation_inference_steps]", "2" if not SCREENSHOTS else "10")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{8}$"), timeout=120_000)
        job_id = page.url.rsplit("/", 1)[1]
        sync_api.expect(page.locator("#job-status")).to_have_text("succeeded", timeout=240_000)
        page.wait_for_selector("#before-after")  # the page reloads itself once the job has ended

        # Its images and loss curve are shown, each loaded.
        images = page.locator("img")
        assert images.count() >= 3  # the loss curve, the before/after grid, the validation images
        for index in range(images.count()):
            assert images.nth(index).evaluate("image => image.complete && image.naturalWidth > 0"), images.nth(index).get_attribute("src")
        assert page.locator("#loss").is_visible() and page.locator("img.validation").count() >= 1
        assert f"Job {job_id} succeeded" in page.locator("#log").text_content()
        if SCREENSHOTS:
            page.screenshot(path=str(Path(SCREENSHOTS) / "ui-job.png"), full_page=True,
                            clip={"x": 0, "y": 0, "width": 1280, "height": 1500})

        # The zip holds what `download-model` puts in it.
        with page.expect_download() as download:
            page.click("#download")
        assert download.value.suggested_filename == f"circles-{job_id}.zip"
        with zipfile.ZipFile(download.value.path()) as archive:
            names = set(archive.namelist())
        assert {"model/pytorch_lora_weights.safetensors", "model/config.json", "model/filelist.txt",
                "validation/before_after.png"} <= names
        assert any(re.fullmatch(r"validation/epoch-\d+/image-\d+\.png", name) for name in names)

        # The jobs list shows it, succeeded.
        page.goto(address)
        row = page.locator(f"tr[data-job='{job_id}']")
        sync_api.expect(row).to_contain_text("succeeded")
        sync_api.expect(row).to_contain_text("tinypipe/tiny-sd")
        if SCREENSHOTS:
            _screenshot_with_a_running_job(page, address, Path(SCREENSHOTS) / "ui-jobs.png")


def _screenshot_with_a_running_job(page, address: str, path: Path) -> None:
    """The README's jobs page: a second, longer job started from the form, shown running with its progress, then cancelled."""
    page.goto(address + "new")
    page.fill("input[name=name]", "squares")
    page.fill("input[name=dataset]", "tinypipe/shapes")
    page.fill("input[name=prompt]", "a photo of sks square")
    page.fill("input[name=max_train_steps]", "2000")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{8}$"))
    page.goto(address)
    page.wait_for_selector("progress", timeout=240_000)
    page.wait_for_timeout(6000)  # a few steps on, with an estimate of the time left
    page.screenshot(path=str(path))
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("tr:has-text('squares') >> text=Cancel")
    sync_api.expect(page.locator("tr:has-text('squares')")).to_contain_text("cancelled")


def test_a_ui_served_to_other_machines_refuses_the_browser_until_it_brings_the_printed_token(browser, home):
    with serving(home, "--host", "0.0.0.0", "--auth") as (address, printed):
        token = re.fullmatch(rf"tinypipe UI on {re.escape(address)}\?token=([\w-]+)", printed).group(1)
        page = browser.new_page()
        for path in ("", "new", "try", "static/ui.js"):
            answer = page.goto(address + path)
            assert answer.status == 401 and "needs its access token" in page.content()
        answer = page.goto(f"{address}?token={token}")
        assert answer.status == 200 and page.url == address  # the token is left out of the address once the cookie is set
        sync_api.expect(page.locator("h1")).to_have_text("Jobs")
        assert page.goto(address + "static/ui.js").status == 200
