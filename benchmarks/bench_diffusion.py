"""Digit diffusion speed next to the GAN, in one run on this machine, printed as a table.

    .venv/bin/python benchmarks/bench_diffusion.py [--repeats 3] [--threads N] [--scheduler "DPM++ 2M"]

64 digits (one batch, classes 0-9 in turn) through the plugins (what the Image tab calls): the GAN once,
the diffusion model at 10 / 25 / 50 steps with classifier-free guidance 2 (every step runs class and
null class together: a UNet batch of 128) and at 25 steps without guidance (guidance 1, batch 64).
Aim: 64 digits at 25 steps with guidance in <= 2 s. All tensor work runs on the compute lane.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.timing import median_seconds  # noqa: E402
from generators.base import ImageEnd, validate_model  # noqa: E402
from generators.image.diffusion_plugin import DiffusionParams, DigitDiffusionPlugin  # noqa: E402
from generators.image.plugin import GANParams, GANPlugin  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--scheduler", default="DPM++ 2M")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ends = [ImageEnd(i % 10, 1000 + i) for i in range(64)]
    gan = GANPlugin("gan-mnist32", {"weights": "builtin:gan-mnist32"})
    diffusion = DigitDiffusionPlugin("diffusion-mnist32", {"weights": "builtin:diffusion-mnist32"})
    gan.load()
    diffusion.load()
    rows = [("gan-mnist32", "-", "-", median_seconds(lambda: gan.sample(ends, GANParams()), max(5, args.repeats)))]
    for steps, guidance in ((10, 2.0), (25, 2.0), (50, 2.0), (25, 1.0)):
        params = validate_model(DiffusionParams, {"steps": steps, "guidance": guidance, "scheduler": args.scheduler})
        seconds = median_seconds(lambda p=params: diffusion.sample(ends, p), args.repeats)
        rows.append(("diffusion-mnist32", f"{steps} {args.scheduler}", f"{guidance:g}", seconds))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); 64 digits per call, median of "
          f"{args.repeats} runs\n")
    print("| generator | steps | guidance | 64 digits (s) | digits/s | ms per step |")
    print("|---|---|---:|---:|---:|---:|")
    for name, steps, guidance, seconds in rows:
        per_step = f"{1000 * seconds / int(steps.split()[0]):.0f}" if steps != "-" else "-"
        print(f"| {name} | {steps} | {guidance} | {seconds:.3f} | {64 / seconds:,.0f} | {per_step} |")
    aim = next(s for n, st, g, s in rows if st.startswith("25 ") and g == "2")
    print(f"\n64 digits at 25 steps with guidance: {aim:.2f} s (aim <= 2 s): {'met' if aim <= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
