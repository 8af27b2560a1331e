"""The Train tab in a real headless Chromium against `python launch.py`: upload a text, train a small
char-LSTM, watch the status, curves and sample, see the model card and the model's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS
from tests.test_browser import page, wait_for  # noqa: F401 - the fixture

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

TEXT = "".join(f"Entry {i}: the lighthouse keeper wrote of wind, of gulls, and of the grey sea.\n" for i in range(80))


def test_train_tab_uploads_trains_and_shows_the_result(running_app, page, tmp_path: Path) -> None:  # noqa: F811
    app = running_app(tmp_path / "data")
    data = tmp_path / "keeper.txt"
    data.write_text(TEXT, encoding="utf-8")
    page.goto(app.url)
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-upload input[type=file]").set_input_files(str(data))
    page.click("#train-add")
    page.get_by_text("keeper (text, ").first.wait_for()
    page.get_by_label("Character LSTM").check()
    page.fill("#train-name textarea, #train-name input", "keeper-lstm")
    page.fill("#train-epochs input", "3")
    page.click("#train-start")
    page.locator("#train-status").get_by_text("keeper-lstm").wait_for()
    wait_for(lambda: "done" in page.locator("#train-status").inner_text(), timeout=300, every=1)
    page.locator("#train-card").get_by_text("val_bpc").first.wait_for()
    page.wait_for_timeout(2500)  # one more refresh draws the final curves
    # the curves are drawn (a plot that first got an empty table drew axes and no lines ever after)
    wait_for(lambda: page.locator("#train-loss [aria-roledescription='line mark']").count() > 0, timeout=30)
    wait_for(lambda: page.locator("#train-epochs-plot [aria-roledescription='line mark']").count() > 0, timeout=30)
    page.screenshot(path=str(ARTIFACTS / "train-tab.png"), full_page=True)
    status = page.locator("#train-status").inner_text()
    assert "local/keeper-lstm" in status
