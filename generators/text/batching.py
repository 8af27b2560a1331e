"""Continuous batching for a loaded causal LM: concurrent requests are decoded together.

One scheduler thread per model owns the model while it runs. Between decoding steps it admits
new sequences (each prefilled alone, then its KV cache joins the batch, left-padded to the
batch's length) and retires finished or cancelled ones (their rows leave the cache). Every
sequence keeps its own sampling parameters, seed, stop strings and cancel event; a step feeds
one token per sequence with an attention mask that hides the padding and per-sequence position
ids, so each row computes what it would alone (up to float summation order: see the tests).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

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
    out: queue.Queue[tuple[str, str | None, BaseException | None]] = field(default_factory=queue.Queue)
    all_ids: Any = None  # torch (1, T) of prompt + generated
    generated: int = 0
    first_token_at: float | None = None
    finished: bool = False
    abandoned: bool = False  # the reader went away: free the row

    def stopped_by_caller(self) -> bool:
        return self.abandoned or self.cancel.is_set()

    def finish(self, reason: str) -> None:
        tail = "" if self.stops.stopped else self.stops.flush()
        self.finished = True
        self.out.put((tail, reason, None))


class ContinuousBatcher:
    def __init__(self, model: Any, max_batch: int = 16) -> None:
        self.model = model
        self.max_batch = max_batch
        self._pending: queue.Queue[BatchSequence] = queue.Queue()
        self._wake = threading.Event()
        self._closed = False
        # the batch: sequences (rows), their KV cache, attention mask and true lengths
        self._rows: list[BatchSequence] = []
        self._cache: Any = None
        self._mask: Any = None
        self._lengths: list[int] = []
        self.steps = 0
        self.max_seen_batch = 0
        self._thread = threading.Thread(target=self._run, name="continuous-batcher", daemon=True)
        self._thread.start()

    def submit(self, seq: BatchSequence) -> None:
        if self._closed:
            raise RuntimeError("the batcher is closed")
        self._pending.put(seq)
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------ scheduler thread
    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while not self._closed:
                try:
                    self._admit()
                    if not self._rows:
                        self._wake.wait(0.5)
                        self._wake.clear()
                        continue
                    self._step()
                except BaseException as exc:  # noqa: BLE001 - every waiting request gets the error
                    log.exception("Batched decoding failed")
                    for seq in self._rows:
                        seq.out.put(("", None, exc))
                    self._rows, self._cache, self._mask, self._lengths = [], None, None, []
        for seq in self._rows:
            seq.out.put(("", None, RuntimeError("the model was unloaded")))

    def _emit(self, seq: BatchSequence, token: int) -> bool:
        """Handle one sampled token; True if the sequence goes on."""
        import torch

        if seq.first_token_at is None:
            seq.first_token_at = time.perf_counter()
        if token in seq.eos:
            seq.finish("stop")
            return False
        seq.generated += 1
        seq.all_ids = torch.cat([seq.all_ids, torch.tensor([[token]], device=seq.all_ids.device)], dim=1)
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
        import torch
        from transformers import DynamicCache

        while len(self._rows) < self.max_batch:
            try:
                seq = self._pending.get_nowait()
            except queue.Empty:
                return
            if seq.stopped_by_caller():
                seq.finish("cancelled")
                continue
            device = self.model.device
            seq.all_ids = torch.tensor([seq.prompt_ids], device=device)
            out = self.model(input_ids=seq.all_ids, use_cache=True)
            token = seq.sampler(seq.all_ids, out.logits[:, -1, :])
            if not self._emit(seq, token):
                continue
            cache = out.past_key_values
            length = len(seq.prompt_ids)
            layers = [(layer.keys, layer.values) for layer in cache.layers]
            if self._cache is None:
                self._cache = DynamicCache(layers)
                self._mask = torch.ones((1, length), dtype=torch.long, device=device)
            else:
                width = self._mask.shape[1]
                pad_new, pad_old = max(0, width - length), max(0, length - width)
                merged = []
                for (k_old, v_old), (k_new, v_new) in zip(
                        ((layer.keys, layer.values) for layer in self._cache.layers), layers, strict=True):
                    merged.append((torch.cat([_left_pad(k_old, pad_old), _left_pad(k_new, pad_new)]),
                                   torch.cat([_left_pad(v_old, pad_old), _left_pad(v_new, pad_new)])))
                self._cache = DynamicCache(merged)
                new_mask = torch.cat([torch.zeros((1, pad_new), dtype=torch.long, device=device),
                                      torch.ones((1, length), dtype=torch.long, device=device)], dim=1)
                old_mask = torch.cat([torch.zeros((self._mask.shape[0], pad_old), dtype=torch.long, device=device),
                                      self._mask], dim=1)
                self._mask = torch.cat([old_mask, new_mask])
            self._rows.append(seq)
            self._lengths.append(length)
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
        input_ids = torch.cat([seq.all_ids[:, -1:] for seq in self._rows])  # (B, 1)
        position_ids = torch.tensor([[n] for n in self._lengths], device=device)
        self._mask = torch.cat([self._mask, torch.ones((len(self._rows), 1), dtype=torch.long, device=device)], dim=1)
        out = self.model(input_ids=input_ids, attention_mask=self._mask, position_ids=position_ids,
                         past_key_values=self._cache, use_cache=True)
        self._cache = out.past_key_values
        self.steps += 1
        keep = []
        for i, seq in enumerate(self._rows):
            self._lengths[i] += 1
            token = seq.sampler(seq.all_ids, out.logits[i:i + 1, -1, :])
            if self._emit(seq, token):
                keep.append(i)
        self._retain(keep)

    def _retain(self, keep: list[int]) -> None:
        import torch

        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache, self._mask, self._lengths = [], None, None, []
            return
        index = torch.tensor(keep, device=self._mask.device)
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        self._rows = [self._rows[i] for i in keep]
        self._lengths = [self._lengths[i] for i in keep]
        # columns that are padding in every remaining row are dropped
        used = self._mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else 0
        if first:
            self._mask = self._mask[:, first:]
            self._drop_left(first)

    def _drop_left(self, n: int) -> None:
        from transformers import DynamicCache

        self._cache = DynamicCache([(layer.keys[:, :, n:], layer.values[:, :, n:]) for layer in self._cache.layers])


def _left_pad(t: Any, n: int) -> Any:
    """(B, H, T, D) with n zero positions prepended on the sequence axis."""
    import torch

    if n == 0:
        return t
    return torch.cat([t.new_zeros((*t.shape[:2], n, t.shape[3])), t], dim=2)
