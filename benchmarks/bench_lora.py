"""LoRA fine-tuning of the default SmolLM2-135M on this machine, printed as tables.

    .venv/bin/python benchmarks/bench_lora.py [--steps 4] [--threads N]            # steps/s at sequence length 256
    .venv/bin/python benchmarks/bench_lora.py --finetune README.md [--epochs 2]      # held-out perplexity before/after
    .venv/bin/python benchmarks/bench_lora.py --chat-latency                         # what a running job costs chat

1. Training speed: LoRA (rank 16, alpha 32, all linear layers) optimizer steps on batches of 1 and 4
   sequences of 256 tokens, float32 on the CPU (bfloat16 on a GPU, when one is visible: a second line).
2. `--finetune FILE`: the Train tab's job on a text (its default parameters unless told), in this process:
   held-out perplexity on the last 10 % of the text before and after, and the wall time.
3. `--chat-latency`: the default chat model's streaming speed (tokens/s and time to first token, through
   the plugin on the compute lane, as the Chat tab runs it) alone, then while a LoRA job trains in its own
   process with 1 thread (how the job runner runs it): with the lane keeping all its threads, and with the
   lane leaving the job's CPU to it (`ComputeLane.share_cpus`, what the app does while a job runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from generators.training.lora import LoraOptions, batches, load_base, token_loss, with_lora  # noqa: E402
from generators.training.worker import base_folder  # noqa: E402
from webui.settings import default_models  # noqa: E402

CACHE = Path(os.environ.get("AIGC_TEST_MODEL_CACHE", ROOT / ".cache" / "models"))


def smol_dir() -> str:
    return base_folder(default_models()[0].options["source"], str(CACHE), lambda e: None)


def steps_per_s(device: str, batch: int, steps: int, seq: int = 256) -> tuple[float, float]:
    from generators.training.lora import Example

    options = LoraOptions(device=device)
    model, tok = load_base(smol_dir(), options, device)
    model = with_lora(model, options)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    examples = [Example(ids, ids) for ids in torch.randint(100, 40_000, (batch, seq), generator=g).tolist()]
    ((ids, labels, mask),) = batches(examples, batch, 0)
    ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss, n = token_loss(model, ids, labels, mask)
        (loss / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    return 1 / step_s, batch * seq / step_s


def speed_table(steps: int) -> None:
    print(f"LoRA training speed, SmolLM2-135M, rank 16, all linear layers, sequence length 256, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{'device':<8} {'batch':>5} {'steps/s':>8} {'tokens/s':>9}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for batch in (1, 4):
            sps, tps = steps_per_s(device, batch, steps)
            print(f"{device:<8} {batch:>5} {sps:>8.3f} {tps:>9.0f}", flush=True)


def finetune(path: Path, epochs: int, max_steps: int | None) -> None:
    from generators.training.lora import fine_tune

    options = LoraOptions(epochs=epochs, max_steps=max_steps)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        figures = fine_tune(smol_dir(), path, "text", out, options,
                            lambda e: print(f"  {e}", flush=True) if e["type"] != "step" else None)
    wall = time.perf_counter() - started
    print(f"LoRA fine-tune of SmolLM2-135M on {path.name} ({path.stat().st_size:,} bytes), defaults "
          f"(rank {options.rank}, alpha {options.alpha}, lr {options.lr}, max length {options.max_length}, batch "
          f"{options.batch_size}), {epochs} epoch(s), {torch.get_num_threads()} thread(s)")
    print(f"{'examples train/held-out':<26} {'steps':>5} {'ppl before':>10} {'ppl after':>9} {'change':>7} {'wall s':>7}")
    print(f"{figures['train_examples']:>12}/{figures['heldout_examples']:<13} {figures['steps']:>5} "
          f"{figures['ppl_before']:>10.2f} {figures['ppl_after']:>9.2f} {figures['ppl_change'] * 100:>6.1f}% {wall:>7.0f}")


def chat_speed(requests: int) -> tuple[float, float]:
    from generators.base import SamplingParams, TextRequest
    from generators.text.transformers_lm import TransformersLM

    gen = TransformersLM("smol", {**default_models()[0].options, "quantization": "auto"}, cache_dir=str(CACHE))
    gen.load()
    rates, firsts = [], []
    try:
        for i in range(requests + 1):
            request = TextRequest(prompt="Write a short paragraph about the sea.",
                                  params=SamplingParams(max_new_tokens=48, seed=i, temperature=0.8))
            start = time.perf_counter()
            first, count = None, 0
            for chunk in gen.stream(request):
                if chunk.text:
                    first = first or time.perf_counter() - start
                    count += 1
            if i:
                rates.append(count / (time.perf_counter() - start))
                firsts.append(first or 0.0)
    finally:
        gen.unload()
    return statistics.median(rates), statistics.median(firsts)


def chat_latency(requests: int) -> None:
    from generators.compute import lane

    alone = chat_speed(requests)
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as out:
        data = Path(out) / "data.txt"
        data.write_text(text, encoding="utf-8")
        spec = {"kind": "lora", "data": str(data), "data_kind": "text", "out": out, "threads": 1,
                "base_source": default_models()[0].options["source"], "cache_dir": str(CACHE),
                "params": {"epochs": 50, "checkpoint_every": 10_000}}
        (Path(out) / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "AIGC_JOB_PARENT": str(os.getpid())}
        worker = subprocess.Popen([sys.executable, "-m", "generators.training.worker", str(Path(out) / "spec.json")],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            events = Path(out) / "events.jsonl"
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and '"type": "step"' not in (events.read_text() if events.exists() else ""):
                time.sleep(1)  # measure while it trains, not while it loads
            during = chat_speed(requests)
            lane().share_cpus(1).result()  # what the app's job runner does while a 1-thread job runs
            try:
                shared = chat_speed(requests)
            finally:
                lane().share_cpus(0).result()
        finally:
            worker.kill()
            worker.wait()
    print(f"Chat (SmolLM2-135M, int4, 48 new tokens, median of {requests}) alone and while a LoRA job trains "
          f"(own process, 1 thread); {os.cpu_count()} CPU(s)")
    print(f"{'':<18} {'tokens/s':>8} {'first token s':>13}")
    print(f"{'alone':<18} {alone[0]:>8.1f} {alone[1]:>13.2f}")
    print(f"{'during training':<18} {during[0]:>8.1f} {during[1]:>13.2f}")
    print(f"{'  lane shares CPUs':<18} {shared[0]:>8.1f} {shared[1]:>13.2f}")
    print(f"slowdown: {alone[0] / during[0]:.2f}x tokens/s, {during[1] / max(alone[1], 1e-9):.2f}x first token; with the "
          f"chat's threads lowered to the CPUs the job leaves: {alone[0] / shared[0]:.2f}x, "
          f"{shared[1] / max(alone[1], 1e-9):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per row (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--finetune", type=Path, default=None, help="a UTF-8 text: fine-tune on it, show perplexity")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--chat-latency", action="store_true")
    parser.add_argument("--requests", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.finetune:
        finetune(args.finetune, args.epochs, args.max_steps)
    elif args.chat_latency:
        chat_latency(args.requests)
    else:
        speed_table(args.steps)


if __name__ == "__main__":
    main()
