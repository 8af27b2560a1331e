"""The diffusers plugin's time per denoising step on this machine, on the tiny random-weight SD
pipeline the tests build (no weights are downloaded), printed as one table.

    .venv/bin/python benchmarks/bench_diffusers.py [--steps 10] [--repeats 3]

Side by side in one run: milliseconds per step for text-to-image at 32 and 64 px, one image and a
batch of 4, for each sampler; image-to-image and inpainting at 64 px; and the whole service call
(PNG with both metadata chunks, files, rows) next to the plugin call. The tiny pipeline measures the
studio's overhead around diffusers (scheduler, callback, preview, conversion), not a real model's
speed: for that, `benchmarks/gpu_check.py` on a GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.timing import median_seconds  # noqa: E402
from generators.base import PaintRequest, StepControl  # noqa: E402
from generators.image.diffusers_plugin import DiffusersParams, DiffusersPlugin  # noqa: E402
from tests.image.tiny_diffusers import save_tiny_pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_tiny_pipeline(Path(tmp) / "tiny-sd")
        gen = DiffusersPlugin("tiny-sd", {"source": str(folder)})
        start = time.perf_counter()
        gen.load()
        print(f"tiny pipeline: {gen.memory_bytes() / 1e6:.2f} MB of weights, loaded in {time.perf_counter() - start:.1f} s")
        print(f"{'case':44} {'ms/step':>9} {'ms total':>9}")
        rows = []
        for size in (32, 64):
            for count in (1, 4):
                for sampler in gen.schedulers():
                    p = DiffusersParams(prompt="a red cat", width=size, height=size, steps=args.steps, scheduler=sampler)
                    total = median_seconds(lambda p=p, count=count: gen.paint(PaintRequest(p, 1, count)), args.repeats)
                    rows.append((f"text-to-image {size}px x{count} {sampler}", total))
        init = np.full((64, 64, 3), 127, np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        mask[16:48, 16:48] = 255
        p = DiffusersParams(prompt="a red cat", width=64, height=64, steps=args.steps, strength=1.0)
        rows.append(("image-to-image 64px x1 DPM++ 2M (strength 1)",
                     median_seconds(lambda: gen.paint(PaintRequest(p, 1, init_image=init)), args.repeats)))
        rows.append(("inpaint 64px x1 DPM++ 2M",
                     median_seconds(lambda: gen.paint(PaintRequest(p, 1, init_image=init, mask=mask)), args.repeats)))
        seen = []
        rows.append(("text-to-image 64px x1, preview every step",
                     median_seconds(lambda: gen.paint(PaintRequest(p, 1), StepControl(seen.append, preview_every=1)),
                                    args.repeats)))
        for name, total in rows:
            print(f"{name:44} {1000 * total / args.steps:9.1f} {1000 * total:9.1f}")
        print_service(gen, folder, args)


def print_service(gen: DiffusersPlugin, folder: Path, args: argparse.Namespace) -> None:
    from generators.registry import ModelSpec, Registry
    from storage import Store
    from webui.services import images as svc
    from webui.services.context import AppContext
    from webui.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), models=[])
        store = Store(settings.database_url, settings.data_dir)
        registry = Registry({"diffusers": DiffusersPlugin})
        registry.add(ModelSpec("tiny-sd", "diffusers", {"source": str(folder)}))
        registry._slots["tiny-sd"].generator = gen
        ctx = AppContext(settings=settings, registry=registry, store=store)
        values = {"prompt": "a red cat", "width": 64, "height": 64, "steps": args.steps}
        plugin = median_seconds(lambda: gen.paint(PaintRequest(DiffusersParams(**values), 1, 4)), args.repeats)
        service = median_seconds(lambda: svc.paint(ctx, "local", "tiny-sd", values, 1, 4), args.repeats)
        print(f"{'plugin call, 64px x4':44} {'':9} {1000 * plugin:9.1f}")
        print(f"{'service call (4 PNGs, JSON + A1111, rows)':44} {'':9} {1000 * service:9.1f}")
        store.close()


if __name__ == "__main__":
    main()
