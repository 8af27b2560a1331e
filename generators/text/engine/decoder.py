"""The token loop of one loaded causal LM: each request alone, or in the continuous batch.

`Decoder.stream` turns prompt ids and sampling parameters into text chunks. With `max_batch > 1`
requests join the model's `ContinuousBatcher` (batcher.py) and this relays what its scheduler
produces; otherwise each request is decoded by itself on the compute lane in time slices, through
transformers' forward with its own KV cache (with temperature 0: token for token
`model.generate(do_sample=False)`). Either way a cancel event stops within one token.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Literal

from ...base import GenerationFailedError, SamplingParams, StreamClock, TextChunk, TokenLogprob
from ...compute import lane
from ..decoding import IncrementalDetokenizer, Sampler, StopStringFilter


class Decoder:
    """Decodes requests for `model` with `tokenizer`; `max_batch > 1` batches them (`native`: the C++
    layer loop of the lean step, see native.py)."""

    def __init__(self, model: Any, tokenizer: Any, max_batch: int, native: Any = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.batcher: Any = None
        if max_batch > 1:
            from .batcher import ContinuousBatcher

            self.batcher = ContinuousBatcher(model, max_batch, native=native)
        self.eos = eos_ids(model, tokenizer)

    @property
    def decode_loop(self) -> str:
        """What runs a decoding step: "C++" / "Python" (the lean step's loop) or "transformers forward"."""
        return self.batcher.decode_loop() if self.batcher is not None else "transformers forward"

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None

    def stream(self, prompt_ids: list[int], params: SamplingParams, seed: int, cancel: threading.Event | None,
               clock: StreamClock, logprobs: int | None = None) -> Iterator[TextChunk]:
        """Text chunks of the reply to `prompt_ids`; each sampled token is reported to `clock` (the plugin
        contract turns it into the stats). `logprobs`: None, or each chunk carries its tokens'
        log-probabilities and that many alternatives."""
        sampler = Sampler(params, seed, self.model.device, prompt_len=len(prompt_ids), logprobs=logprobs,
                          tokenizer=self.tokenizer, eos_ids=sorted(self.eos))
        detok = IncrementalDetokenizer(self.tokenizer)
        stops = StopStringFilter(params.stop)
        if self.batcher is not None:
            yield from self._stream_batched(prompt_ids, params, sampler, detok, stops, cancel, clock)
        else:
            yield from lane().iterate(self._stream_alone(prompt_ids, params, sampler, detok, stops, cancel, clock))

    def _stream_batched(self, prompt_ids: list[int], params: SamplingParams, sampler: Sampler, detok: Any,
                        stops: Any, cancel: threading.Event | None, clock: StreamClock) -> Iterator[TextChunk]:
        """Decode in the model's continuous batch: submit, then relay what the scheduler produces."""
        from .batcher import BatchSequence

        seq = BatchSequence(prompt_ids, params.max_new_tokens, sampler, detok, stops, self.eos,
                            cancel or threading.Event(), clock)
        self.batcher.submit(seq)
        try:
            while True:
                text, finish, error = seq.out.get()
                if error is not None:
                    raise GenerationFailedError(f"Generation failed: {error}") from error
                yield TextChunk(text, finish_reason=finish, logprobs=self._relay_scored(sampler))  # type: ignore[arg-type]
                if finish is not None:
                    return
        finally:
            seq.abandoned = True  # a consumer that stops reading frees its row at the next step

    def _relay_scored(self, sampler: Sampler) -> tuple[TokenLogprob, ...]:
        """The log-probabilities of the tokens sampled since the last chunk (the end-of-text token is no part
        of the reply, so none of its own)."""
        if sampler.logprobs is None:
            return ()
        decode = self.tokenizer.decode
        return tuple(TokenLogprob(decode([t.token_id]), t.logprob, tuple((decode([i]), lp) for i, lp in t.top))
                     for t in sampler.take_scored() if t.token_id not in self.eos)

    def _stream_alone(self, prompt_ids: list[int], params: SamplingParams, sampler: Sampler, detok: Any,
                      stops: Any, cancel: threading.Event | None, clock: StreamClock) -> Iterator[TextChunk]:
        """Batching off: decode this request by itself (advanced on the compute lane in time slices)."""
        import torch

        device = self.model.device
        eos = self.eos
        all_ids = torch.tensor([prompt_ids], device=device)  # (1, T)
        next_input = all_ids
        past: Any = None
        finish: Literal["stop", "length", "cancelled"] = "length"

        # Inference mode is entered per step, never across a yield: between two items the lane runs other jobs.
        for _ in range(params.max_new_tokens):
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            with torch.inference_mode():
                out = self.model(input_ids=next_input, past_key_values=past, use_cache=True, logits_to_keep=1)
                past = out.past_key_values
                token = sampler(all_ids, out.logits[:, -1, :])  # logits: (1, T, V) → (1, V)
            if token in eos:
                clock.token(0)
                finish = "stop"
                break
            clock.token()
            with torch.inference_mode():
                next_input = torch.tensor([[token]], device=device)
                all_ids = torch.cat([all_ids, next_input], dim=1)
            text = stops.push(detok.push(token))
            if text:
                yield TextChunk(text, logprobs=self._relay_scored(sampler))
            if stops.stopped:
                finish = "stop"
                break
        tail = "" if stops.stopped else stops.flush()
        yield TextChunk(tail, finish_reason=finish, logprobs=self._relay_scored(sampler))


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every end-of-text token id the model's generation config or its tokenizer names."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(int(e) for e in eos)
    return ids
