"""The Train tab through gradio_client: upload an image archive, train a GAN one epoch, use the result."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.conftest import free_port
from webui.server import launch
from webui.services import images, training


def digits_zip(path: Path, per_class: int = 32) -> Path:
    """A small archive of real digits: folders 0/ and 1/ of PNGs from the shipped MNIST sample."""
    from generators.image.data import load_mnist5k

    data = load_mnist5k(32, "train")
    with zipfile.ZipFile(path, "w") as z:
        for label in (0, 1):
            picked = (data.labels == label).nonzero().squeeze(1)[:per_class]
            for i, index in enumerate(picked.tolist()):
                out = io.BytesIO()
                Image.fromarray((data.images[index, 0].numpy() * 255).astype("uint8")).save(out, "PNG")
                z.writestr(f"digits/{label}/{i}.png", out.getvalue())
    return path


@pytest.fixture
def app(make_ctx: Any) -> Any:
    ctx = make_ctx(images=True, port=free_port())
    ctx.jobs.poll_s = 0.2
    training.start_jobs(ctx)
    demo = launch(ctx, block=False, quiet=True)
    yield ctx, Client(demo.local_url, verbose=False)
    demo.close()
    ctx.jobs.close()


def wait_done(client: Client, job_id: str, timeout_s: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.predict(job_id, api_name="/train_job")
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(1)
    raise AssertionError(f"the job did not finish: {job}")


def test_train_a_gan_one_epoch_on_an_uploaded_archive_and_use_it(app: Any, tmp_path: Path) -> None:
    ctx, client = app
    dataset, _ = client.predict(handle_file(str(digits_zip(tmp_path / "digits.zip"))), "two digits",
                                api_name="/train_add_dataset")
    dataset_id = dataset["value"]
    assert any("two digits (images, 64 in 2 classes)" in label for label, _ in dataset["choices"])
    with pytest.raises(Exception, match="size.*32 or 64"):
        client.predict("gan", dataset_id, "gan1", {"size": 48}, api_name="/train")
    job_id = client.predict("gan", dataset_id, "gan1", {"epochs": 1, "batch_size": 16}, api_name="/train")
    job = wait_done(client, job_id)
    assert job["state"] == "done", job
    assert job["model"] == "local/gan1" and [e["epoch"] for e in job["epochs"]] == [1]
    assert "d_loss" in job["epochs"][0] or len(job["epochs"][0]) > 3
    # the epoch's sample grid the job wrote is signed by this studio (what the Verify tab reports)
    grid = Path(ctx.jobs.get("local", job_id).artifacts["samples"][-1])
    found = images.verify_image(ctx, grid.read_bytes())
    assert found.signed_by_this_studio and found.generation["model"] == "local/gan1", found.summary
    assert found.generation["kind"] == "training-samples" and found.generation.get("params_hash")
    # the model is in this person's pickers at once, and makes digits
    pickers = client.predict(api_name="/my_models")
    assert any("local/gan1" in [c[1] if isinstance(c, list | tuple) else c for c in p["choices"]]
               for p in pickers if isinstance(p, dict) and "choices" in p)
    gallery, grid, notice = client.predict("local/gan1", "1", "5", 4, 0.0, 1.0, 25, 2.0, "DPM++ 2M",
                                              api_name="/generate_images")
    assert len(gallery) == 4
    # another person sees neither the job nor the model
    assert "local/gan1" not in ctx.registry.names("image", owner="bob")
