"""A lean decoding step for Llama-architecture models, and the KV cache it writes into.

Transformers' forward serves every case (training, any mask, any cache layout), and for one new
token of a small model most of its time is Python around ~700 tiny kernels: module calls, mask
building, a cache that concatenates a whole new tensor per layer per step. Measured with cProfile
on SmolLM2-135M int4, one stream: 9 ms of kernels in 28 ms per token. This step does the same
arithmetic with the model's own weights, modules and rotary embedding — embed, per layer RMS norm,
q/k/v projections, RoPE, attention over the cache, output projection, RMS norm, SiLU-gated MLP,
then the final norm and the head — straight through, writing each new key and value into a
preallocated cache column instead of concatenating (the idea of gpt-fast's and vLLM's static
caches). Prefill and scoring keep using the model's forward: with many tokens per call its overhead
does not matter.

The continuous batcher (`batching.py`) uses it for every step when `LeanLlamaStep.unsupported(model)`
is None, and transformers' forward otherwise; tests check both give the same logits.
"""

from __future__ import annotations

from typing import Any

LEAN_MODEL_TYPES = ("llama",)
INT4_ROW_BLOCK = 64


class KVCache:
    """Keys and values of every layer as (B, H, capacity, D) buffers, left-padded, so each step writes
    the new token of every row into the same column `width`. The capacity doubles when full; rows
    join (`merge`), leave (`select`) and all-padding columns go (`drop_left`) by copying, which is
    rare next to steps."""

    def __init__(self, layers: list[tuple[Any, Any]], capacity: int | None = None) -> None:
        import torch

        self.width = layers[0][0].shape[2]
        capacity = max(capacity or 0, self.width + 16)
        self.keys, self.values = [], []
        for k, v in layers:
            kb = k.new_zeros((*k.shape[:2], capacity, k.shape[3]))
            vb = v.new_zeros((*v.shape[:2], capacity, v.shape[3]))
            kb[:, :, :self.width] = k
            vb[:, :, :self.width] = v
            self.keys.append(kb)
            self.values.append(vb)
        self._torch = torch

    @property
    def rows(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def layers(self) -> list[tuple[Any, Any]]:
        """Views of the filled part, (B, H, width, D) per layer."""
        return [(k[:, :, :self.width], v[:, :, :self.width]) for k, v in zip(self.keys, self.values, strict=True)]

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
        """Keep only the rows in `index` (a LongTensor)."""
        self.keys = [k[index] for k in self.keys]
        self.values = [v[index] for v in self.values]

    def drop_left(self, n: int) -> None:
        """Forget the first n columns (padding in every row)."""
        self._rebuild([(k[:, :, n:], v[:, :, n:]) for k, v in self.layers()], self.capacity)

    def merge(self, layers: list[tuple[Any, Any]]) -> tuple[int, int]:
        """Append rows given as (B', H, T', D) per layer; the narrower side is left-padded.
        Returns (columns added to the left of the old rows, to the left of the new rows)."""
        torch = self._torch
        width, new_width = self.width, layers[0][0].shape[2]
        pad_new, pad_old = max(0, width - new_width), max(0, new_width - width)
        merged = [(torch.cat([_left_pad(k_old, pad_old), _left_pad(k_new, pad_new)]),
                   torch.cat([_left_pad(v_old, pad_old), _left_pad(v_new, pad_new)]))
                  for (k_old, v_old), (k_new, v_new) in zip(self.layers(), layers, strict=True)]
        self._rebuild(merged, self.capacity + pad_old)
        return pad_old, pad_new

    def _rebuild(self, layers: list[tuple[Any, Any]], capacity: int) -> None:
        """New buffers of `capacity` holding `layers` (their width becomes this cache's)."""
        rebuilt = KVCache(layers, capacity=capacity)
        self.keys, self.values, self.width = rebuilt.keys, rebuilt.values, rebuilt.width


def _left_pad(t: Any, n: int) -> Any:
    """(B, H, T, D) with n zero positions prepended on the sequence axis."""
    import torch

    if n == 0:
        return t
    return torch.cat([t.new_zeros((*t.shape[:2], n, t.shape[3])), t], dim=2)


def _hooked(module: Any) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


def _call(module: Any) -> Any:
    """The module's forward without nn.Module's call machinery, unless hooks are attached."""
    return module if _hooked(module) else module.forward


def fuse_projections(modules: list[Any]) -> Any:
    """One call for several projections of the same input, checked against them on a random input."""
    import torch

    fused = _fuse(modules)
    if fused is None:
        return None
    first = modules[0]
    weight = getattr(first, "weight", None)
    dtype = weight.dtype if isinstance(weight, torch.Tensor) and weight.is_floating_point() else torch.float32
    device = next(iter(first.buffers()), weight).device
    probe = torch.randn((2, 1, first.in_features), generator=torch.Generator().manual_seed(0)).to(device, dtype)
    with torch.inference_mode():
        got, want = fused(probe).float(), torch.cat([m(probe) for m in modules], dim=-1).float()
    # a layout mistake is off by the size of the values; another summation order is off in the last bits
    if (got - want).abs().max() > 1e-2 * want.abs().max():
        raise RuntimeError("fused projections differ from the layers they fuse")  # a kernel changed its layout
    return fused


def _fuse(modules: list[Any]) -> Any:
    """One matmul computing `cat([m(x) for m in modules], -1)` — q/k/v, or gate/up — or None when
    they cannot be fused (other layer types, hooks, mixed biases). The modules' own weights become
    views of the fused tensor, so the model computes exactly what it did and holds no second copy."""
    import torch
    from torch import nn

    from .int4 import Int4Linear, weight_only_linear

    kinds = {type(m) for m in modules}
    if kinds not in ({nn.Linear}, {Int4Linear}) or any(_hooked(m) for m in modules):
        return None
    if kinds == {nn.Linear} and len(modules) == 1:  # its own forward already is one F.linear: nothing to fuse
        return None
    biases = [m.bias for m in modules]
    if len({b is None for b in biases}) != 1:
        return None
    bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
    sizes = [m.out_features for m in modules]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    if kinds == {nn.Linear}:
        weight = torch.cat([m.weight.detach() for m in modules])
        for m, start, size in zip(modules, starts, sizes, strict=True):
            m.weight = nn.Parameter(weight[start:start + size], requires_grad=False)
        linear = torch.nn.functional.linear
        return lambda x: linear(x, weight, bias)
    # The CPU int4 kernel lays out rows in blocks of 64: packed rows concatenate only in whole blocks.
    if kinds == {Int4Linear} and len({m.group_size for m in modules}) == 1 and all(n % INT4_ROW_BLOCK == 0 for n in sizes):
        packed = torch.cat([m.packed_weight for m in modules])  # rows are packed independently
        scales_and_zeros = torch.cat([m.scales_and_zeros for m in modules], dim=1)
        for m, start, size in zip(modules, starts, sizes, strict=True):
            m.packed_weight = packed[start:start + size]
        group, width, total = modules[0].group_size, modules[0].in_features, sum(sizes)
        kernel = torch._weight_int4pack_mm_for_cpu

        def matmul(rows: Any) -> Any:
            return kernel(rows, packed, group, scales_and_zeros)

        return lambda x: weight_only_linear(x, matmul, width, total, bias)
    return None


def _unfused(modules: list[Any]) -> Any:
    """The projections one by one (layer types that do not fuse: dynamic int8, bitsandbytes), joined."""
    import torch

    calls = [_call(m) for m in modules]
    return lambda x: torch.cat([call(x) for call in calls], dim=-1)


class LeanLlamaStep:
    """One decoding step of a Llama-architecture model: (B, 1) tokens → (B, vocab) logits."""

    @staticmethod
    def unsupported(model: Any) -> str | None:
        """Why this step cannot run `model` (None: it can)."""
        config = getattr(model, "config", None)
        if getattr(config, "model_type", None) not in LEAN_MODEL_TYPES:
            return f"model type {getattr(config, 'model_type', None)!r} is not one of {LEAN_MODEL_TYPES}"
        if getattr(config, "hidden_act", None) != "silu":
            return f"activation {config.hidden_act!r} is not silu"
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(model, "lm_head"):
            return "the module layout is not Llama's"
        for layer in inner.layers:
            attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
            if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling", "head_dim")) or \
                    not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
                return "the module layout is not Llama's"
        return None

    def __init__(self, model: Any) -> None:
        import torch

        reason = self.unsupported(model)
        if reason:
            raise ValueError(f"the lean step cannot run this model: {reason}")
        inner = model.model
        config = model.config
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self._torch = torch
        self.norm = self._norm(inner.norm)
        self.head = _call(model.lm_head)
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.layers = []
        self.fused = 0
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = fuse_projections([attn.q_proj, attn.k_proj, attn.v_proj])
            gate_up = fuse_projections([mlp.gate_proj, mlp.up_proj])
            self.fused += (qkv is not None) + (gate_up is not None)
            qkv = qkv or _unfused([attn.q_proj, attn.k_proj, attn.v_proj])
            gate_up = gate_up or _unfused([mlp.gate_proj, mlp.up_proj])
            split_qkv = [attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features]
            # single projections through the same path: int4 calls the kernel directly, skipping the module
            o_proj = fuse_projections([attn.o_proj]) or _call(attn.o_proj)
            down = fuse_projections([mlp.down_proj]) or _call(mlp.down_proj)
            self.layers.append((self._norm(layer.input_layernorm), qkv, split_qkv, o_proj, attn.scaling,
                                attn.head_dim, self._norm(layer.post_attention_layernorm), gate_up,
                                mlp.up_proj.out_features, down))
        self._F = torch.nn.functional

    def _norm(self, norm: Any) -> Any:
        """LlamaRMSNorm as one kernel in float32 (the same arithmetic); its own forward otherwise."""
        weight, eps, forward = norm.weight, norm.variance_epsilon, norm.forward
        rms_norm, float32, shape = self._torch.nn.functional.rms_norm, self._torch.float32, tuple(norm.weight.shape)
        return lambda x: rms_norm(x, shape, weight, eps) if x.dtype == float32 else forward(x)

    def __call__(self, input_ids: Any, position_ids: Any, mask: Any, cache: KVCache) -> Any:
        """input_ids, position_ids: (B, 1); mask: (B, width + 1) with 1 where a row has a token,
        the new column included; `cache` gets the new keys and values and advances by one."""
        F, cat = self._F, self._torch.cat
        rows = input_ids.shape[0]
        x = self.embed(input_ids)  # (B, 1, hidden)
        cos, sin = self.rotary(x, position_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, 1, head_dim): broadcast over heads
        attn_mask = None if bool(mask.all()) else mask.bool()[:, None, None, :]  # (B, 1, 1, width + 1)
        gqa = self.heads != self.kv_heads
        cache.reserve(1)
        end = cache.width + 1
        for index, (norm_in, qkv, split_qkv, o_proj, scaling, head_dim, norm_post, gate_up, width, down) \
                in enumerate(self.layers):
            # q and k rotated together (transformers' apply_rotary_pos_emb arithmetic, once for both)
            qk, v = qkv(norm_in(x)).split([split_qkv[0] + split_qkv[1], split_qkv[2]], dim=-1)
            qk = qk.view(rows, 1, self.heads + self.kv_heads, head_dim).transpose(1, 2)
            half = head_dim // 2
            qk = qk * cos + cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
            q, k = qk.split([self.heads, self.kv_heads], dim=1)
            v = v.view(rows, 1, self.kv_heads, head_dim).transpose(1, 2)
            cache.append(index, k, v)
            attn = F.scaled_dot_product_attention(q, cache.keys[index][:, :, :end], cache.values[index][:, :, :end],
                                                  attn_mask=attn_mask, scale=scaling, enable_gqa=gqa)
            x = x + o_proj(attn.transpose(1, 2).reshape(rows, 1, self.heads * head_dim))
            gate, up = gate_up(norm_post(x)).split([width, width], dim=-1)
            x = x + down(F.silu(gate) * up)
        cache.advance()
        return self.head(self.norm(x))[:, -1]
