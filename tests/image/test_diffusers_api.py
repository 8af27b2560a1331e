"""The image routes other tools speak, on a running in-process server with the tiny SD pipeline:
OpenAI's /v1/images/generations through the official `openai` client, A1111's /sdapi/v1 through httpx."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.conftest import free_port
from tests.image.test_provenance import studio_claims
from webui.server import launch
from webui.services import png, provenance

SIZE = 32


@pytest.fixture
def server(paint_ctx: Any) -> Any:
    ctx = paint_ctx(port=free_port())
    demo = launch(ctx, quiet=True)
    yield ctx, demo.local_url.rstrip("/")
    demo.close()


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_openai_images_b64_and_url(server: Any) -> None:
    ctx, url = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    out = client.images.generate(model="tiny-sd", prompt="a red cat", n=2, size=f"{SIZE}x{SIZE}",
                                 response_format="b64_json", extra_body={"steps": 2, "seed": 7})
    assert len(out.data) == 2
    first = _png(base64.b64decode(out.data[0].b64_json))
    assert first.size == (SIZE, SIZE) and "Seed: 7" in first.text["parameters"]
    assert "Seed: 8" in _png(base64.b64decode(out.data[1].b64_json)).text["parameters"]  # image i uses seed + i
    linked = client.images.generate(model="tiny-sd", prompt="a red cat", n=1, size=f"{SIZE}x{SIZE}",
                                    response_format="url", extra_body={"steps": 2, "seed": 7})
    fetched = httpx.get(linked.data[0].url, timeout=30)
    assert fetched.status_code == 200  # the same image (pixels + parameters), under a fresh C2PA signature
    assert provenance.image_hash(fetched.content) == provenance.image_hash(base64.b64decode(out.data[0].b64_json))
    for data in (base64.b64decode(out.data[0].b64_json), fetched.content):  # both ways carry signed credentials
        assert studio_claims(ctx, data)["model"] == "tiny-sd"
    marked = client.images.generate(model="tiny-sd", prompt="a red cat", n=1, size=f"{SIZE}x{SIZE}",
                                    extra_body={"steps": 2, "seed": 7, "ai_label": True})
    assert png.read_meta(base64.b64decode(marked.data[0].b64_json))["visible_label"] is True  # per request
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="tiny-sd", prompt="a cat", size="30x30", extra_body={"steps": 2})
    assert "width" in str(err.value)
    with pytest.raises(openai.BadRequestError, match="not an image model here"):
        client.images.generate(model="fake", prompt="a cat", size=f"{SIZE}x{SIZE}")
    # the app keeps serving, and the gallery holds exactly the four good images
    assert httpx.get(url + "/api/images?model=tiny-sd", timeout=30).json()["total"] == 4


def test_a1111_txt2img_img2img_models_and_samplers(server: Any) -> None:
    ctx, url = server
    models = httpx.get(url + "/sdapi/v1/sd-models", timeout=30).json()
    assert [m["model_name"] for m in models] == ["tiny-sd"] and models[0]["title"].startswith("tiny-sd [")
    samplers = [s["name"] for s in httpx.get(url + "/sdapi/v1/samplers", timeout=30).json()]
    assert samplers == ["DPM++ 2M", "Euler", "Euler a", "DDIM"]
    body = {"prompt": "a blue dog", "negative_prompt": "blurry", "seed": 3, "sampler_name": "Euler a", "steps": 2,
            "cfg_scale": 5, "width": SIZE, "height": SIZE, "batch_size": 2,
            "override_settings": {"sd_model_checkpoint": models[0]["title"]}, "restore_faces": False}
    r = httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=120)
    assert r.status_code == 200, r.text
    data = r.json()
    info = json.loads(data["info"])
    assert len(data["images"]) == 2 and info["all_seeds"] == [3, 4] and info["sampler_name"] == "Euler a"
    assert info["infotexts"][0].startswith("a blue dog\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a, CFG scale: 5")
    init = data["images"][0]
    assert studio_claims(ctx, base64.b64decode(init))["model"] == "tiny-sd"
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (8, 8, 24, 24))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    r = httpx.post(url + "/sdapi/v1/img2img", json={
        "prompt": "a blue dog", "init_images": ["data:image/png;base64," + init],
        "mask": base64.b64encode(buf.getvalue()).decode(),
        "denoising_strength": 1.0, "steps": 2, "seed": 3, "width": SIZE, "height": SIZE}, timeout=120)
    assert r.status_code == 200, r.text
    out = np.asarray(_png(base64.b64decode(r.json()["images"][0])).convert("RGB"))
    before = np.asarray(_png(base64.b64decode(init)).convert("RGB"))
    inside = np.zeros((SIZE, SIZE), bool)
    inside[8:24, 8:24] = True
    assert np.array_equal(out[~inside], before[~inside]) and not np.array_equal(out[inside], before[inside])
    assert "Denoising strength: 1" in json.loads(r.json()["info"])["infotexts"][0]
    edited = base64.b64decode(r.json()["images"][0])  # an inpainting of a signed PNG links to its manifest
    studio_claims(ctx, edited)
    assert ctx.signer.verify(edited).ingredients == [{"title": "init image", "relationship": "parentOf", "signed": True}]
    assert ctx.signer.verify(edited).digital_source_type == provenance.COMPOSITE
    for bad, field in [({"init_images": ["%%%"]}, "init_images"), ({"init_images": [base64.b64encode(b"text").decode()]},
                                                                      "init_image"), ({}, "init_images")]:
        r = httpx.post(url + "/sdapi/v1/img2img", json={"prompt": "x", "steps": 2, **bad}, timeout=60)
        assert r.status_code == 400 and field in r.json()["error"]["message"], r.text  # init_image(s): the field
    r = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", "steps": 999}, timeout=60)
    assert r.status_code == 400 and "steps" in r.json()["error"]["message"]
    assert httpx.get(url + "/sdapi/v1/options", timeout=30).json() == {"sd_model_checkpoint": "tiny-sd"}
