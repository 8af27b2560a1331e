"""The transformers plugin on a tiny random-weight Llama with the real SmolLM2 tokenizer."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from generators.base import (
    ChatMessage,
    InvalidOptionsError,
    LoadFailedError,
    SamplingParams,
    StreamClock,
    TextRequest,
    validate_model,
)
from generators.text.transformers_lm import TransformersLM


@pytest.fixture(scope="module")
def lm(tiny_model_dir: Path) -> TransformersLM:
    gen = TransformersLM("tiny", {"source": str(tiny_model_dir), "device": "cpu"})
    gen.load()
    return gen


def chat(text: str, **params: object) -> TextRequest:
    return TextRequest(messages=(ChatMessage("user", text),), params=SamplingParams(**params))


def test_greedy_matches_plain_generate_token_for_token(lm: TransformersLM) -> None:
    for request in (chat("Hello there, how are you?", temperature=0, max_new_tokens=40),
                    TextRequest(prompt="Once upon a time", params=SamplingParams(temperature=0, max_new_tokens=40))):
        text, last = lm.generate(request)
        ids, _ = lm.encode(request)
        out = lm.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=40, pad_token_id=lm.tokenizer.eos_token_id)
        new = out[0, len(ids):].tolist()
        eos = lm.decoder.eos
        if new and new[-1] in eos:
            new = new[:-1]
        assert last.stats is not None and last.stats.completion_tokens == len(new)
        assert text == lm.tokenizer.decode(new, skip_special_tokens=True)


def test_seed_repeats_and_differs(lm: TransformersLM) -> None:
    a, _ = lm.generate(chat("Tell me something", temperature=1.0, seed=7, max_new_tokens=20))
    b, _ = lm.generate(chat("Tell me something", temperature=1.0, seed=7, max_new_tokens=20))
    c, _ = lm.generate(chat("Tell me something", temperature=1.0, seed=8, max_new_tokens=20))
    assert a == b
    assert a != c


def test_random_seed_is_reported_and_reproduces(lm: TransformersLM) -> None:
    text, last = lm.generate(chat("Hi", temperature=1.0, max_new_tokens=15))
    assert last.stats is not None
    again, _ = lm.generate(chat("Hi", temperature=1.0, max_new_tokens=15, seed=last.stats.seed))
    assert again == text


def test_streams_chunk_by_chunk_and_reports_stats(lm: TransformersLM) -> None:
    chunks = list(lm.stream(chat("Stream please", temperature=0.8, seed=1, max_new_tokens=25)))
    assert len(chunks) > 3
    assert all(c.finish_reason is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length") and last.stats is not None
    assert last.stats.prompt_tokens > 0 and last.stats.time_to_first_token_s is not None


def test_cancel_stops_within_one_token(lm: TransformersLM) -> None:
    cancel = threading.Event()
    produced = 0
    last = None
    for chunk in lm.stream(chat("Go on forever", temperature=1.0, seed=3, max_new_tokens=400), cancel):
        if chunk.text:
            produced += 1
            if produced == 3:
                cancel.set()
        last = chunk
    assert last is not None and last.finish_reason == "cancelled"
    assert last.stats is not None and last.stats.completion_tokens <= 4  # the token in flight at most


def test_stream_resumed_on_other_threads_works_and_leaks_no_grad_mode(lm: TransformersLM) -> None:
    """Gradio and Starlette call next() of a streaming generator on pool threads: each step on a new thread here."""
    import torch

    expected = "".join(c.text for c in lm.stream(chat("hop", temperature=0.0, max_new_tokens=12)))
    stream = lm.stream(chat("hop", temperature=0.0, max_new_tokens=12))
    parts: list[str] = []
    grad_after: list[bool] = []
    errors: list[BaseException] = []

    def step() -> None:
        try:
            parts.append(next(stream).text)
        except StopIteration:
            parts.append("<end>")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        grad_after.append(torch.is_grad_enabled())  # this thread must be left as it was found

    while not errors and (not parts or parts[-1] != "<end>"):
        thread = threading.Thread(target=step)
        thread.start()
        thread.join()
    assert not errors, errors
    assert "".join(parts[:-1]) == expected and all(grad_after)


def test_stop_string_ends_the_reply_and_is_not_shown(lm: TransformersLM) -> None:
    free, _ = lm.generate(chat("abc", temperature=0, max_new_tokens=30))
    assert len(free) > 6
    stop = free[3:6]
    text, last = lm.generate(chat("abc", temperature=0, max_new_tokens=30, stop=(stop,)))
    assert last.finish_reason == "stop"
    assert text == free[: free.index(stop)]


def test_oldest_turns_are_dropped_to_fit_and_system_is_kept(tiny_model_dir: Path) -> None:
    gen = TransformersLM("small-ctx", {"source": str(tiny_model_dir), "context_length": 120})
    gen.load()
    history = [ChatMessage("system", "You are terse.")]
    for i in range(12):
        history += [ChatMessage("user", f"question number {i} about things"), ChatMessage("assistant", f"answer {i}")]
    history.append(ChatMessage("user", "final question"))
    request = TextRequest(messages=tuple(history), params=SamplingParams(max_new_tokens=20, temperature=0))
    ids, dropped = gen.encode(request)
    assert dropped > 0 and len(ids) <= 100
    text = gen.tokenizer.decode(ids)
    assert "You are terse." in text and "final question" in text and "question number 0 " not in text
    _, last = gen.generate(request)
    assert last.stats is not None and last.stats.dropped_messages == dropped


def test_too_long_message_says_what_to_do(tiny_model_dir: Path) -> None:
    gen = TransformersLM("small-ctx", {"source": str(tiny_model_dir), "context_length": 64})
    gen.load()
    with pytest.raises(InvalidOptionsError, match="too long"):
        gen.encode(chat("word " * 200, max_new_tokens=10))
    with pytest.raises(InvalidOptionsError, match="max_new_tokens"):
        gen.encode(chat("hi", max_new_tokens=64))


def test_options_are_validated() -> None:
    with pytest.raises(InvalidOptionsError, match="quantization"):
        TransformersLM("x", {"quantization": "3bit"})
    with pytest.raises(InvalidOptionsError, match="not a known setting"):
        TransformersLM("x", {"sourse": "typo"})
    with pytest.raises(InvalidOptionsError, match="temperature"):
        validate_model(SamplingParams, {"temperature": -1})
    with pytest.raises(InvalidOptionsError, match="stop"):
        validate_model(SamplingParams, {"stop": [""]})


def test_impossible_choices_say_why_and_what_instead(tiny_model_dir: Path, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(LoadFailedError, match="device=auto or device=cpu"):
            TransformersLM("x", {"source": str(tiny_model_dir), "device": "cuda"}).load()
    with pytest.raises(LoadFailedError, match="not installed"):
        TransformersLM("x", {"source": "pkg:no_such_package_xyz/model.gguf"}).load()
    with pytest.raises(LoadFailedError, match="not found"):
        TransformersLM("x", {"source": str(tmp_path / "missing.gguf")}).load()
    with pytest.raises(LoadFailedError, match="allow_download"):
        TransformersLM("x", {"source": "someone/not-downloaded-model"}).load()


def test_load_unload_idempotent_and_thread_safe(tiny_model_dir: Path) -> None:
    gen = TransformersLM("t", {"source": str(tiny_model_dir)})
    calls = []
    original = gen._load
    gen._load = lambda progress: (calls.append(1), original(progress))  # type: ignore[method-assign]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: gen.load(), range(4)))
    assert calls == [1] and gen.loaded and gen.memory_bytes() > 0
    gen.unload()
    gen.unload()
    assert not gen.loaded and gen.memory_bytes() == 0 and gen.model is None


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_bitsandbytes_quantization_loads_and_generates_on_cpu(tiny_model_dir: Path, quantization: str) -> None:
    full = TransformersLM("full", {"source": str(tiny_model_dir)})
    full.load()
    gen = TransformersLM("q", {"source": str(tiny_model_dir), "quantization": quantization})
    gen.load()
    assert gen.memory_bytes() < full.memory_bytes()
    assert "Linear8bitLt" in str(type(gen.model.model.layers[0].mlp.up_proj)) or "Linear4bit" in str(
        type(gen.model.model.layers[0].mlp.up_proj)
    )
    text, last = gen.generate(chat("Hello", temperature=0, max_new_tokens=8))
    assert last.stats is not None and last.stats.completion_tokens > 0 and isinstance(text, str)


def _assert_close_to_float32_and_decodes_batched(full: TransformersLM, gen: TransformersLM, model_dir: Path,
                                                 quantization: str, refused_dtype: str) -> None:
    """The quantized model's next-token distribution stays close to float32's; it decodes several
    requests batched; it refuses `refused_dtype` with a message naming what works. Unloads both."""
    ids = torch.tensor([full.encode(chat("Tell me about the sea."))[0]])
    with torch.inference_mode():
        p = torch.softmax(full.model(input_ids=ids).logits[0, -1], -1)
        q = torch.softmax(gen.model(input_ids=ids).logits[0, -1], -1)
    assert float((p - q).abs().sum()) < 0.1  # total variation distance of the next-token distributions
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda text: gen.generate(chat(text, temperature=0, max_new_tokens=6)), ["a", "b c", "d"]))
    assert all(last.stats is not None and last.stats.completion_tokens > 0 for _, last in results)
    with pytest.raises(LoadFailedError, match="float32"):
        TransformersLM("x", {"source": str(model_dir), "quantization": quantization, "dtype": refused_dtype}).load()
    gen.unload()
    full.unload()


def test_dynamic_int8_quantizes_linear_layers_and_keeps_the_model_close(tiny_model_dir: Path) -> None:
    """PyTorch dynamic int8: every Linear (the read-out too) holds int8 weights (counted in the reported
    memory: they live outside the parameters), it decodes alone and batched, and its next-token
    distribution stays close to float32's. (This tiny model is mostly embedding, which stays float,
    so its memory does not shrink; SmolLM2's does, see the benchmark.)"""
    full = TransformersLM("full", {"source": str(tiny_model_dir), "max_batch": 1})
    full.load()
    gen = TransformersLM("q", {"source": str(tiny_model_dir), "quantization": "dynamic-int8", "max_batch": 4})
    gen.load()
    assert "quantized" in type(gen.model.model.layers[0].mlp.up_proj).__module__
    assert "quantized" in type(gen.model.lm_head).__module__
    assert gen.memory_bytes() > gen.model.get_memory_footprint() > 0
    _assert_close_to_float32_and_decodes_batched(full, gen, tiny_model_dir, "dynamic-int8", "bfloat16")


def test_int4_packs_4bit_layers_and_an_8bit_head_and_keeps_the_model_close(tiny_model_dir: Path) -> None:
    """quantization=int4: the decoder's Linear layers hold packed 4-bit weights, the output head and
    the input embedding 8-bit ones (buffers, counted once each in the reported memory); it decodes
    alone and batched, and its next-token distribution stays close to float32's. SmolLM2's figures
    are in bench_precision."""
    from generators.text.engine.int4 import Int4Linear, Int8Embedding, Int8Linear, activations_dtype, int4_supported

    if not int4_supported():
        pytest.skip("this torch build has no CPU int4 kernel")
    full = TransformersLM("full", {"source": str(tiny_model_dir), "max_batch": 1})
    full.load()
    gen = TransformersLM("q", {"source": str(tiny_model_dir), "quantization": "int4", "max_batch": 4})
    gen.load()
    assert isinstance(gen.model.model.layers[0].mlp.up_proj, Int4Linear)
    assert isinstance(gen.model.model.layers[1].self_attn.q_proj, Int4Linear)
    assert isinstance(gen.model.lm_head, Int8Linear)
    assert isinstance(gen.model.model.embed_tokens, Int8Embedding)
    packed = sum(b.numel() * b.element_size() for b in gen.model.buffers() if b.dtype in (torch.uint8, torch.int8))
    assert packed <= gen.memory_bytes() < full.memory_bytes() / 3
    # dtype=auto: bfloat16 activations between the kernels where the CPU computes bfloat16 natively, else float32
    assert gen.model.model.norm.weight.dtype == activations_dtype("auto")
    assert gen.model.model.rotary_emb.inv_freq.dtype == torch.float32
    _assert_close_to_float32_and_decodes_batched(full, gen, tiny_model_dir, "int4", "float16")


def test_auto_quantization_resolves_per_device_and_the_models_view_says_what_runs(tiny_model_dir: Path) -> None:
    """quantization=auto (the studio's default) is one entry of the quantizer table: on a CPU with the int4
    kernel it loads int4 (the layers are really 4-bit), on CUDA or with float16 the weights as they are;
    it refuses only what the quantizer it picks refuses. The Models view's precision names what runs."""
    from generators.text.engine.int4 import Int4Linear, activations_dtype, int4_supported
    from generators.text.engine.quantizers import QUANTIZERS

    auto = QUANTIZERS["auto"]
    assert auto.resolve("cuda", "auto").name == "none" and auto.refusal("cuda", "auto") is None
    assert auto.resolve("cpu", "float16").name == "none"
    assert auto.resolve("cpu", "auto").name == ("int4" if int4_supported() else "none")
    assert QUANTIZERS["int4"].resolve("cpu", "auto").name == "int4"  # a named choice is itself
    gen = TransformersLM("a", {"source": str(tiny_model_dir), "quantization": "auto", "max_batch": 2})
    assert gen.precision() == "auto (decided at load)"
    assert gen.estimated_memory_bytes() == int(TransformersLM("n", {"source": str(tiny_model_dir)}).estimated_memory_bytes()
                                               * auto.resolve("cpu", "auto").memory_factor)
    gen.load()
    try:
        if int4_supported():
            assert isinstance(gen.model.model.layers[0].mlp.up_proj, Int4Linear)
            compute = str(activations_dtype("auto")).replace("torch.", "")
            assert gen.precision().startswith(f"int4 weights on PyTorch's kernel, {compute} between them — auto")
        else:
            assert gen.precision().startswith("float32 — auto: this PyTorch has no CPU int4 kernel")
        assert gen.describe()["precision"] == gen.precision()
        assert "".join(c.text for c in gen.stream(chat("hi", temperature=0.0, max_new_tokens=4)))
    finally:
        gen.unload()


@pytest.mark.parametrize("lean", [True, False], ids=["lean-step", "transformers-forward"])
def test_concurrent_streams_are_batched_and_each_equals_decoding_alone(tiny_model_dir: Path, lean: bool) -> None:
    """Greedy rows of a continuous batch give the tokens each request gives alone, with the lean
    Llama step and with transformers' forward (what other architectures get). (Left padding
    changes float summation order; on this fp32 model the argmax never flips — if it ever did, the
    right check is the logits within ~1e-5, not the tokens.)"""
    alone = TransformersLM("alone", {"source": str(tiny_model_dir), "device": "cpu", "max_batch": 1})
    alone.load()
    batched = TransformersLM("batched", {"source": str(tiny_model_dir), "device": "cpu", "max_batch": 8})
    batched.load()
    assert batched.decoder.batcher.lean is not None  # a Llama gets the lean step
    if not lean:
        batched.decoder.batcher.lean = None
    prompts = ["a", "a much longer prompt about the sea and ships", "tea?", "numbers 1 2 3 4 5 6 7 8 9 10 11 12"]
    lengths = [40, 17, 33, 25]  # rows retire at different steps, others keep going
    expected = ["".join(c.text for c in alone.stream(chat(p, temperature=0.0, max_new_tokens=n)))
                for p, n in zip(prompts, lengths, strict=True)]
    results: dict[int, str] = {}
    cancel_me = threading.Event()

    def run(i: int) -> None:
        results[i] = "".join(c.text for c in batched.stream(chat(prompts[i], temperature=0.0, max_new_tokens=lengths[i])))

    def cancelled() -> None:
        chunks = []
        for chunk in batched.stream(chat("stop me", temperature=0.0, max_new_tokens=300), cancel_me):
            chunks.append(chunk)
            if len(chunks) == 3:
                cancel_me.set()
        results[99] = chunks[-1].finish_reason or ""

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)] + [threading.Thread(target=cancelled)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [results[i] for i in range(4)] == expected
    assert results[99] == "cancelled"
    assert batched.decoder.batcher.max_seen_batch >= 2  # they really shared steps
    batched.unload()
    alone.unload()


def test_a_long_prompt_is_prefilled_a_chunk_per_tick_while_the_batch_keeps_decoding(tiny_model_dir: Path) -> None:
    """A prompt longer than `prefill_chunk` new tokens is prefilled over several ticks; the streams
    already in the batch take a decoding step in each of them, and the long request's reply equals
    decoding it alone (chunk boundaries change float summation order only)."""
    alone = TransformersLM("alone", {"source": str(tiny_model_dir), "device": "cpu", "max_batch": 1})
    alone.load()
    batched = TransformersLM("batched", {"source": str(tiny_model_dir), "device": "cpu", "max_batch": 8})
    batched.load()
    batcher = batched.decoder.batcher
    batcher.prefill_chunk, batcher.prefill_chunk_s = 8, None  # fixed chunks: their count is checked
    batcher.prefix_cache = None  # (it would serve the chat template's opening from the short prompt: fewer chunks)
    long_prompt = "tell me a story about " + " ".join(f"ship {i}" for i in range(20))
    long_ids = batched.encode(chat(long_prompt))[0]
    assert len(long_ids) > 3 * batcher.prefill_chunk
    expected = "".join(c.text for c in alone.stream(chat(long_prompt, temperature=0.0, max_new_tokens=12)))

    chunks: list[tuple[int, int]] = []  # (decoding steps so far, rows decoding) at each chunk
    original = batcher._prefill_next_chunk

    def recording() -> None:
        if batcher._partial and batcher._partial[0][0].prompt_ids == long_ids:  # (the short chat prompt may be chunked too)
            chunks.append((batcher.steps, len(batcher._rows)))
        original()

    batcher._prefill_next_chunk = recording
    short_started = threading.Event()
    results: dict[str, str] = {}

    def short() -> None:
        out = []
        for chunk in batched.stream(chat("a", temperature=0.0, max_new_tokens=200, stop=["never"])):
            out.append(chunk.text)
            short_started.set()
        results["short"] = "".join(out)

    def long() -> None:
        short_started.wait(60)
        results["long"] = "".join(c.text for c in batched.stream(chat(long_prompt, temperature=0.0, max_new_tokens=12)))

    threads = [threading.Thread(target=short), threading.Thread(target=long)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results["long"] == expected
    n_chunks = -(-len(long_ids) // batcher.prefill_chunk)
    assert len(chunks) == n_chunks  # the last one prefills the rest and joins the batch
    decoding = [c for c in chunks if c[1] > 0]
    assert len(decoding) >= n_chunks - 1  # the short stream was decoding all along
    assert decoding[-1][0] - decoding[0][0] >= len(decoding) - 1  # one step between chunks
    batched.unload()
    alone.unload()


def test_a_request_cancelled_during_its_chunked_prefill_ends_cancelled(tiny_model_dir: Path) -> None:
    """(A long prompt is chunked only while others decode; alone it is prefilled in one forward.)"""
    batched = TransformersLM("batched", {"source": str(tiny_model_dir), "device": "cpu", "max_batch": 8})
    batched.load()
    batcher = batched.decoder.batcher
    batcher.prefill_chunk, batcher.prefill_chunk_s = 4, None
    cancel, decoding = threading.Event(), threading.Event()
    original = batcher._prefill_next_chunk
    chunked: list[int] = []

    def cancel_after_first_chunk() -> None:
        original()
        chunked.append(1)
        cancel.set()

    batcher._prefill_next_chunk = cancel_after_first_chunk

    def other() -> None:
        for _ in batched.stream(chat("a", temperature=0.0, max_new_tokens=150, stop=["never"])):
            decoding.set()

    thread = threading.Thread(target=other)
    thread.start()
    assert decoding.wait(60)
    chunks = list(batched.stream(chat("a long prompt " * 10, temperature=0.0, max_new_tokens=20), cancel))
    assert chunked and [c.text for c in chunks] == [""] and chunks[-1].finish_reason == "cancelled"
    thread.join(60)
    assert not batcher._partial and not batcher._rows
    batched.unload()


def test_a_long_prompt_alone_is_prefilled_in_one_forward(tiny_model_dir: Path) -> None:
    batched = TransformersLM("batched", {"source": str(tiny_model_dir), "device": "cpu", "max_batch": 8})
    batched.load()
    batched.decoder.batcher.prefill_chunk, batched.decoder.batcher.prefill_chunk_s = 4, None
    chunked: list[int] = []
    original = batched.decoder.batcher._prefill_next_chunk
    batched.decoder.batcher._prefill_next_chunk = lambda: (chunked.append(1), original())
    text = "".join(c.text for c in batched.stream(chat("a long prompt " * 10, temperature=0.0, max_new_tokens=5)))
    assert text and not chunked
    batched.unload()


class RecordingGreedy:
    """A greedy sampler that keeps every logits row it was given."""

    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> int:
        self.logits.append(logits[0].float().clone())
        return int(logits.argmax())


def test_prompts_prefilled_together_from_cached_prefixes_compute_what_they_compute_alone(tiny_model_dir: Path) -> None:
    """Waiting prompts are prefilled in one forward, each from the longest prefix already in the
    prefix cache (here the chat template's system prompt and a whole earlier turn). Each row's
    logits at every step equal a plain full recomputation of that prompt alone within 1e-4 (padding
    and cache reuse only reorder float sums), and the greedy tokens are identical."""
    from generators.text.decoding import IncrementalDetokenizer, StopStringFilter
    from generators.text.engine.batcher import BatchSequence

    lm = TransformersLM("b", {"source": str(tiny_model_dir), "device": "cpu", "max_batch": 8})
    lm.load()
    batcher = lm.decoder.batcher
    first_turn = chat("Tell me about the sea.")
    follow_up = TextRequest(messages=(ChatMessage("user", "Tell me about the sea."), ChatMessage("assistant", "It is wet."),
                                      ChatMessage("user", "And the tides?")), params=SamplingParams())
    requests = [first_turn, follow_up, chat("A poem about tea, please"), chat("Why?"),
                TextRequest(prompt="Once upon a time there was", params=SamplingParams())]
    prompts = [lm.encode(r)[0] for r in requests]
    steps = 12

    gate, entered = threading.Event(), threading.Event()
    forward = batcher.model.forward

    def gated_forward(*args: object, **kwargs: object) -> object:
        if not gate.is_set():
            entered.set()
            gate.wait(30)
        return forward(*args, **kwargs)

    groups: list[int] = []
    prefill = batcher._prefill

    def counting_prefill(group: list[BatchSequence], known: dict | None = None) -> None:
        groups.append(len(group))
        prefill(group, known)

    batcher.model.forward = gated_forward
    batcher._prefill = counting_prefill
    samplers = [RecordingGreedy() for _ in prompts]
    seqs = [BatchSequence(ids, steps, sampler, IncrementalDetokenizer(lm.tokenizer), StopStringFilter(()), set(),
                          threading.Event(), StreamClock()) for ids, sampler in zip(prompts, samplers, strict=True)]
    batcher.submit(seqs[0])  # the first turn runs first and fills the prefix cache …
    assert entered.wait(30)
    for seq in seqs[1:]:  # … while the others wait, to be admitted together
        batcher.submit(seq)
    gate.set()
    for seq in seqs:
        while seq.out.get(timeout=60)[1] is None:
            pass
    assert groups[:2] == [1, 4]
    assert batcher.prefix_hits_tokens >= len(prompts[0]) - 1  # the follow-up reused the whole first turn
    assert len(batcher.prefix_cache) >= 1

    model = lm.model
    for ids, sampler in zip(prompts, samplers, strict=True):
        alone, tokens = [], list(ids)
        with torch.inference_mode():
            for _ in range(steps):
                logits = model(input_ids=torch.tensor([tokens])).logits[0, -1].float()
                alone.append(logits)
                tokens.append(int(logits.argmax()))
        assert len(sampler.logits) == steps
        assert [int(x.argmax()) for x in sampler.logits] == tokens[len(ids):]
        worst = max(float((a - b).abs().max()) for a, b in zip(sampler.logits, alone, strict=True))
        assert worst < 1e-4, worst
    lm.unload()


def test_prefix_cache_finds_the_longest_shared_prefix_and_evicts_least_recently_used() -> None:
    from generators.text.engine.batcher import PrefixCache

    def kv(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:  # 2 layers of (1, heads 1, n, dim 2) float32
        return [(torch.arange(n, dtype=torch.float32).reshape(1, 1, n, 1).repeat(1, 1, 1, 2),) * 2 for _ in range(2)]

    per_token = 2 * 2 * 2 * 4  # layers × (k, v) × dim × 4 bytes
    cache = PrefixCache(max_bytes=10 * per_token)
    assert cache.lookup([1, 2, 3]) == (0, None)
    cache.add([1, 2, 3, 4], kv(4))
    n, layers = cache.lookup([1, 2, 3, 9, 9])
    assert n == 3 and layers is not None and layers[0][0].shape == (1, 1, 3, 2)
    assert cache.lookup([1, 2, 3, 4])[0] == 3  # the last token always runs: its logits are needed
    cache.add([1, 2], kv(2))  # already covered by [1, 2, 3, 4]
    assert len(cache) == 1
    cache.add([1, 2, 3, 4, 5], kv(5))  # extends the entry: replaces it
    assert len(cache) == 1 and cache.bytes == 5 * per_token
    cache.add([7, 8, 9], kv(3))
    cache.lookup([1, 2, 3, 4, 5, 6])  # touch the first: the second is now least recently used
    cache.add([5, 5, 5], kv(3))  # 11 tokens > 10: evict the least recently used
    assert cache.lookup([7, 8, 9, 1])[0] == 0
    assert cache.lookup([1, 2, 3, 4, 5, 6])[0] == 5
    assert cache.bytes <= 10 * per_token
    cache.add(list(range(100)), kv(100))  # larger than the whole budget: not kept
    assert cache.lookup(list(range(100)))[0] == 0


def test_scoring_windows_score_every_predicted_token_once_with_half_a_window_of_context() -> None:
    from generators.text.transformers_lm import scoring_windows

    for length, window in [(2, 8), (8, 8), (9, 8), (2105, 1024), (3000, 9)]:
        scored = []
        for start, end, first_new in scoring_windows(length, window):
            assert end - start <= window
            positions = list(range(start + 1 + first_new, end))  # predicted tokens counted in this window
            assert all(p - start >= min(window // 2, p) for p in positions)  # context before each
            scored += positions
        assert scored == list(range(1, length))


def test_the_plugin_decodes_through_the_c_plus_plus_loop_with_the_python_loops_tokens(
        tiny_model_dir: Path, native_layers: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """native_step (on by default): the batcher's lean step runs its layers in C++ — the same greedy
    tokens as with native_step=false, for requests alone and batched. Without a compiler the load
    still succeeds and says it decodes through Python."""
    from generators.text.engine import native as native_step
    from tests.conftest import MODEL_CACHE

    def load(name: str, **options: object) -> TransformersLM:
        gen = TransformersLM(name, {"source": str(tiny_model_dir), "max_batch": 4, **options}, cache_dir=str(MODEL_CACHE))
        gen.load()
        return gen

    native, python = load("native"), load("python", native_step=False)
    assert native.describe()["decode_loop"] == "C++" and python.describe()["decode_loop"] == "Python"
    prompts = ["Tell me about the sea.", "a", "Count to ten, please"]
    batched, alone = {}, {}
    for gen in (native, python):
        with ThreadPoolExecutor(3) as pool:
            batched[gen.name] = list(pool.map(lambda text, gen=gen: gen.generate(
                chat(text, temperature=0, max_new_tokens=12))[0], prompts))
        alone[gen.name] = gen.generate(chat(prompts[0], temperature=0, max_new_tokens=12))[0]
    assert batched["native"] == batched["python"] and alone["native"] == alone["python"] == batched["python"][0]
    native.unload()
    python.unload()

    monkeypatch.setattr(native_step, "_registered", lambda: None)  # as in a process that has not built it
    monkeypatch.setenv("CXX", "no-such-compiler")
    op, reason = native_step.load_native_layers(MODEL_CACHE / "_native")
    assert op is None and "no-such-compiler" in reason
    fallback = load("fallback")
    assert fallback.describe()["decode_loop"] == "Python"
    fallback.unload()


def test_int4_on_an_avx2_cpu_runs_the_projects_kernels_with_the_same_weights(
        tiny_model_dir: Path, native_layers: object) -> None:
    """With the native library (a cache folder) on an AVX2 CPU without AVX-512, an int4 model's layers move
    onto the project's AVX2 kernels: the same 4-bit weights (next-token distribution within float32
    rounding of PyTorch's kernel run), the Models view says so, and batched greedy rows equal each request
    alone. On other CPUs PyTorch's kernel stays (and this test checks that instead)."""
    from generators.text.engine.avx2 import Int4Avx2Linear, Int8Avx2Linear, TiledInt8Embedding
    from generators.text.engine.int4 import Int4Linear, int4_supported
    from tests.conftest import MODEL_CACHE

    if not int4_supported():
        pytest.skip("this torch build has no CPU int4 kernel")
    options = {"source": str(tiny_model_dir), "quantization": "int4", "dtype": "float32", "max_batch": 4}
    torch_kernel = TransformersLM("torch", {**options, "native_step": False}, cache_dir=str(MODEL_CACHE))
    torch_kernel.load()
    gen = TransformersLM("avx2", options, cache_dir=str(MODEL_CACHE))
    gen.load()
    try:
        up = gen.model.model.layers[0].mlp.up_proj
        if torch.backends.cpu.get_cpu_capability() != "AVX2":
            assert isinstance(up, Int4Linear) and "PyTorch's kernel" in gen.precision()
            return
        assert isinstance(up, Int4Avx2Linear) and isinstance(gen.model.lm_head, Int8Avx2Linear)
        assert isinstance(gen.model.model.embed_tokens, TiledInt8Embedding)
        assert isinstance(torch_kernel.model.model.layers[0].mlp.up_proj, Int4Linear)
        assert gen.precision().startswith("int4 weights on the AVX2 kernels, float32 between them")
        ids = torch.tensor([gen.encode(chat("Tell me about the sea."))[0]])
        with torch.inference_mode():
            p = torch.softmax(torch_kernel.model(input_ids=ids).logits[0, -1], -1)
            q = torch.softmax(gen.model(input_ids=ids).logits[0, -1], -1)
        assert float((p - q).abs().sum()) < 1e-3
        prompts = ["Tell me about the sea.", "a", "Count to ten, please"]
        alone = [gen.generate(chat(text, temperature=0, max_new_tokens=10))[0] for text in prompts]
        with ThreadPoolExecutor(3) as pool:
            batched = list(pool.map(lambda text: gen.generate(chat(text, temperature=0, max_new_tokens=10))[0], prompts))
        assert batched == alone and all(alone)
        assert gen.describe()["decode_loop"] == "C++"
    finally:
        gen.unload()
        torch_kernel.unload()


@pytest.mark.parametrize("capability", ["AVX512", "AVX2", "DEFAULT"])
def test_auto_precision_picks_int4_on_every_cpu_with_the_kernel(tiny_model_dir, monkeypatch, capability: str) -> None:
    """A decoding step is bound by reading the weights, so 4-bit weights win on AVX-512 and AVX2 CPUs alike
    (bench_precision / bench_api); without the kernel, auto keeps the float weights and the Models view says why."""
    import torch

    from generators.text.engine import int4 as int4_module
    from generators.text.engine.quantizers import QUANTIZERS

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert QUANTIZERS["auto"].resolve("cpu", "auto").name == "int4"
    monkeypatch.setattr(int4_module, "int4_supported", lambda: False)
    assert QUANTIZERS["auto"].resolve("cpu", "auto").name == "none"
    gen = TransformersLM("tiny", {"source": str(tiny_model_dir), "device": "cpu", "quantization": "auto"})
    gen.load()
    try:
        assert gen.quantizer.name == "none"
        assert "no CPU int4 kernel" in gen.precision()
    finally:
        gen.unload()
