"""The image service: saved files and rows, PNG parameters, re-runs byte for byte, gallery, ownership, bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from generators.base import InvalidOptionsError
from storage.models import Generation, ImageRecord
from storage.repository import NotFoundError
from webui.services import images as svc
from webui.services import png, provenance


def test_generate_saves_each_png_with_its_parameters(image_ctx) -> None:
    ctx = image_ctx()
    result = svc.generate(ctx, "ann", "gan-mnist32", "7", "40", 4, {"truncation": 1.5})
    assert [i.seed for i in result.images] == [40, 41, 42, 43] and {i.label for i in result.images} == {7}
    for item in result.images:
        data = item.path.read_bytes()
        assert item.path.parent == ctx.store.data_dir / "images" and item.path.name == f"{item.id}.png"
        assert provenance.image_hash(data) == item.content_hash == png.sha256(provenance.strip_manifest(data))
        meta = png.read_meta(data)
        assert meta["generator"] == "gan-mnist32" and meta["class"] == 7 and meta["seed"] == item.seed
        assert meta["params"] == {"truncation": 1.5} and len(meta["weights_hash"]) == 16
        assert "seed" in Image.open(io.BytesIO(data)).text["parameters"]
    with ctx.store.begin() as s:
        rows = list(s.scalars(select(ImageRecord)))
        assert len(rows) == 4 and {r.owner for r in rows} == {"ann"} and len({r.batch_id for r in rows}) == 1
        gen = s.scalars(select(Generation)).one()
        assert gen.outcome == "ok" and gen.seed == 40 and gen.params["count"] == 4
    assert result.grid.size[0] > 4 * 32


def test_same_generator_params_and_seed_give_the_same_image(image_ctx) -> None:
    ctx = image_ctx()
    batch = svc.generate(ctx, "ann", "vae-mnist32", 3, 1000, 5, {"temperature": 0.8})
    alone = svc.generate(ctx, "ann", "vae-mnist32", 3, 1002, 1, {"temperature": 0.8})
    assert alone.images[0].content_hash == batch.images[2].content_hash
    assert svc.compare(batch.images[2].path, alone.images[0]).same_image
    from_png = svc.regenerate(ctx, "ann", svc.png_info(batch.images[4].path))
    assert from_png.images[0].content_hash == batch.images[4].content_hash
    other = svc.generate(ctx, "ann", "vae-mnist32", 3, 1002, 1, {"temperature": 0.5})
    assert other.images[0].content_hash != alone.images[0].content_hash


def test_random_class_is_drawn_from_the_seed(image_ctx) -> None:
    ctx = image_ctx()
    a = svc.generate(ctx, "ann", "gan-mnist32", "random", 5, 20)
    b = svc.generate(ctx, "ann", "gan-mnist32", None, 5, 20)
    assert [i.label for i in a.images] == [i.label for i in b.images] and len({i.label for i in a.images}) > 3
    c = svc.generate(ctx, "ann", "gan-mnist32", "", "", 2)  # empty seed: random, reported
    assert c.images[0].seed is not None and str(c.images[0].seed) in c.notice


def test_interpolation_saves_a_strip_and_a_gif_and_can_be_made_again(image_ctx) -> None:
    ctx = image_ctx()
    result = svc.interpolate(ctx, "ann", "gan-mnist32", 1, 10, 7, 20, 6)
    item = result.images[0]
    assert item.kind == "interpolation" and item.gif_path and item.gif_path.is_file()
    with Image.open(item.gif_path) as gif:
        assert gif.n_frames == 6 + 4  # forth and back
    with Image.open(item.path) as strip:
        assert strip.size == (6 * 34 + 2, 36)
    again = svc.regenerate(ctx, "ann", svc.png_info(item.path))
    assert again.images[0].content_hash == item.content_hash


def test_reconstruction_reads_a_drawn_digit_and_renders_every_class(image_ctx) -> None:
    ctx = image_ctx()
    canvas = np.zeros((200, 200, 4), np.uint8)  # a sketch pad: transparent background, black strokes
    canvas[30:170, 90:110] = (0, 0, 0, 255)
    result = svc.reconstruct(ctx, "ann", "vae-mnist32", canvas)
    assert result.extra == {"label": 1, "guessed": True}
    with Image.open(result.images[0].path) as strip:
        assert strip.size == (12 * 34 + 2, 36)
    with pytest.raises(InvalidOptionsError, match="original upload"):
        svc.regenerate(ctx, "ann", svc.png_info(result.images[0].path))
    with pytest.raises(InvalidOptionsError, match="pick a VAE"):
        svc.reconstruct(ctx, "ann", "gan-mnist32", canvas)


def test_gallery_filters_pages_opens_reruns_and_deletes(image_ctx) -> None:
    ctx = image_ctx()
    svc.generate(ctx, "ann", "gan-mnist32", 2, 1, 5)
    svc.generate(ctx, "ann", "vae-mnist32", 4, 1, 3)
    svc.generate(ctx, "bob", "gan-mnist32", 2, 1, 2)
    page = svc.gallery(ctx, "ann", page_size=4)
    assert (page.total, page.pages, len(page.images)) == (8, 2, 4)
    assert [i.model for i in page.images[:3]] == ["vae-mnist32"] * 3  # newest first
    assert svc.gallery(ctx, "ann", model="gan-mnist32").total == 5
    assert svc.gallery(ctx, "ann", label="4").total == 3
    assert svc.gallery(ctx, "ann", page=2, page_size=4).images[-1].seed == 1
    assert svc.gallery_models(ctx, "ann") == ["gan-mnist32", "vae-mnist32"]
    first = page.images[0]
    rerun = svc.rerun(ctx, "ann", first.id)
    assert rerun.images[0].content_hash == first.content_hash and rerun.images[0].id != first.id
    svc.delete_image(ctx, "ann", first.id)
    assert not first.path.exists() and svc.gallery(ctx, "ann").total == 8


def test_one_owner_cannot_see_open_or_delete_anothers_images(image_ctx) -> None:
    ctx = image_ctx()
    mine = svc.generate(ctx, "ann", "gan-mnist32", 2, 1, 1).images[0]
    assert svc.gallery(ctx, "bob").total == 0
    for action in (svc.get_image, svc.delete_image, svc.rerun):
        with pytest.raises(NotFoundError):
            action(ctx, "bob", mine.id)
    assert mine.path.exists() and svc.get_image(ctx, "ann", mine.id).id == mine.id


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"count": 0}, "batch size must be from 1 to 64"), ({"count": 65}, "from 1 to 64"), ({"count": "x"}, "whole number"),
     ({"count": 2.5}, "whole number"), ({"seed": "abc"}, "seed must be a whole number"), ({"seed": 2**32}, "from 0 to"),
     ({"label": "eleven"}, "Unknown class"), ({"label": 10}, "classes 0–9"), ({"params": {"truncation": 9}}, "truncation"),
     ({"params": {"temperature": 1}}, "not a known setting"), ({"model": "nope"}, "Unknown model")],
)
def test_bad_input_is_a_clear_error_and_saves_nothing(image_ctx, kwargs, message) -> None:
    ctx = image_ctx()
    args = {"model": "gan-mnist32", "label": 1, "seed": 1, "count": 1, "params": None, **kwargs}
    with pytest.raises(Exception, match=message) as info:
        svc.generate(ctx, "ann", args["model"], args["label"], args["seed"], args["count"], args["params"])
    assert "Traceback" not in str(info.value)
    with ctx.store.begin() as s:
        assert s.scalar(select(func.count()).select_from(ImageRecord)) == 0
    assert not list((ctx.store.data_dir / "images").glob("*")) if (ctx.store.data_dir / "images").exists() else True


def test_limits_come_from_settings(image_ctx) -> None:
    ctx = image_ctx(max_image_batch=3, max_interpolation_frames=4)
    with pytest.raises(InvalidOptionsError, match="from 1 to 3"):
        svc.generate(ctx, "ann", "gan-mnist32", 1, 1, 4)
    with pytest.raises(InvalidOptionsError, match="from 2 to 4"):
        svc.interpolate(ctx, "ann", "gan-mnist32", 1, 1, 2, 2, 5)


def test_png_info_refuses_images_without_studio_parameters(tmp_path) -> None:
    plain = tmp_path / "plain.png"
    Image.new("L", (32, 32)).save(plain)
    with pytest.raises(InvalidOptionsError, match="no AIGC Studio parameters"):
        svc.png_info(plain)
