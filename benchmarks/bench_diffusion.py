"""Digit diffusion speed next to the GAN, in one run on this machine, the old and the new sampling path side by side.

    .venv/bin/python benchmarks/bench_diffusion.py [--repeats 3] [--threads N] [--scheduler "DPM++ 2M"]
                                                   [--steps 10 25 50] [--no-old] [--old-max-steps 25]
                                                   [--weights builtin:diffusion-mnist32 | RUN_FOLDER]

64 digits (one batch, classes 0-9 in turn) through the plugins (what the Image tab calls): the GAN, and
the digit diffusion model at 10 / 25 / 50 steps with classifier-free guidance (the plugin's default
scale: every step runs class and null class together, a UNet batch of 128) and at 25 steps without it
(guidance 1, batch 64). Each diffusion row times the old path (the plain eager UNet,
``fast_path: false``) and the new one (the plugin's default) turn about, medians, and says whether
their pixels are the same. Then the floor: the UNet's multiply-adds per step and the time its
convolutions alone take at their real shapes on this CPU, which no sampler around them can beat.
Aim: 64 digits at 25 steps with guidance in <= 2 s. ``--weights`` times another exported model (a training
run's folder) the same way, to compare a candidate with the shipped one. All tensor work runs on the compute lane.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.timing import interleaved_medians, median_seconds  # noqa: E402
from generators.base import ImageEnd, validate_model  # noqa: E402
from generators.compute import lane  # noqa: E402
from generators.image.diffusion_plugin import DEFAULT_GUIDANCE, DiffusionParams, DigitDiffusionPlugin  # noqa: E402
from generators.image.plugin import GANParams, GANPlugin  # noqa: E402

WEIGHTS = "builtin:diffusion-mnist32"


def floor(plugin: DigitDiffusionPlugin, batch: int, repeats: int) -> tuple[float, float, int, int]:
    """(GFLOP of one UNet forward at ``batch``, seconds its convolutions alone take, how many convs, threads),
    on the lane with the threads the plugin samples with."""
    from torch.utils.flop_counter import FlopCounterMode

    model = plugin.model
    x = torch.randn(batch, 1, 32, 32)
    t = torch.full((batch,), 500)
    y = torch.arange(batch) % 11
    seen: list[tuple[torch.nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append((mod, args[0].clone())))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode(), plugin._sampling_threads() as threads:
        with FlopCounterMode(display=False) as counter:
            model(x, t, y)
        for hook in hooks:
            hook.remove()

        def convs_alone() -> None:
            for conv, inp in seen:
                conv(inp)

        return counter.get_total_flops() / 1e9, median_seconds(convs_alone, repeats), len(seen), threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads on the lane (default: torch's)")
    parser.add_argument("--scheduler", default="DPM++ 2M")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--weights", default=WEIGHTS,
                        help="the diffusion model: builtin:NAME or an exported folder (config.json + model.safetensors)")
    parser.add_argument("--no-old", action="store_true", help="time only the new path (the old one is slow)")
    parser.add_argument("--old-max-steps", type=int, default=50, help="time the old path only up to this many steps")
    args = parser.parse_args()
    if args.threads:
        lane().call(torch.set_num_threads, args.threads)
    threads = lane().call(torch.get_num_threads)
    ends = [ImageEnd(i % 10, 1000 + i) for i in range(64)]
    gan = GANPlugin("gan-mnist32", {"weights": "builtin:gan-mnist32"})
    paths = {"new": DigitDiffusionPlugin("diffusion-mnist32", {"weights": args.weights})}
    if not args.no_old:
        paths["old"] = DigitDiffusionPlugin("diffusion-mnist32-old", {"weights": args.weights, "fast_path": False})
    for plugin in (gan, *paths.values()):
        plugin.load()
    gan_s = median_seconds(lambda: gan.sample(ends, GANParams()), max(5, args.repeats))
    configs = [(steps, args.guidance) for steps in args.steps] + [(25, 1.0)]
    rows = []
    for steps, guidance in configs:
        params = validate_model(DiffusionParams, {"steps": steps, "guidance": guidance, "scheduler": args.scheduler})
        warm = validate_model(DiffusionParams, {"steps": 1, "guidance": guidance, "scheduler": args.scheduler})
        timed = {name: plugin for name, plugin in paths.items() if name == "new" or steps <= args.old_max_steps}
        fns = {name: (lambda p=plugin, q=params: p.sample(ends, q)) for name, plugin in timed.items()}
        warmups = {name: (lambda p=plugin, q=warm: p.sample(ends, q)) for name, plugin in timed.items()}
        seconds = interleaved_medians(fns, args.repeats, warmups)
        same = "-"
        if "old" in timed:
            a, b = (paths[n].sample(ends, params).pixels.astype(np.int16) for n in ("old", "new"))
            diff = np.abs(a - b)
            same = "identical" if not diff.any() else f"{int((diff > 0).sum())} of {diff.size:,} differ, by <= {diff.max()}/255"
        rows.append((steps, guidance, seconds.get("old"), seconds["new"], same))

    model = paths["new"].model
    print(f"{args.weights}: {sum(p.numel() for p in model.parameters()):,} parameters\n")
    print(f"torch {torch.__version__}, {threads} thread(s) on the compute lane; 64 digits per call, "
          f"{args.scheduler}, median of {args.repeats} runs taken turn about\n")
    print(f"gan-mnist32: 64 digits in {gan_s:.3f} s\n")
    print("| steps | guidance | UNet batch | old path (s) | new path (s) | speed-up | new ms/step | new digits/s | "
          "old vs new pixels |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for steps, guidance, old, new, same in rows:
        guided = guidance not in (0.0, 1.0)
        old_s = f"{old:.2f}" if old is not None else "-"
        speed = f"{old / new:.2f}x" if old is not None else "-"
        print(f"| {steps} | {guidance:g} | {128 if guided else 64} | {old_s} | {new:.2f} | {speed} | "
              f"{1000 * new / steps:.0f} | {64 / new:.0f} | {same} |")
    aim = next((new for steps, g, _old, new, _same in rows if steps == 25 and g not in (0.0, 1.0)), None)
    if aim is not None:
        print(f"\n64 digits at 25 steps with guidance: {aim:.2f} s (aim <= 2 s): {'met' if aim <= 2 else 'NOT met'}")

    step_s = min(new / steps for steps, g, _old, new, _same in rows if g not in (0.0, 1.0))
    gflop, conv_s, n_convs, threads = lane().call(floor, paths["new"], 128, max(5, args.repeats))
    print(f"\nfloor: one UNet forward at batch 128 = {gflop:.1f} GFLOP (convolutions and matmuls); its {n_convs} "
          f"convolutions alone take {1000 * conv_s:.0f} ms on {threads} thread(s) ({gflop / conv_s:.0f} GFLOP/s), "
          f"so 25 guided steps cannot take less than {25 * conv_s:.2f} s with this model on this CPU as loaded now "
          f"(new path: {1000 * step_s:.0f} ms per guided step, {100 * conv_s / step_s:.0f}% of it in convolutions)")


if __name__ == "__main__":
    main()
