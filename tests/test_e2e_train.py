"""End to end on the real default model: `python launch.py`, a text uploaded and SmolLM2 fine-tuned with LoRA
for a few steps through gradio_client, then the result chatted with through the openai client (and still
there after a restart)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest
from gradio_client import Client, handle_file

pytestmark = pytest.mark.e2e

TEXT = "".join(f"Log {i}. The keeper trimmed the wick at dusk; the lamp burned steady over the grey water.\n"
               for i in range(60))


def wait_done(client: Client, job_id: str, timeout_s: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.predict(job_id, api_name="/train_job")
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(2)
    raise AssertionError(f"the job did not finish: {job}")


def test_fine_tune_smollm2_with_lora_and_chat_with_it(running_app, tmp_path: Path) -> None:
    data = tmp_path / "data"
    app = running_app(data)
    client = Client(app.url, verbose=False)
    text = tmp_path / "keeper.txt"
    text.write_text(TEXT, encoding="utf-8")
    dataset, _ = client.predict(handle_file(str(text)), "", api_name="/train_add_dataset")
    job_id = client.predict("lora", dataset["value"], "keeper",
                            {"max_steps": 3, "max_length": 64, "batch_size": 2, "epochs": 1}, api_name="/train")
    job = wait_done(client, job_id)
    assert job["state"] == "done", job
    figures = job["figures"]
    assert figures["steps"] == 3 and figures["ppl_after"] > 0 and figures["ppl_before"] > 0
    assert job["model"] == "local/keeper"
    mine = client.predict(api_name="/my_models")
    assert "local/keeper" in str(mine)
    oa = openai.OpenAI(base_url=f"{app.url}/v1", api_key="none", max_retries=0, timeout=300)
    assert "local/keeper" in [m.id for m in oa.models.list().data]
    reply = oa.chat.completions.create(model="local/keeper", max_tokens=12, temperature=0,
                                       messages=[{"role": "user", "content": "What did the keeper do at dusk?"}])
    assert reply.choices[0].message.content.strip()
    # the model is still there after a restart
    app.stop()
    again = running_app(data)
    oa = openai.OpenAI(base_url=f"{again.url}/v1", api_key="none", max_retries=0, timeout=300)
    assert "local/keeper" in [m.id for m in oa.models.list().data]
