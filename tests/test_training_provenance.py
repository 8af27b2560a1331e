"""The PNGs a training job writes for a person (per-epoch sample grids, loss curves) carry the studio's signed
C2PA manifest: the c2pa reader validates them against this studio's key, as the Verify tab reports it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from generators.image.plots import draw_curves, save_grid
from storage.models import Job
from webui.services import datasets as ds
from webui.services import images, provenance, training
from webui.tabs.verify import TRAINING_KINDS, report_markdown


def a_job(folder: Path) -> Job:
    return Job(id="f" * 32, owner="ann", kind="gan", name="digits-gan", dataset="two digits", params={"epochs": 2},
               state="running", metrics=[], artifacts={"folder": str(folder)}, log="")


def test_a_jobs_sample_grid_and_curves_are_signed_once_and_validate(make_ctx: Any, tmp_path: Path) -> None:
    ctx = make_ctx()
    grid, curves, partial = tmp_path / "samples_epoch001.png", tmp_path / "curves.png", tmp_path / "samples_epoch002.png"
    save_grid(torch.rand(8, 1, 8, 8), 4, grid)
    draw_curves([{"epoch": 1, "d_loss": 1.0}, {"epoch": 2, "d_loss": 0.5}], ["d_loss"], curves)
    partial.write_bytes(grid.read_bytes()[:-20])  # a grid the worker is still writing
    unsigned = grid.read_bytes()
    job = a_job(tmp_path)

    assert training.sign_job_images(ctx, job, [grid, curves, partial]) == 2
    assert training.sign_job_images(ctx, job, [grid, curves, partial]) == 0  # signed once; the partial file waits
    assert partial.read_bytes() == unsigned[:-20]
    for path, kind, source in ((grid, "training-samples", provenance.TRAINED),
                               (curves, "training-curves", provenance.ALGORITHMIC)):
        found = images.verify_image(ctx, path.read_bytes())  # what the Verify tab and POST /api/verify report
        assert found.status == "trusted" and found.signed_by_this_studio, (path.name, found.summary, found.problems)
        assert found.generation["model"] == "ann/digits-gan" and found.generation["kind"] == kind
        assert found.digital_source_type == source
        assert "Signed with this studio's key" in found.summary
        shown = report_markdown(found)  # the Verify tab's report
        assert shown.startswith("### Signed by this studio") and "| What it shows | " + TRAINING_KINDS[kind] in shown
    assert provenance.strip_manifest(grid.read_bytes()) == unsigned  # the pixels are the ones the trainer drew
    # one changed pixel byte: validation fails
    data = bytearray(grid.read_bytes())
    idat = data.index(b"IDAT") + 8
    data[idat] ^= 0xFF
    assert images.verify_image(ctx, bytes(data)).status == "invalid"


def test_signing_off_leaves_the_files_alone(make_ctx: Any, tmp_path: Path) -> None:
    ctx = make_ctx()
    ctx.signer.enabled = False
    grid = tmp_path / "samples_epoch001.png"
    save_grid(torch.rand(4, 1, 8, 8), 2, grid)
    before = grid.read_bytes()
    assert training.sign_job_images(ctx, a_job(tmp_path), [grid]) == 0 and grid.read_bytes() == before


def test_the_curves_a_real_job_writes_are_signed_by_the_runner(jobs_ctx: Any) -> None:
    ctx = jobs_ctx
    text = ds.add_dataset(ctx, "ann", "cats.txt", "".join(f"Line {i}: the cat sat on the mat.\n" for i in range(80)).encode())
    tiny = {"hidden": 16, "layers": 1, "seq_len": 16, "batch_size": 4, "max_steps": 2, "lr": 0.01, "epochs": 1}
    job = ctx.jobs.wait("ann", training.start_training(ctx, "ann", "lstm", text.id, "cats", tiny).id, 180)
    assert job.state == "done", (job.error, job.log)
    curves = Path(job.artifacts["folder"]) / "curves.png"
    found = images.verify_image(ctx, curves.read_bytes())
    assert found.signed_by_this_studio and found.generation["model"] == "ann/cats", found.summary
    assert found.generation["kind"] == "training-curves"
