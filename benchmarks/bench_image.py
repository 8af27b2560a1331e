"""Image generation speed on this machine, printed as a table (optionally with the quality table).

    .venv/bin/python benchmarks/bench_image.py [--repeats 20] [--threads N] [--eval]

Side by side in one run, for the shipped GAN and VAE through their plugins (what the Image tab
calls): images/s and milliseconds for a batch of 1 and of 64 (target: 64 digits in <= 100 ms on
CPU), the model call alone vs the whole service call (PNG encoding with parameters, files and
database rows included) without and with C2PA signing, interleaved (target: signing keeps the
64-digit service call within 2x of the unsigned one). --eval also prints the model-card quality
table (~2 min).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.timing import median_seconds  # noqa: E402
from generators.base import ImageEnd  # noqa: E402
from generators.image.plugin import GANPlugin, VAEPlugin  # noqa: E402
from generators.registry import ModelSpec, Registry  # noqa: E402
from storage import Store  # noqa: E402
from webui.services import images as svc  # noqa: E402
from webui.services.context import AppContext  # noqa: E402
from webui.settings import Settings, default_models  # noqa: E402


def interleaved_ms(plain, signed, repeats: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Medians of two calls timed turn about, so load on the machine falls on both alike."""
    plain(), signed()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((plain, times[0]), (signed, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[0]), 1000 * statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--eval", action="store_true", help="also print the quality table of the model card")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    entries = [m for m in default_models() if m.plugin in ("gan", "vae")]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), models=entries)
        registry = Registry({"gan": GANPlugin, "vae": VAEPlugin})
        for e in entries:
            registry.add(ModelSpec(e.name, e.plugin, e.options))
        store = Store(settings.database_url, settings.data_dir)
        ctx = AppContext(settings=settings, registry=registry, store=store)
        unsigned = AppContext(settings=settings.model_copy(update={"sign_images": False}), registry=registry, store=store)
        ctx.signer.check()  # the identity is made before timing
        rows = []
        for entry in entries:
            gen = registry.load(entry.name)
            params = gen.info.params()
            for batch in (1, 64):
                ends = [ImageEnd(i % 10, 1000 + i) for i in range(batch)]
                model_ms = 1000 * median_seconds(lambda: gen.sample(ends, params), args.repeats)  # noqa: B023
                plain_ms, signed_ms = interleaved_ms(
                    lambda: svc.generate(unsigned, "bench", entry.name, None, 1000, batch),  # noqa: B023
                    lambda: svc.generate(ctx, "bench", entry.name, None, 1000, batch),  # noqa: B023
                    max(3, args.repeats // 4))
                rows.append((entry.name, batch, model_ms, batch / model_ms * 1000, plain_ms, batch / plain_ms * 1000,
                             signed_ms, batch / signed_ms * 1000))
        ctx.store.close()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); median of {args.repeats} runs (service: "
          f"{max(3, args.repeats // 4)})\n")
    print("| generator | batch | model call (ms) | images/s | service call, PNGs + rows saved (ms) | images/s "
          "| the same, C2PA-signed (ms) | images/s | signed / unsigned |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, batch, m_ms, m_rate, s_ms, s_rate, c_ms, c_rate in rows:
        print(f"| {name} | {batch} | {m_ms:.1f} | {m_rate:,.0f} | {s_ms:.1f} | {s_rate:,.0f} | {c_ms:.1f} | {c_rate:,.0f} "
              f"| {c_ms / s_ms:.2f}x |")
    for name, batch, _, _, s_ms, _, c_ms, _ in rows:
        if batch == 64:
            print(f"\n{name}: signing adds {(c_ms - s_ms) / batch:.2f} ms per image; 64 signed digits take "
                  f"{c_ms / s_ms:.2f}x the unsigned service call (target <= 2x): {'met' if c_ms <= 2 * s_ms else 'NOT met'}",
                  end="")
    for name, batch, m_ms, *_ in rows:
        if batch == 64:
            print(f"\n{name}: 64 digits in {m_ms:.1f} ms (target <= 100 ms): {'met' if m_ms <= 100 else 'NOT met'}", end="")
    print()
    if args.eval:
        from generators.image.evaluate import evaluate, format_table

        weights = ROOT / "generators" / "image" / "weights"
        print()
        print(format_table(evaluate(weights / "gan-mnist32", weights / "vae-mnist32", weights / "classifier-mnist32"),
                           markdown=True))


if __name__ == "__main__":
    main()
