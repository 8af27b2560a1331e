"""The Image tab's Prompt controls with the tiny SD pipeline: through gradio_client, and in a real
Chromium (progress, Stop between steps, inpainting a painted mask) with screenshots in test-artifacts/."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.conftest import ARTIFACTS, free_port
from webui.server import launch

SIZE = 64


@pytest.fixture
def app(paint_ctx: Any) -> Any:
    ctx = paint_ctx(port=free_port())
    demo = launch(ctx, block=False, quiet=True)
    yield ctx, demo
    demo.close()


def _outcomes(ctx: Any) -> list[str]:
    from sqlalchemy import select

    from storage.models import Generation

    with ctx.store.begin() as s:
        return [g.outcome for g in s.scalars(select(Generation).order_by(Generation.started_at))]


def test_controls_follow_the_selected_model(paint_ctx: Any) -> None:
    from webui.tabs import image_paint

    ctx = paint_ctx()
    view = image_paint.model_view(ctx, "tiny-sd")
    assert view["modes"] == ["Text to image", "Image to image", "Inpaint"]
    assert view["schedulers"][0] == "DPM++ 2M" and view["loras"] == ["other-model", "style"]
    with gr.Blocks():
        image_paint.build(ctx)  # builds without launching


def test_paint_through_gradio_client_and_inpaint(app: Any, tmp_path: Path) -> None:
    ctx, demo = app
    client = Client(demo.local_url, verbose=False)
    status, _preview, gallery = client.predict(
        "tiny-sd", "Text to image", "a red cat <lora:style:0.5>", "blurry", None, SIZE, SIZE, 2, 7.0, 0.75, "Euler",
        "11", 2, [], 0.8, api_name="/paint_images")
    assert "seeds 11–12" in status and len(gallery) == 2
    first = Path(gallery[0]["image"]["path"] if isinstance(gallery[0]["image"], dict) else gallery[0]["image"])
    with Image.open(first) as im:
        assert "<lora:style:0.5>" in im.text["parameters"] and "Seed: 11" in im.text["parameters"]
    init = tmp_path / "init.png"
    Image.fromarray(np.full((SIZE, SIZE, 3), 120, np.uint8)).save(init)
    stroke = np.zeros((SIZE, SIZE, 4), np.uint8)
    stroke[16:48, 16:48] = (255, 255, 255, 255)
    Image.fromarray(stroke, "RGBA").save(tmp_path / "layer.png")
    editor = {"background": handle_file(str(init)), "layers": [handle_file(str(tmp_path / "layer.png"))],
              "composite": handle_file(str(init))}
    status, _preview, gallery = client.predict(
        "tiny-sd", "Inpaint", "a blue dog", "", editor, SIZE, SIZE, 2, 7.0, 1.0, "Euler", "3", 1, [], 0.8,
        api_name="/paint_images")
    out = np.asarray(Image.open(gallery[0]["image"]["path"] if isinstance(gallery[0]["image"], dict)
                                else gallery[0]["image"]).convert("RGB"))
    assert (out[:16] == 120).all() and not (out[16:48, 16:48] == 120).all()
    with pytest.raises(Exception, match="mask: paint over"):
        client.predict("tiny-sd", "Inpaint", "x", "", {"background": handle_file(str(init)), "layers": [],
                                                       "composite": handle_file(str(init))},
                       SIZE, SIZE, 2, 7.0, 1.0, "Euler", "3", 1, [], 0.8, api_name="/paint_images")
    assert _outcomes(ctx) == ["ok", "ok"]


@pytest.mark.browser
def test_prompt_tab_in_a_real_browser_progress_and_stop(app: Any) -> None:
    from playwright.sync_api import sync_playwright

    from tests.test_browser import ARGS, CHROMIUM

    ctx, demo = app
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(90_000)
        try:
            page.goto(demo.local_url)
            page.get_by_role("tab", name="Image").click()
            page.get_by_role("tab", name="Prompt", exact=True).click()
            page.locator("#paint-prompt textarea").fill("a red cat on the grass")
            page.locator("#paint-width input[type=number]").fill(str(SIZE))
            page.locator("#paint-height input[type=number]").fill(str(SIZE))
            page.locator("#paint-steps input[type=number]").fill("3")
            page.locator("#paint-seed textarea, #paint-seed input").first.fill("5")
            page.locator("#paint-run").click()
            page.get_by_text("Done: seed 5").wait_for()
            page.locator("#paint-gallery img").first.wait_for()
            page.screenshot(path=str(ARTIFACTS / "image-prompt.png"), full_page=True)
            # a long run, stopped between two steps: recorded as cancelled, nothing saved
            page.locator("#paint-steps input[type=number]").fill("150")
            page.locator("#paint-width input[type=number]").fill("256")
            page.locator("#paint-height input[type=number]").fill("256")
            saved = len(list((ctx.store.data_dir / "images").glob("*.png")))
            page.locator("#paint-run").click()
            page.get_by_text("Step 2 of 150").wait_for()
            page.screenshot(path=str(ARTIFACTS / "image-prompt-progress.png"), full_page=True)
            page.locator("#paint-stop").click()
            deadline = time.time() + 120
            while "cancelled" not in _outcomes(ctx) and time.time() < deadline:
                time.sleep(0.2)
            assert _outcomes(ctx)[-1] == "cancelled"
            assert len(list((ctx.store.data_dir / "images").glob("*.png"))) == saved
        finally:
            page.screenshot(path=str(ARTIFACTS / "image-prompt-last.png"), full_page=True)
            browser.close()
