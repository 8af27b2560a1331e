"""The Image and Gallery tabs through gradio_client against a launched app (shipped GAN and VAE)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.conftest import free_port
from tests.image.test_provenance import studio_claims
from webui.server import launch
from webui.services import png as pngmeta


@pytest.fixture
def app(image_ctx):  # type: ignore[no-untyped-def]
    ctx = image_ctx(port=free_port())
    demo = launch(ctx, block=False, quiet=True)
    yield ctx, Client(demo.local_url, verbose=False)
    demo.close()


def path_of(value) -> Path:  # type: ignore[no-untyped-def]
    value = value.get("value", value) if isinstance(value, dict) and "value" in value else value
    return Path(value["path"] if isinstance(value, dict) else value)


def test_generate_read_png_info_and_make_it_again(app) -> None:
    ctx, client = app
    gallery, grid, notice = client.predict("gan-mnist32", "3", "77", 6, 0.0, 1.0, api_name="/generate_images")
    assert len(gallery) == 6 and "77–82" in notice and path_of(grid).suffix == ".png"
    grid_claims = studio_claims(ctx, path_of(grid).read_bytes())  # what is saved from the page is signed too
    assert grid_claims["kind"] == "grid" and len(pngmeta.read_meta(path_of(grid))["images"]) == 6
    first = path_of(gallery[0]["image"])
    saved = sorted((ctx.store.data_dir / "images").glob("*.png"))
    assert len(saved) == 6 and hashlib.sha256(first.read_bytes()).hexdigest() in {
        hashlib.sha256(p.read_bytes()).hexdigest() for p in saved}  # the browser gets the saved bytes
    assert gallery[0]["caption"] == "3 · seed 77"
    text, meta = client.predict(handle_file(str(first)), api_name="/png_info")
    assert meta["seed"] == 77 and meta["class"] == 3 and "gan-mnist32" in text
    image, note = client.predict(handle_file(str(first)), api_name="/png_regenerate")
    assert "the same image as the uploaded one: identical pixels, parameters and signed claims" in note
    assert path_of(image).read_bytes() != first.read_bytes()  # a fresh signature (time, instance id)


def test_interpolate_and_reconstruct(app, tmp_path) -> None:
    _, client = app
    strip, gif, notice, a_seed, b_seed = client.predict("gan-mnist32", "1", "5", "8", "", 8, 0.0, 1.0,
                                                        api_name="/interpolate_images")
    assert path_of(gif).suffix == ".gif" and a_seed == "5" and b_seed.isdigit() and "8 frames" in notice
    with Image.open(path_of(strip)) as im:
        assert im.size == (8 * 34 + 2, 36)
    drawing = np.full((280, 280, 3), 255, np.uint8)
    drawing[40:240, 125:155] = 0
    Image.fromarray(drawing).save(tmp_path / "one.png")
    editor = {"background": handle_file(str(tmp_path / "one.png")), "layers": [],
              "composite": handle_file(str(tmp_path / "one.png"))}
    recon, note = client.predict(editor, "vae-mnist32", "guess", api_name="/reconstruct_image")
    assert "Read as 1 (guessed by the classifier)" in note and path_of(recon).is_file()


def test_gallery_pages_opens_reruns_and_deletes(app) -> None:
    ctx, client = app
    client.predict("vae-mnist32", "5", "1", 3, 0.0, 0.7, api_name="/generate_images")
    items, page, summary = client.predict("vae-mnist32", "all", 1, api_name="/gallery_page")
    assert len(items) == 3 and page == 1 and summary.startswith("3 image(s)")
    newest = ctx.store.data_dir
    from webui.services import images as svc

    first = svc.gallery(ctx, "local").images[0]
    preview, details, _ = client.predict(first.id, api_name="/gallery_open")
    assert details["id"] == first.id and details["params"]["params"] == {"temperature": 0.7}
    new_id, _, details, note = client.predict(first.id, api_name="/gallery_rerun")
    assert new_id != first.id and "the same image as the original: identical pixels, parameters and signed claims" in note
    client.predict(new_id, api_name="/gallery_delete")
    assert svc.gallery(ctx, "local").total == 3 and newest.exists()


def test_bad_input_reaches_the_client_as_a_message(app, tmp_path) -> None:
    _, client = app
    with pytest.raises(Exception, match="greater than maximum value 64"):  # the slider checks it first
        client.predict("gan-mnist32", "3", "1", 500, 0.0, 1.0, api_name="/generate_images")
    with pytest.raises(Exception, match="seed must be a whole number"):
        client.predict("gan-mnist32", "3", "twelve", 1, 0.0, 1.0, api_name="/generate_images")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"this is text, not a PNG")
    with pytest.raises(Exception, match="not an image"):
        client.predict(handle_file(str(fake)), api_name="/png_info")
    with pytest.raises(Exception, match="does not exist"):
        client.predict("0" * 32, api_name="/gallery_open")


def test_http_api_generates_lists_downloads_and_deletes(app) -> None:
    import httpx

    ctx, client = app
    base = client.src.rstrip("/")
    made = httpx.post(f"{base}/api/images", json={"model": "gan-mnist32", "label": 9, "seed": 5, "count": 2}, timeout=60)
    assert made.status_code == 200, made.text
    first = made.json()["data"][0]
    assert first["seed"] == 5 and first["label"] == 9 and "path" not in first
    listed = httpx.get(f"{base}/api/images", params={"model": "gan-mnist32", "label": "9"}).json()
    assert listed["total"] == 2
    png_file = httpx.get(f"{base}/api/images/{first['id']}.png")
    assert png_file.headers["content-type"] == "image/png"
    assert (ctx.store.data_dir / "images" / f"{first['id']}.png").read_bytes() == png_file.content
    for body, message in [({"model": "gan-mnist32", "count": 0}, "batch size"), ({"model": "x"}, "Unknown model"),
                          ({"model": "gan-mnist32", "seed": -1}, "seed"), ({"model": "gan-mnist32", "bogus": 1}, "bogus")]:
        bad = httpx.post(f"{base}/api/images", json=body, timeout=60)
        assert 400 <= bad.status_code < 500 and message in bad.json()["error"]["message"], bad.text
    assert httpx.get(f"{base}/api/images/{first['id']}.gif").status_code == 404
    assert httpx.delete(f"{base}/api/images/{first['id']}").status_code == 200
    assert httpx.get(f"{base}/api/images/{first['id']}").status_code == 404


def test_verify_through_the_http_api_and_the_page(app, tmp_path) -> None:
    import httpx

    ctx, client = app
    base = client.src.rstrip("/")
    made = httpx.post(f"{base}/api/images", json={"model": "gan-mnist32", "label": 4, "seed": 8, "ai_label": True},
                      timeout=60).json()["data"][0]
    data = httpx.get(f"{base}/api/images/{made['id']}.png").content
    report = httpx.post(f"{base}/api/verify", content=data, headers={"content-type": "image/png"}, timeout=60).json()
    assert report["has_manifest"] and report["status"] == "trusted" and report["signature_valid"]
    assert report["pixels_changed"] is False and report["generation"]["model"] == "gan-mnist32"
    assert report["generation"]["visible_label"] is True and report["signer"]["common_name"]
    tampered = bytearray(data)
    tampered[tampered.index(b"IDAT") + 9] ^= 1
    form = httpx.post(f"{base}/api/verify", files={"file": ("x.png", bytes(tampered), "image/png")}, timeout=60).json()
    assert form["status"] == "invalid" and form["pixels_changed"] is True
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    none = httpx.post(f"{base}/api/verify", content=plain.read_bytes(), timeout=60)
    assert none.status_code == 200 and none.json()["has_manifest"] is False and none.json()["status"] == "none"
    bad = httpx.post(f"{base}/api/verify", content=b"not an image", timeout=60)
    assert bad.status_code == 400 and "not a PNG" in bad.json()["error"]["message"]
    assert httpx.get(f"{base}/api/settings/images").json() == {"ai_label": False}
    assert httpx.put(f"{base}/api/settings/images", json={"ai_label": True}).json() == {"ai_label": True}
    assert httpx.put(f"{base}/api/settings/images", json={"ai_label": "yes"}).status_code == 400
    markdown, full = client.predict(handle_file(str(plain)), api_name="/verify_image")
    assert "No content credentials" in markdown and full["status"] == "none"
    saved = ctx.store.data_dir / "images" / f"{made['id']}.png"
    markdown, full = client.predict(handle_file(str(saved)), api_name="/verify_image")
    assert "Signed with this studio" in markdown and "| Pixels changed after signing | no |" in markdown
