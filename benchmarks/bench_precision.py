"""Single-stream speed and held-out perplexity of the default model at each precision, side by side.

    .venv/bin/python benchmarks/bench_precision.py [--tokens 64] [--repeats 3] [--no-bnb] [--no-llama-cpp]
        [--rows int4 ...]

Rows: plain `model.generate` in float32 (the reference), then the plugin (one request, its
default continuous batcher) loaded as float32, bfloat16, int4 (4-bit groups, 8-bit head; `dtype: auto`,
then float32 and bfloat16 activations between the kernels, then without the native build: PyTorch's
int4 kernel and the Python loop, what a machine without a compiler runs), PyTorch
dynamic int8, and bitsandbytes 8-bit / 4-bit NF4; then llama.cpp (llama-cpp-python, the optional
extra `pip install -r requirements-llamacpp.txt`) on the same GGUF file, with as many threads, in
a child process (two OpenMP runtimes in one process spin against each other). All torch work runs
on the compute lane, as in the studio.
Speed is greedy tokens per second of wall time from the call to the last token (prefill
included), the median of `--repeats` rounds that run every row once in turn (this VM's speed drifts
by ±30 % over minutes, so rows timed one after another would not compare). Perplexity is the plugin's `log_likelihood`
(windows of up to 1,024 tokens, half overlapping) over the project's held-out text plus the
first 8,000 characters of Debian's GPL-3 text when the machine has it; bits per character are
printed too, so rows with another tokenizer compare on the same scale. llama.cpp scores the same
token windows (its own tokenizer, the same vocabulary) and decodes greedily with its repeat
penalty off.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from generators.base import ChatMessage, SamplingParams, TextRequest  # noqa: E402
from generators.compute import lane  # noqa: E402
from generators.text.transformers_lm import TransformersLM, scoring_windows  # noqa: E402
from webui.settings import default_models  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
GPL = Path("/usr/share/common-licenses/GPL-3")


def held_out_text() -> tuple[str, str]:
    text = (ROOT / "webui" / "evaluation" / "heldout.txt").read_text(encoding="utf-8")
    name = "webui/evaluation/heldout.txt"
    if GPL.is_file():
        text += "\n\n" + GPL.read_text(encoding="utf-8")[:8000]
        name += f" + first 8,000 characters of {GPL}"
    return text, name


def request(tokens: int) -> TextRequest:
    return TextRequest(messages=(ChatMessage("user", PROMPT),), params=SamplingParams(temperature=0.0, max_new_tokens=tokens))


def stream_rate(lm: TransformersLM, tokens: int) -> tuple[float, str]:
    """Greedy tok/s (prefill included) and text of one request through the plugin."""
    start = time.perf_counter()
    parts, produced = [], 0
    for chunk in lm.stream(request(tokens)):
        parts.append(chunk.text)
        if chunk.stats:
            produced = chunk.stats.completion_tokens
    return produced / (time.perf_counter() - start), "".join(parts)


def gguf_path(source: str) -> Path:
    from generators.text.model_source import resolve_source

    return Path(resolve_source(source).location)


@contextlib.contextmanager
def extra_buffer_types(enabled: bool) -> Iterator[None]:
    """llama.cpp's "extra buffer types" (weight repacking, AMX tiles) for the models loaded inside.
    On this project's VM (Xeon with AMX) decoding with them on dies with a segmentation fault in
    llama_decode, so the benchmark turns them off unless asked: the plain AVX-512 kernels remain."""
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params

    def params() -> object:
        p = original()
        p.use_extra_bufts = enabled
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = original


def llama_cpp_models(path: Path, threads: int, extra_buffers: bool) -> tuple | None:
    """(generator, scorer) llama.cpp models on the GGUF file, or None without llama-cpp-python."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    common = {"model_path": str(path), "n_threads": threads, "n_threads_batch": threads, "verbose": False}
    with extra_buffer_types(extra_buffers):
        return Llama(n_ctx=2048, **common), Llama(n_ctx=1024, logits_all=True, **common)


def _serve_llama_cpp(conn: object, path: str, threads: int, extra_buffers: bool) -> None:
    """Child process: load llama.cpp on the GGUF file, then answer ("rate", tokens) / ("nll", text)."""
    models = llama_cpp_models(Path(path), threads, extra_buffers)
    conn.send(models is not None)
    while models is not None:
        command, arg = conn.recv()
        if command == "rate":
            conn.send(llama_cpp_rate(models[0], arg))
        elif command == "nll":
            conn.send(llama_cpp_nll(models[1], arg))
        else:
            for model in models:
                model.close()
            return


class LlamaCppProcess:
    """llama.cpp in a child process. In this process its OpenMP threads and torch's would share two
    cores and spin against each other (measured: llama.cpp 85 tok/s alone, 30 interleaved in one
    process); a child process keeps each side's threads asleep while the other measures."""

    def __init__(self, path: Path, threads: int, extra_buffers: bool) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve_llama_cpp, args=(child, str(path), threads, extra_buffers),
                                       daemon=True)
        self.process.start()
        child.close()  # the child's end lives in the child only: if it dies, recv() here ends with EOFError
        self.available = self._receive()

    def _receive(self) -> object:
        try:
            return self.conn.recv()
        except EOFError:
            self.process.join(timeout=10)
            raise SystemExit(f"llama.cpp's process died (exit code {self.process.exitcode}); "
                             "try --no-llama-cpp or --llama-cpp-extra-buffers") from None

    def rate(self, tokens: int) -> tuple[float, str]:
        self.conn.send(("rate", tokens))
        return self._receive()

    def nll(self, text: str) -> tuple[float, int]:
        self.conn.send(("nll", text))
        return self._receive()

    def close(self) -> None:
        if self.available:
            self.conn.send(("exit", None))
        self.process.join(timeout=30)


def llama_cpp_rate(llm: object, tokens: int) -> tuple[float, str]:
    """Greedy tok/s (prefill included) and text of one chat request, repeat penalty off."""
    start = time.perf_counter()
    out = llm.create_chat_completion([{"role": "user", "content": PROMPT}], max_tokens=tokens, temperature=0.0,
                                     top_k=1, repeat_penalty=1.0)
    return out["usage"]["completion_tokens"] / (time.perf_counter() - start), out["choices"][0]["message"]["content"]


def llama_cpp_nll(scorer: object, text: str) -> tuple[float, int]:
    """NLL (nats) and scored tokens over the plugin's own half-overlapping 1,024-token windows."""
    import numpy as np

    ids = scorer.tokenize(text.encode("utf-8"), add_bos=scorer.metadata.get("tokenizer.ggml.add_bos_token") == "true",
                          special=False)
    total, scored = 0.0, 0
    for start, end, first_new in scoring_windows(len(ids), 1024):
        scorer.reset()
        scorer.eval(ids[start:end])
        logits = np.asarray(scorer.scores[: end - start - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        nll = -logp[np.arange(end - start - 1), ids[start + 1:end]]
        total += float(nll[first_new:].sum())
        scored += len(nll) - first_new
    return total, scored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-bnb", action="store_true", help="leave out the bitsandbytes rows")
    parser.add_argument("--no-llama-cpp", action="store_true", help="leave out the llama.cpp row")
    parser.add_argument("--rows", nargs="+", metavar="LABEL",
                        help="only the plugin rows whose label starts with one of these (e.g. --rows int4 bfloat16); "
                             "float32 is always measured (the perplexity reference)")
    parser.add_argument("--llama-cpp-extra-buffers", action="store_true",
                        help="let llama.cpp repack weights / use AMX (crashes on this project's VM)")
    args = parser.parse_args()
    import torch

    source = default_models()[0].options["source"]
    cache = str(ROOT / ".cache" / "models")
    text, text_name = held_out_text()
    variants = [("float32", {}), ("bfloat16", {"dtype": "bfloat16"}), ("int4 (groups of 32)", {"quantization": "int4"}),
                ("int4, float32 activations", {"quantization": "int4", "dtype": "float32"}),
                ("int4, bfloat16 activations", {"quantization": "int4", "dtype": "bfloat16"}),
                ("int4, PyTorch's kernels (native_step off)", {"quantization": "int4", "native_step": False}),
                ("dynamic int8", {"quantization": "dynamic-int8"})]
    if not args.no_bnb:
        variants += [("bitsandbytes 8-bit", {"quantization": "8bit"}), ("bitsandbytes 4-bit NF4", {"quantization": "4bit"})]
    if args.rows:
        variants = [v for v in variants if v[0] == "float32" or v[0].startswith(tuple(args.rows))]

    reference = TransformersLM("ref", {"source": source, "device": "cpu", "max_batch": 1}, cache_dir=cache)
    reference.load()
    ids = torch.tensor([reference.encode(request(args.tokens))[0]])

    def plain_generate(tokens: int) -> tuple[float, str]:
        start = time.perf_counter()
        with torch.inference_mode():
            out = reference.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                           min_new_tokens=tokens, do_sample=False)
        text = reference.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start), text

    def plain_rate(tokens: int) -> tuple[float, str]:  # on the lane, like all tensor work here (generators/compute.py)
        return lane().call(plain_generate, tokens)

    models = []
    for label, options in variants:
        lm = TransformersLM(label, {"source": source, "device": "cpu", **options}, cache_dir=cache)
        lm.load()
        models.append((label, lm))
    llama = None if args.no_llama_cpp else LlamaCppProcess(gguf_path(source), torch.get_num_threads(),
                                                           args.llama_cpp_extra_buffers)
    if llama is not None and not llama.available:
        llama.close()
        llama = None
    # Every contender once per round, round after round: a shared VM's speed drifts over minutes, so
    # rows measured one after another would compare different machines.
    contenders = [("plain", plain_rate)]
    contenders += [(label, lambda n, lm=lm: stream_rate(lm, n)) for label, lm in models]
    if llama is not None:
        contenders.append(("llama.cpp", llama.rate))
    for _, measure in contenders:
        measure(4)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name, _ in contenders}
    samples: dict[str, str] = {}
    for _ in range(args.repeats):
        for name, measure in contenders:
            rate, samples[name] = measure(args.tokens)
            rates[name].append(rate)
    plain, plain_text = statistics.median(rates["plain"]), samples["plain"]

    rows: list[tuple] = []

    def add_row(label: str, name: str, memory: int, nll: float, count: int) -> None:
        ppl = math.exp(nll / count)
        base_ppl = rows[0][4] if rows else ppl  # float32 is the first row
        rate, sample = statistics.median(rates[name]), samples[name]
        same = sample == plain_text[:len(sample)] and len(sample) > 0
        rows.append((label, rate, rate / plain, memory, ppl, ppl / base_ppl - 1, nll / math.log(2) / len(text), same))

    for label, lm in models:
        nll, count = lm.log_likelihood(text)
        add_row(label, label, lm.memory_bytes(), nll, count)
        lm.unload()
    reference.unload()
    if llama is None:
        if not args.no_llama_cpp:
            print("(no llama.cpp row: pip install -r requirements-llamacpp.txt)\n")
    else:
        nll, scored = llama.nll(text)
        memory = gguf_path(source).stat().st_size  # the weights as mapped from the file; its KV cache comes on top
        add_row("llama.cpp, GGUF Q4_1 as stored (own process)", "llama.cpp", memory, nll, scored)
        llama.close()

    print(f"SmolLM2-135M-Instruct (GGUF Q4_1 dequantized), torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s), {args.tokens} greedy tokens, median of {args.repeats} interleaved rounds\n")
    print(f"plain model.generate, float32: {plain:.1f} tok/s\n")
    print(f"perplexity text: {text_name} ({count} tokens, {len(text)} characters)\n")
    print("| single stream | tok/s | vs plain generate | memory | perplexity | vs float32 | bits/char "
          "| greedy text = float32 generate |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for label, rate, ratio, memory, ppl, delta, bpc, same in rows:
        print(f"| {label} | {rate:.1f} | {ratio:.2f}x | {memory / 2**20:.0f} MB | {ppl:.3f} | {delta * 100:+.2f} % | "
              f"{bpc:.4f} | {'yes' if same else 'no'} |")
    if llama is not None:
        # the issue's question: is reduced precision through the plugin at least as fast as llama.cpp on the same weights?
        best = max((r for r in rows[1:-1] if r[5] < 0.05), key=lambda r: r[1], default=None)  # within +5 % perplexity
        if best is not None:
            print(f"\nfastest reduced precision within +5 % perplexity: {best[0]}, {best[1]:.1f} tok/s = "
                  f"{best[1] / rows[-1][1]:.2f}x llama.cpp ({rows[-1][1]:.1f} tok/s)")


if __name__ == "__main__":
    main()
