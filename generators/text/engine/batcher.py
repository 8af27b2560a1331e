"""Continuous batching for a loaded causal LM: concurrent requests are decoded together.

The scheduler is a stepper of the process's compute lane (`generators.compute`): the lane thread
runs one decoding step of the whole batch per tick, between other tensor jobs. Between steps it admits
new sequences (the waiting prompts prefilled together in one forward, each from the longest
prefix whose keys and values are already cached; then their KV cache joins the batch, the
narrower side left-padded) and retires finished or cancelled ones (their rows leave the cache). A
prompt longer than `prefill_chunk` new tokens, arriving while others decode, is prefilled one chunk per
tick between their steps (vLLM's chunked prefill), so a long story context slows their tokens for a
while instead of stopping them for the whole prefill; the chunk is resized to take about
`prefill_chunk_s`, and with nobody decoding the rest goes in one forward. Figures:
`benchmarks/bench_chunked_prefill.py` and the README. Every
sequence keeps its own sampling parameters, seed, stop strings and cancel event; a step feeds
one token per sequence with an attention mask that hides the padding and per-sequence position
ids, so each row computes what it would alone (up to float summation order: see the tests).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ...base import StreamClock
from ...compute import ComputeLane
from ...compute import lane as compute_lane
from .kv_cache import KVCache, left_pad
from .step import LeanLlamaStep

log = logging.getLogger(__name__)


@dataclass
class BatchSequence:
    """One request in the batch; results go to `out` as (text, finish_reason or None, error or None)."""

    prompt_ids: list[int]
    max_new_tokens: int
    sampler: Any  # decoding.Sampler
    detok: Any  # decoding.IncrementalDetokenizer
    stops: Any  # decoding.StopStringFilter
    eos: set[int]
    cancel: threading.Event
    clock: StreamClock  # told of each sampled token (the plugin contract's timing)
    out: queue.Queue[tuple[str, str | None, BaseException | None]] = field(default_factory=queue.Queue)
    ids: list[int] = field(default_factory=list)  # prompt + generated
    generated: int = 0
    finished: bool = False
    abandoned: bool = False  # the reader went away: free the row

    def stopped_by_caller(self) -> bool:
        return self.abandoned or self.cancel.is_set()

    def finish(self, reason: str) -> None:
        tail = "" if self.stops.stopped else self.stops.flush()
        self.finished = True
        self.out.put((tail, reason, None))


class PrefixCache:
    """Keys and values of recent prompts, so a prompt that starts like one seen before — the chat
    template's system prompt, the earlier turns of the same chat, the story so far — is prefilled
    only from where the two part (the idea of vLLM's automatic prefix caching, per prompt rather
    than per block). Least recently used entries go first past `max_bytes`; compute lane only.
    """

    def __init__(self, max_bytes: int, max_entries: int = 64) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.bytes = 0
        self._entries: OrderedDict[tuple[int, ...], list[tuple[Any, Any]]] = OrderedDict()
        self._sizes: dict[tuple[int, ...], int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: list[int]) -> tuple[int, list[tuple[Any, Any]] | None]:
        """(n, keys/values of the first n tokens): the longest cached prefix, leaving at least one
        token to run (its logits give the first new token)."""
        key = tuple(ids)
        best, best_key = 0, None
        for other in self._entries:
            n = _common_prefix(other, key)
            if n > best:
                best, best_key = n, other
        n = min(best, len(ids) - 1)
        if n <= 0 or best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        return n, [(k[:, :, :n], v[:, :, :n]) for k, v in self._entries[best_key]]

    def add(self, ids: list[int], layers: list[tuple[Any, Any]]) -> None:
        key = tuple(ids)
        for other in list(self._entries):
            n = _common_prefix(other, key)
            if n == len(key):  # an entry already holds this prompt (or a longer one starting with it)
                self._entries.move_to_end(other)
                return
            if n == len(other):  # the new prompt extends this entry: it replaces it
                self._remove(other)
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        if size > self.max_bytes:
            return
        self._entries[key] = layers
        self._sizes[key] = size
        self.bytes += size
        while self.bytes > self.max_bytes or len(self._entries) > self.max_entries:
            self._remove(next(iter(self._entries)))

    def clear(self) -> None:
        self._entries.clear()
        self._sizes.clear()
        self.bytes = 0

    def _remove(self, key: tuple[int, ...]) -> None:
        del self._entries[key]
        self.bytes -= self._sizes.pop(key)


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Length of the common prefix (binary search over slice comparisons, which run in C)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


# Below a few hundred rows a prefill forward is dominated by per-call costs (and int4 layers only switch to
# their dense path from 160 rows): smaller chunks would cost the long prompt more than they save the others.
PREFILL_CHUNK_MIN, PREFILL_CHUNK_MAX = 256, 8192


class ContinuousBatcher:
    def __init__(self, model: Any, max_batch: int = 16, prefix_cache_bytes: int = 256 << 20,
                 prefill_tokens: int = 4096, lane: ComputeLane | None = None, lean: bool = True,
                 prefill_chunk: int = 256, prefill_chunk_s: float | None = 0.25, native: Any = None) -> None:
        self.model = model
        self.max_batch = max_batch
        self.prefill_tokens = prefill_tokens  # padded prompt tokens per prefill forward
        self.prefill_chunk = prefill_chunk  # a longer rest of a prompt is prefilled this many tokens per tick
        # ...resized after each chunk to take about this long (None: fixed), whatever the machine and model
        self.prefill_chunk_s = prefill_chunk_s
        # long prompts being prefilled a chunk per tick: (sequence, keys/values so far or None, tokens done)
        self._partial: list[tuple[BatchSequence, list[tuple[Any, Any]] | None, int]] = []
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self.prefix_hits_tokens = 0
        self._pending: queue.Queue[BatchSequence] = queue.Queue()
        self._closed = False
        # the batch: sequences (rows), their KV cache, attention mask and true lengths
        self._rows: list[BatchSequence] = []
        self._cache: Any = None
        self._mask: Any = None
        self._lengths: list[int] = []
        self.steps = 0
        self.max_seen_batch = 0
        # Decoding steps through the lean Llama step where the model allows, else transformers' forward.
        # `native`: its layer loop in C++ (native.load_native_layers), where the model's layers allow.
        self.lean = LeanLlamaStep(model, native=native) if lean and LeanLlamaStep.unsupported(model) is None else None
        self.lane = lane if lane is not None else compute_lane()
        self.lane.add_stepper(self)

    def decode_loop(self) -> str:
        """What runs a decoding step: "C++" / "Python" (the lean step's layer loop) or "transformers forward"."""
        if self.lean is None:
            return "transformers forward"
        return "C++" if self.lean.native is not None else "Python"

    def submit(self, seq: BatchSequence) -> None:
        if self._closed:
            raise RuntimeError("the batcher is closed")
        if self.lane.on_lane():  # its reader would wait for a step that only this thread can run
            raise RuntimeError("read a batched stream from another thread than the compute lane")
        self._pending.put(seq)
        self.lane.wake()

    def close(self) -> None:
        """Leave the lane; sequences still running or waiting get an error."""
        self._closed = True
        self.lane.call(self._shut_down)

    def _shut_down(self) -> None:
        self.lane.remove_stepper(self)
        gone = RuntimeError("the model was unloaded")
        for seq in self._rows + [seq for seq, _, _ in self._partial]:
            seq.out.put(("", None, gone))
        self._partial = []
        while True:
            try:
                self._pending.get_nowait().out.put(("", None, gone))
            except queue.Empty:
                break
        self._clear()

    def _clear(self) -> None:
        """No rows left: drop the batch's KV cache and mask."""
        self._rows, self._cache, self._mask, self._lengths = [], None, None, []

    # ------------------------------------------------------------ on the compute lane
    def has_work(self) -> bool:
        return not self._closed and (bool(self._rows) or bool(self._partial) or not self._pending.empty())

    def tick(self) -> None:
        """Admit what waits, one chunk of a long prompt's prefill, then one decoding step of the batch."""
        import torch

        with torch.inference_mode():
            try:
                self._admit()
                if self._partial:
                    self._prefill_next_chunk()
                if self._rows:
                    self._step()
            except BaseException as exc:  # noqa: BLE001 - every waiting request gets the error
                log.exception("Batched decoding failed")
                for seq in self._rows:
                    seq.out.put(("", None, exc))
                self._clear()

    def _emit(self, seq: BatchSequence, token: int) -> bool:
        """Handle one sampled token; True if the sequence goes on."""
        if token in seq.eos:
            seq.clock.token(0)
            seq.finish("stop")
            return False
        seq.clock.token()
        seq.generated += 1
        seq.ids.append(token)
        text = seq.stops.push(seq.detok.push(token))
        if text:
            seq.out.put((text, None, None))
        if seq.stops.stopped:
            seq.finish("stop")
            return False
        if seq.generated >= seq.max_new_tokens:
            seq.finish("length")
            return False
        return True

    def _admit(self) -> None:
        """Move waiting requests into the batch: prefilled together, each from its longest cached prefix."""
        new: list[BatchSequence] = []
        while len(self._rows) + len(self._partial) + len(new) < self.max_batch:
            try:
                seq = self._pending.get_nowait()
            except queue.Empty:
                break
            if seq.stopped_by_caller():
                seq.finish("cancelled")
                continue
            cached, layers = self.prefix_cache.lookup(seq.prompt_ids) if self.prefix_cache else (0, None)
            if self._rows and len(seq.prompt_ids) - cached > self.prefill_chunk:  # others are decoding: chunks
                self.prefix_hits_tokens += cached
                self._partial.append((seq, layers, cached))  # prefilled a chunk per tick
                continue
            new.append(seq)
        group: list[BatchSequence] = []
        for seq in new:  # groups bounded in padded tokens, so a long prompt never pads many short ones
            width = max((len(s.prompt_ids) for s in group + [seq]), default=0)
            if group and width * (len(group) + 1) > self.prefill_tokens:
                self._prefill_or_fail(group)
                group = []
            group.append(seq)
        if group:
            self._prefill_or_fail(group)

    def _prefill_next_chunk(self) -> None:
        """The next `prefill_chunk` tokens of the oldest long prompt; its last chunk goes through
        `_prefill`, which samples its first token and joins it to the batch."""
        import torch
        from transformers import DynamicCache

        waiting = []
        for partial in self._partial:
            if partial[0].stopped_by_caller():
                partial[0].finish("cancelled")
            else:
                waiting.append(partial)
        self._partial = waiting
        if not self._partial:
            return
        seq, layers, done = self._partial[0]
        if len(seq.prompt_ids) - done <= self.prefill_chunk or not self._rows:  # the rest, or nobody left waiting on it
            self._partial.pop(0)
            self._prefill_or_fail([seq], known={id(seq): (done, layers)})
            return
        device = self.model.device
        end = done + self.prefill_chunk
        started = time.perf_counter()
        try:
            out = self.model(input_ids=torch.tensor([seq.prompt_ids[done:end]], device=device),
                             position_ids=torch.arange(done, end, device=device)[None],
                             attention_mask=torch.ones((1, end), dtype=torch.long, device=device),
                             past_key_values=DynamicCache(layers) if layers else None, use_cache=True, logits_to_keep=1)
        except Exception as exc:  # noqa: BLE001 - the request gets the error, the batch goes on
            log.exception("Prefill failed")
            self._partial.pop(0)
            seq.out.put(("", None, exc))
            return
        self._partial[0] = (seq, [(layer.keys, layer.values) for layer in out.past_key_values.layers], end)
        if self.prefill_chunk_s:  # (on a GPU this times the launch, not the work: chunks grow towards the maximum)
            per_token = (time.perf_counter() - started) / (end - done)
            self.prefill_chunk = max(PREFILL_CHUNK_MIN, min(PREFILL_CHUNK_MAX, int(self.prefill_chunk_s / per_token)))

    def _prefill_or_fail(self, group: list[BatchSequence], known: dict[int, tuple[int, Any]] | None = None) -> None:
        """A prefill that fails (out of memory, a bad prompt) fails its own requests, not the batch."""
        try:
            self._prefill(group, known)
        except Exception as exc:  # noqa: BLE001 - the waiting requests get the error
            log.exception("Prefill failed")
            if self.prefix_cache is not None:
                self.prefix_cache.clear()
            for seq in group:
                if seq not in self._rows:
                    seq.out.put(("", None, exc))

    def _prefill(self, group: list[BatchSequence], known: dict[int, tuple[int, Any]] | None = None) -> None:
        """One forward over the prompts of `group` (minus what the prefix cache already holds, or
        what `known` gives by `id(seq)`: tokens already prefilled and their keys and values).

        Row i is laid out as [pad][cached prefix i][pad][rest of prompt i]: the cached keys and
        values are left-padded to the longest cached prefix and the uncached tokens to the longest
        rest, the attention mask hides both paddings and explicit position ids keep each token at
        its true position, so every row computes what its prompt computes alone.
        """
        import torch
        from transformers import DynamicCache

        device = self.model.device
        plans = []
        for seq in group:
            seq.ids = list(seq.prompt_ids)
            if known is not None and id(seq) in known:
                cached, layers = known[id(seq)]
            else:
                cached, layers = self.prefix_cache.lookup(seq.prompt_ids) if self.prefix_cache else (0, None)
            plans.append((seq, cached, layers))
        self.prefix_hits_tokens += sum(n for seq, n, _ in plans if known is None or id(seq) not in known)
        n_max = max(n for _, n, _ in plans)
        s_max = max(len(seq.prompt_ids) - n for seq, n, _ in plans)
        rows = len(group)
        input_ids = torch.zeros((rows, s_max), dtype=torch.long, device=device)
        position_ids = torch.zeros((rows, s_max), dtype=torch.long, device=device)
        mask = torch.zeros((rows, n_max + s_max), dtype=torch.long, device=device)
        for i, (seq, n, _) in enumerate(plans):
            rest = seq.prompt_ids[n:]
            input_ids[i, s_max - len(rest):] = torch.tensor(rest, device=device)
            position_ids[i] = n  # padding positions: any value, they are masked
            position_ids[i, s_max - len(rest):] = torch.arange(n, n + len(rest), device=device)
            mask[i, n_max - n:n_max] = 1
            mask[i, n_max + s_max - len(rest):] = 1
        past = None
        if n_max:
            template = next(layers for _, n, layers in plans if n)
            past_layers = []
            for index, (k_ref, v_ref) in enumerate(template):
                ks, vs = [], []
                for _, n, layers in plans:
                    k, v = layers[index] if n else (k_ref[:, :, :0], v_ref[:, :, :0])
                    ks.append(left_pad(k, n_max - n))
                    vs.append(left_pad(v, n_max - n))
                past_layers.append((torch.cat(ks), torch.cat(vs)))
            past = DynamicCache(past_layers)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, past_key_values=past,
                         use_cache=True, logits_to_keep=1)
        keep_float = mask[:, None, :, None]
        layers = []
        for layer in out.past_key_values.layers:  # padded slots hold zeros, never what padding computed
            layers.append((layer.keys * keep_float.to(layer.keys.dtype), layer.values * keep_float.to(layer.values.dtype)))
        if self.prefix_cache is not None:
            for i, (seq, _, _) in enumerate(plans):
                columns = mask[i].nonzero().squeeze(1)
                self.prefix_cache.add(seq.prompt_ids, [(k[i:i + 1, :, columns], v[i:i + 1, :, columns]) for k, v in layers])
        keep = [i for i, token in enumerate(self._sample([seq for seq, _, _ in plans], out.logits[:, -1, :]))
                if self._emit(group[i], token)]
        if not keep:
            return
        if len(keep) < rows:
            index = torch.tensor(keep, device=device)
            layers = [(k[index], v[index]) for k, v in layers]
            mask = mask[index]
        self._join([group[i] for i in keep], layers, mask)

    def _join(self, seqs: list[BatchSequence], layers: list[tuple[Any, Any]], mask: Any) -> None:
        """Add prefilled rows to the batch; the narrower side is left-padded to the wider."""
        import torch

        if self._cache is None:
            self._cache, self._mask = KVCache(layers), mask
        else:
            pad_old, pad_new = self._cache.merge(layers)
            self._mask = torch.cat([_left_pad_mask(self._mask, pad_old), _left_pad_mask(mask, pad_new)])
        self._rows.extend(seqs)
        self._lengths.extend(len(seq.prompt_ids) for seq in seqs)
        self.max_seen_batch = max(self.max_seen_batch, len(self._rows))

    def _step(self) -> None:
        import torch

        device = self.model.device
        keep = [i for i, seq in enumerate(self._rows) if not seq.stopped_by_caller()]
        for i, seq in enumerate(self._rows):
            if i not in keep:
                seq.finish("cancelled")
        self._retain(keep)
        if not self._rows:
            return
        input_ids = torch.tensor([[seq.ids[-1]] for seq in self._rows], device=device)  # (B, 1)
        position_ids = torch.tensor([[n] for n in self._lengths], device=device)
        self._mask = torch.cat([self._mask, torch.ones((len(self._rows), 1), dtype=torch.long, device=device)], dim=1)
        if self.lean is not None:
            logits = self.lean(input_ids, position_ids, self._mask, self._cache)
        else:
            from transformers import DynamicCache

            out = self.model(input_ids=input_ids, attention_mask=self._mask, position_ids=position_ids,
                             past_key_values=DynamicCache(self._cache.layers()), use_cache=True)
            self._cache.reserve(1)
            for index, layer in enumerate(out.past_key_values.layers):
                self._cache.append(index, layer.keys[:, :, -1:], layer.values[:, :, -1:])
            self._cache.advance()
            logits = out.logits[:, -1, :]
        self.steps += 1
        self._lengths = [n + 1 for n in self._lengths]
        keep = [i for i, token in enumerate(self._sample(self._rows, logits)) if self._emit(self._rows[i], token)]
        self._retain(keep)

    def _sample(self, seqs: list[BatchSequence], logits: Any) -> list[int]:
        """The next token of each row: plain greedy rows in one argmax, the others by their sampler."""
        import torch

        plain = [getattr(seq.sampler, "plain_greedy", False) for seq in seqs]
        # max(dim).indices: the same first maximal index as argmax, and cheaper on a CPU
        greedy = logits.max(dim=-1).indices.tolist() if any(plain) else None
        tokens = []
        for i, seq in enumerate(seqs):
            if plain[i]:
                tokens.append(greedy[i])
            else:
                tokens.append(seq.sampler(torch.tensor([seq.ids], device=logits.device), logits[i:i + 1]))
        return tokens

    def _retain(self, keep: list[int]) -> None:
        import torch

        if len(keep) == len(self._rows):
            return
        if not keep:
            self._clear()
            return
        index = torch.tensor(keep, device=self._mask.device)
        self._cache.select(index)
        self._mask = self._mask[index]
        self._rows = [self._rows[i] for i in keep]
        self._lengths = [self._lengths[i] for i in keep]
        # columns that are padding in every remaining row are dropped
        used = self._mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else 0
        if first:
            self._mask = self._mask[:, first:]
            self._cache.drop_left(first)


def _left_pad_mask(mask: Any, n: int) -> Any:
    import torch

    if n == 0:
        return mask
    return torch.cat([mask.new_zeros((mask.shape[0], n)), mask], dim=1)
