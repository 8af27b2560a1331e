"""The shipped digit diffusion model end to end: through gradio_client and in a real Chromium (screenshots in
test-artifacts/: the trajectory strip and a grid)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from gradio_client import Client
from PIL import Image

from tests.conftest import ARTIFACTS, free_port
from webui.server import launch
from webui.services.provenance import image_hash

MODEL = "diffusion-mnist32"


@pytest.fixture
def app(image_ctx):  # type: ignore[no-untyped-def]
    ctx = image_ctx(port=free_port())
    demo = launch(ctx, block=False, quiet=True)
    yield ctx, demo.local_url
    demo.close()


def path_of(value) -> Path:  # type: ignore[no-untyped-def]
    value = value.get("value", value) if isinstance(value, dict) and "value" in value else value
    return Path(value["path"] if isinstance(value, dict) else value)


@pytest.mark.e2e
def test_generate_and_trajectory_through_gradio_client(app) -> None:
    ctx, url = app
    client = Client(url, verbose=False)
    gallery, grid, notice = client.predict(MODEL, "4", "300", 5, 0.0, 1.0, 8, 2.0, "DDIM", api_name="/generate_images")
    assert len(gallery) == 5 and "300–304" in notice and gallery[0]["caption"] == "4 · seed 300"
    from webui.services import png

    meta = png.read_meta(path_of(gallery[2]["image"]))
    assert meta["generator"] == MODEL and meta["seed"] == 302 and meta["params"] == {"steps": 8, "guidance": 2.0,
                                                                                      "scheduler": "DDIM"}
    alone, *_ = client.predict(MODEL, "4", "302", 1, 0.0, 1.0, 8, 2.0, "DDIM", api_name="/generate_images")
    same = [image_hash(path_of(x["image"]).read_bytes()) for x in (alone[0], gallery[2])]
    assert same[0] == same[1]  # seed + i rule: the same image (pixels, parameters), freshly signed

    strip, gif, text, seed = client.predict(MODEL, "9", "11", 5, "", 8, 2.0, "DPM++ 2M", api_name="/trajectory_images")
    assert seed == "11" and "steps 0, 2, 4, 6, 8" in text and path_of(gif).suffix == ".gif"
    with Image.open(path_of(strip)) as im:
        assert im.size == (3 * (5 * 34 + 2), 3 * (2 * 34 + 2) + 16)  # enlarged, step numbers under it
    with pytest.raises(Exception, match="trajectory step must be from 0 to 8"):
        client.predict(MODEL, "9", "11", 5, "0, 40", 8, 2.0, "DPM++ 2M", api_name="/trajectory_images")
    with pytest.raises(Exception, match="scheduler"):
        client.predict(MODEL, "9", "11", 1, 0.0, 1.0, 8, 2.0, "LMS", api_name="/generate_images")


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def wait_for(predicate, timeout: float = 120.0, every: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


@pytest.mark.e2e
@pytest.mark.browser
def test_diffusion_grid_and_trajectory_in_a_real_browser(app) -> None:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: run ./setup.sh (it installs chromium and chromium-driver)")
    ctx, url = app
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(120_000)
        try:
            page.goto(url)
            page.get_by_role("tab", name="Image").click()
            # pick the diffusion model: its own settings appear, the GAN's truncation goes
            page.locator("#image-model input").click()
            page.get_by_role("option", name=MODEL).click()
            page.locator("#image-scheduler").wait_for(state="visible")
            page.locator("#image-steps").wait_for(state="visible")
            page.locator("#image-seed textarea, #image-seed input").first.fill("1000")
            page.locator("#image-steps input[type='number']").fill("12")
            page.locator("#image-steps input[type='number']").press("Enter")
            page.click("#image-generate-button")
            page.get_by_text("seeds 1000–1009").wait_for()
            page.locator("#image-grid img").wait_for()
            page.screenshot(path=str(ARTIFACTS / "diffusion-grid.png"), full_page=True)
            # the denoising trajectory: a strip and a GIF
            page.get_by_role("tab", name="Denoising trajectory").click()
            page.locator("#image-trajectory-seed textarea, #image-trajectory-seed input").first.fill("7")
            page.click("#image-trajectory-button")
            page.locator("#image-trajectory-strip img").wait_for()
            page.locator("#image-trajectory-gif img").wait_for()
            page.get_by_text("x_t after steps 0,").wait_for()
            page.screenshot(path=str(ARTIFACTS / "diffusion-trajectory.png"), full_page=True)
            from webui.services import images as svc

            kinds = [item.kind for item in svc.gallery(ctx, "local").images]
            assert kinds.count("trajectory") == 1 and kinds.count("sample") == 10
        finally:
            page.screenshot(path=str(ARTIFACTS / "diffusion-last-state.png"), full_page=True)
            browser.close()
