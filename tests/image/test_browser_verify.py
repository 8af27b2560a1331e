"""The Verify view in a real headless Chromium: drop in a signed PNG, then a tampered one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, free_port
from webui.server import launch
from webui.services import images as svc

pytestmark = [pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def test_verify_view_reports_signed_and_tampered_images(image_ctx, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    ctx = image_ctx(port=free_port())
    item = svc.generate(ctx, "local", "vae-mnist32", 6, 21, 1, ai_label=True).images[0]
    tampered = tmp_path / "tampered.png"
    data = bytearray(item.path.read_bytes())
    data[data.index(b"IDAT") + 9] ^= 1
    tampered.write_bytes(bytes(data))
    demo = launch(ctx, block=False, quiet=True)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(demo.local_url)
            page.get_by_role("tab", name="Verify").click()
            page.wait_for_selector("#verify-identity >> text=This studio signs as")
            page.locator("#verify-upload input[type=file]").set_input_files(str(item.path))
            page.wait_for_selector("#verify-report >> text=Signed by this studio")
            assert "Pixels changed after signing" in page.inner_text("#verify-report")
            page.screenshot(path=str(ARTIFACTS / "verify-signed.png"), full_page=True)
            page.locator("#verify-upload button[aria-label='Clear']").first.click()
            page.locator("#verify-upload input[type=file]").set_input_files(str(tampered))
            page.wait_for_selector("#verify-report >> text=Not authentic")
            assert "Changed after signing" in page.inner_text("#verify-report")
            assert "yes, but the file was changed after signing" in page.inner_text("#verify-report")
            page.screenshot(path=str(ARTIFACTS / "verify-tampered.png"), full_page=True)
            box = page.locator("#verify-ai-label input[type=checkbox]")
            assert not box.is_checked()
            box.check()
            page.wait_for_selector("#verify-ai-label-saved >> text=new images get the label")
            assert svc.label_default(ctx, "local") is True
            browser.close()
    finally:
        demo.close()
