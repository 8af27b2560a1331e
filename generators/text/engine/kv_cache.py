"""The decoding KV cache: every layer's keys and values in preallocated buffers.

transformers' `DynamicCache` concatenates a whole new tensor per layer per step; this cache writes
each step's keys and values into the next free column of buffers that grow by doubling (the idea of
gpt-fast's and vLLM's static caches), and lets rows join and leave a continuous batch.
"""

from __future__ import annotations

from typing import Any


class KVCache:
    """Keys and values of every layer as (B, H, capacity, D) buffers, left-padded, so each step writes
    the new token of every row into the same column `width`. The capacity doubles when full; rows
    join (`merge`), leave (`select`) and all-padding columns go (`drop_left`) by copying, which is
    rare next to steps. When every layer has the same shape (every Llama) the layers are slices of one
    (layers, B, H, capacity, D) buffer per keys and values, so a step gets all its write and read views
    in four operators (`step_views`) instead of four per layer."""

    def __init__(self, layers: list[tuple[Any, Any]], capacity: int | None = None) -> None:
        import torch

        self._torch = torch
        self.width = layers[0][0].shape[2]
        capacity = max(capacity or 0, self.width + 16)
        k0, v0 = layers[0]
        self._stacked: tuple[Any, Any] | None = None
        if all(k.shape == k0.shape and v.shape == v0.shape and k.dtype == k0.dtype and v.dtype == v0.dtype
               for k, v in layers):
            keys = k0.new_zeros((len(layers), *k0.shape[:2], capacity, k0.shape[3]))
            values = v0.new_zeros((len(layers), *v0.shape[:2], capacity, v0.shape[3]))
            self._stacked = (keys, values)
            self.keys, self.values = list(keys.unbind(0)), list(values.unbind(0))
        else:
            self.keys = [k.new_zeros((*k.shape[:2], capacity, k.shape[3])) for k, _ in layers]
            self.values = [v.new_zeros((*v.shape[:2], capacity, v.shape[3])) for _, v in layers]
        for (k, v), kb, vb in zip(layers, self.keys, self.values, strict=True):
            kb[:, :, :self.width] = k
            vb[:, :, :self.width] = v

    @property
    def rows(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def layers(self) -> list[tuple[Any, Any]]:
        """Views of the filled part, (B, H, width, D) per layer."""
        return [(k[:, :, :self.width], v[:, :, :self.width]) for k, v in zip(self.keys, self.values, strict=True)]

    def step_views(self) -> tuple[Any, Any, Any, Any]:
        """Per layer: the key and value columns at `width` (B, H, 1, D) to write this step's token into,
        and the keys and values through that column (B, H, width + 1, D). Call `reserve(1)` first."""
        w = self.width
        if self._stacked is not None:
            keys, values = self._stacked
            return (keys[:, :, :, w:w + 1].unbind(0), values[:, :, :, w:w + 1].unbind(0),
                    keys[:, :, :, :w + 1].unbind(0), values[:, :, :, :w + 1].unbind(0))
        return ([k[:, :, w:w + 1] for k in self.keys], [v[:, :, w:w + 1] for v in self.values],
                [k[:, :, :w + 1] for k in self.keys], [v[:, :, :w + 1] for v in self.values])

    def reserve(self, n: int) -> None:
        """Make room for n more columns."""
        if self.width + n <= self.capacity:
            return
        self._rebuild(self.layers(), max(2 * self.capacity, self.width + n))

    def append(self, index: int, k: Any, v: Any) -> None:
        """Write one column (B, H, 1, D) of layer `index` at `width` (advance with `advance()`)."""
        self.keys[index][:, :, self.width:self.width + 1] = k
        self.values[index][:, :, self.width:self.width + 1] = v

    def advance(self, n: int = 1) -> None:
        self.width += n

    def select(self, index: Any) -> None:
        """Keep only the rows in `index` (a LongTensor): one gather per buffer, capacity kept (rows leave
        a batch one by one as they finish; rebuilding through `_rebuild` copied everything twice)."""
        if self._stacked is not None:
            keys, values = (t.index_select(1, index) for t in self._stacked)
            self._stacked = (keys, values)
            self.keys, self.values = list(keys.unbind(0)), list(values.unbind(0))
        else:
            self.keys = [k.index_select(0, index) for k in self.keys]
            self.values = [v.index_select(0, index) for v in self.values]

    def drop_left(self, n: int) -> None:
        """Forget the first n columns (padding in every row)."""
        self._rebuild([(k[:, :, n:], v[:, :, n:]) for k, v in self.layers()], self.capacity)

    def merge(self, layers: list[tuple[Any, Any]]) -> tuple[int, int]:
        """Append rows given as (B', H, T', D) per layer; the narrower side is left-padded.
        Returns (columns added to the left of the old rows, to the left of the new rows)."""
        torch = self._torch
        width, new_width = self.width, layers[0][0].shape[2]
        pad_new, pad_old = max(0, width - new_width), max(0, new_width - width)
        merged = [(torch.cat([left_pad(k_old, pad_old), left_pad(k_new, pad_new)]),
                   torch.cat([left_pad(v_old, pad_old), left_pad(v_new, pad_new)]))
                  for (k_old, v_old), (k_new, v_new) in zip(self.layers(), layers, strict=True)]
        self._rebuild(merged, self.capacity + pad_old)
        return pad_old, pad_new

    def _rebuild(self, layers: list[tuple[Any, Any]], capacity: int) -> None:
        """New buffers of `capacity` holding `layers` (their width becomes this cache's)."""
        rebuilt = KVCache(layers, capacity=capacity)
        self.keys, self.values, self.width, self._stacked = rebuilt.keys, rebuilt.values, rebuilt.width, rebuilt._stacked


def left_pad(t: Any, n: int) -> Any:
    """(B, H, T, D) with n zero positions prepended on the sequence axis."""
    import torch

    if n == 0:
        return t
    return torch.cat([t.new_zeros((*t.shape[:2], n, t.shape[3])), t], dim=2)
