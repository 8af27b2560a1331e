"""A lean decoding step for Llama-architecture models: (B, 1) tokens → (B, vocab) logits.

Transformers' forward serves every case (training, any mask, any cache layout), and for one new
token of a small model most of its time is Python around several hundred tiny kernels: module calls,
mask building, a cache that concatenates a whole new tensor per layer per step. This step does the
same arithmetic with the model's own weights, modules and rotary embedding — embed, per layer RMS
norm, q/k/v projections, RoPE, attention over the cache, output projection, RMS norm, SiLU-gated MLP,
then the final norm and the head — straight through, writing each new key and value into a
preallocated `KVCache` column instead of concatenating. Rows stay 2-D (B, features): with one new
token per row the attention's (B, heads, 1, head_dim) is a view of them, so there are no transposes;
RoPE rotates by a flip of the two halves times a signed sin; the RMS norm is one layer-norm kernel
(see `_norm`). Each operator costs its dispatch whatever it computes, so these count.
Projections come from the kernel table (projection.py); two kernel choices are measured per model at
load (measure.py). Prefill and scoring keep using the model's forward: with many tokens per call its
overhead does not matter.

The continuous batcher (batcher.py) uses this step where `LeanLlamaStep.unsupported(model)` is None
and transformers' forward otherwise; tests check both give the same logits. The layer loop also
exists in C++ (csrc/lean_layers.cpp, built on first use by native.py): the same operators without the
interpreter between them, the same logits bit for bit. Models whose projections it does not know
keep the Python loop. Figures: benchmarks/bench_batching.py, bench_precision.py and the README.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .hooks import forward_of, has_hooks
from .kv_cache import KVCache
from .measure import calibrate_row_padding, matrix_vector_is_faster
from .projection import Projection, projection

LEAN_MODEL_TYPES = ("llama",)


class _Layer(NamedTuple):
    """What one decoder layer's step needs (a tuple: unpacked in the loop at tuple speed)."""

    norm_in: Any
    qkv: Projection
    split_qkv: list[int]  # [q + k width, v width]
    o_proj: Projection
    scaling: float
    norm_post: Any
    gate_up: Projection
    width: int  # of gate and of up
    down: Projection


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
            if attn.head_dim % 2:
                return f"odd head size {attn.head_dim}"
        return None

    def __init__(self, model: Any, row_padding: dict[int, int] | None = None, matrix_vector: bool | None = None,
                 native: Any = None) -> None:
        """`row_padding`: {batch size: rows to pad the batch to}; `matrix_vector`: one row through
        `torch.mv`. Measured on the model's widest layer when None (`calibrate_row_padding`,
        `matrix_vector_is_faster`). `native`: the C++ layer loop (`native.load_native_layers`),
        used when every projection and norm of the model is a kind it knows (`native_reason` says
        why not otherwise); None: the Python loop."""
        import torch

        reason = self.unsupported(model)
        if reason:
            raise ValueError(f"the lean step cannot run this model: {reason}")
        inner = model.model
        config = model.config
        self.embed = forward_of(inner.embed_tokens)  # nn.Embedding, or int4's Int8Embedding
        self.dtype = dtype = inner.norm.weight.dtype  # the residual stream's
        self.rotary = inner.rotary_emb
        self._torch = torch
        self.norm = self._norm(inner.norm)
        self.head = projection([model.lm_head], dtype)
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = inner.layers[0].self_attn.head_dim
        # rotate_half(x) * sin == flip(x as (2, D/2)) * (sin with its first half negated)
        self.sin_sign = torch.tensor([[-1.0], [1.0]], dtype=dtype, device=inner.norm.weight.device)
        self.layers: list[_Layer] = []
        self.fused = 0
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if attn.head_dim != self.head_dim:
                raise ValueError("layers with different head sizes")
            qkv = projection([attn.q_proj, attn.k_proj, attn.v_proj], dtype)
            gate_up = projection([mlp.gate_proj, mlp.up_proj], dtype)
            self.fused += qkv.fused + gate_up.fused
            qk_width = attn.q_proj.out_features + attn.k_proj.out_features
            self.layers.append(_Layer(self._norm(layer.input_layernorm), qkv, [qk_width, attn.v_proj.out_features],
                                      projection([attn.o_proj], dtype), attn.scaling,
                                      self._norm(layer.post_attention_layernorm), gate_up, mlp.up_proj.out_features,
                                      projection([mlp.down_proj], dtype)))
        # the widest plain float weight (fused gate/up; the head where the layers are int4 or oneDNN-packed)
        widest = next((p.dense_weight for p in (self.layers[0].gate_up, self.head) if p.dense_weight is not None), None)
        self.row_padding = row_padding if row_padding is not None else \
            ({} if widest is None else calibrate_row_padding(widest))
        if matrix_vector if matrix_vector is not None else (widest is not None and matrix_vector_is_faster(widest)):
            for p in self._projections():
                p.use_matrix_vector()
        # one new token's attention over the cache on the AVX2 kernel (avx2.py) where it runs: float32 rows,
        # a head size it takes, an AVX2 CPU; else scaled_dot_product_attention
        from .avx2 import avx2_kernels_pay

        self.attention = torch.ops.aigc.decode_attention if dtype == torch.float32 and self.head_dim % 8 == 0 and \
            self.head_dim <= 256 and avx2_kernels_pay() else None
        self.native, self.native_reason, self._native_args = None, "not requested", ()
        if native is not None:
            self._native_args, self.native_reason = self._native_arguments()
            self.native = native if not self.native_reason else None

    def _native_arguments(self) -> tuple[tuple[Any, Any, Any], str]:
        """The layers' tensors, integers and floats laid out as csrc/lean_layers.cpp reads them, or
        ((), why the C++ loop cannot run these layers)."""
        tensors: list[Any] = []
        ints: list[int] = []
        floats: list[float] = []
        for layer in self.layers:
            norms = [getattr(layer.norm_in, "native_args", None), getattr(layer.norm_post, "native_args", None)]
            if None in norms or any(weight.dtype != self.dtype for weight, _ in norms):
                return (), "a norm with hooks or in another dtype than the residual rows"
            tensors += [weight for weight, _ in norms]
            for p in (layer.qkv, layer.o_proj, layer.gate_up, layer.down):
                parts = p.native_parts()
                if parts is None:
                    return (), "a projection the C++ loop does not know (dynamic int8, bitsandbytes, hooks)"
                kind, group, triples = parts
                for triple in triples:
                    tensors += triple
                ints += [kind, group, len(triples)]
            ints += [*layer.split_qkv, layer.width]
            floats += [norms[0][1], norms[1][1], layer.scaling]
        ints.append(1 if self.attention is not None else 0)  # which attention (see `attention`)
        return (tensors, ints, floats), ""

    def _projections(self) -> list[Projection]:
        return [self.head] + [p for layer in self.layers for p in (layer.qkv, layer.o_proj, layer.gate_up, layer.down)]

    def _norm(self, norm: Any) -> Any:
        """LlamaRMSNorm of rows (B, n) in its weight's dtype, x · rsqrt(mean(x²) + eps) · w, as one layer norm of
        [x, −x]: its mean is 0 and its variance mean(x²), so the first half is exactly the RMS norm.
        PyTorch's CPU `rms_norm` is a composite of ~8 operators where the layer norm is one kernel, and a
        step normalizes twice per layer. (In bfloat16 it rounds once where transformers rounds twice.)
        Other inputs: the module's forward."""
        if has_hooks(norm):
            return norm
        torch = self._torch
        weight, eps, forward = norm.weight.detach(), norm.variance_epsilon, norm.forward
        n = weight.shape[-1]
        doubled, shape, dtype = torch.cat([weight, weight]), (2 * n,), weight.dtype
        sign = torch.tensor([[1.0], [-1.0]], dtype=dtype, device=weight.device)  # (2, 1): rows of x and −x
        layer_norm, mul = torch.layer_norm, torch.mul

        def rms_norm(x: Any) -> Any:
            if x.dtype != dtype or x.dim() != 2:
                return forward(x)
            # contiguous: a kernel taking it as is (int4 with bfloat16 activations) needs it; one row already is
            return layer_norm(mul(x.unsqueeze(1), sign).view(x.shape[0], 2 * n), shape, doubled, None, eps).narrow(
                1, 0, n).contiguous()

        rms_norm.native_args = (doubled, eps)  # what the C++ loop needs to do the same
        return rms_norm

    def __call__(self, input_ids: Any, position_ids: Any, mask: Any, cache: KVCache) -> Any:
        """input_ids, position_ids: (B, 1); mask: (B, width + 1) with 1 where a row has a token,
        the new column included; `cache` gets the new keys and values and advances by one.
        Rows are 2-D (B, features) throughout: with one new token per row, (B, heads, 1, head_dim)
        is a view of them, so no transposes."""
        torch = self._torch
        rows, heads, head_dim = input_ids.shape[0], self.heads, self.head_dim
        x = self.embed(input_ids.view(rows))  # (B, hidden)
        padded = self.row_padding.get(rows, rows)
        attn_rows = None
        if padded > rows:  # the matmuls run on `padded` rows of which the first `rows` are real
            x = torch.cat([x, x.new_zeros((padded - rows, x.shape[1]))])
            attn_rows = x.new_zeros((padded, heads * head_dim))  # the output projection's input; padding stays 0
        cos, sin = self.rotary(x, position_ids)  # (B, 1, head_dim)
        halves = (rows, 1, 2, head_dim // 2)
        cos, sin = cos.view(halves), sin.view(halves) * self.sin_sign
        attn_mask = None if bool(mask.all()) else mask.bool()[:, None, None, :]  # (B, 1, 1, width + 1)
        cache.reserve(1)
        views = cache.step_views()  # key columns, value columns, keys, values
        if self.native is not None:  # `_python_layers` in C++, same operators (csrc/lean_layers.cpp)
            x = self.native(x, cos, sin, attn_mask, *views, *self._native_args, heads, self.kv_heads, head_dim, rows,
                            attn_rows)
        else:
            x = self._python_layers(x, cos, sin, attn_mask, *views, rows, attn_rows)
        cache.advance()
        head = self.head
        logits = (head.one_row if padded == 1 else head.call)(self.norm(x).to(head.input_dtype))
        return logits[:rows] if padded > rows else logits

    def _python_layers(self, x: Any, cos: Any, sin: Any, attn_mask: Any, key_columns: Any, value_columns: Any,
                       keys: Any, values: Any, rows: int, attn_rows: Any) -> Any:
        """The decoder layers on residual rows x (padded rows, hidden), the first `rows` real (see `__call__`);
        csrc/lean_layers.cpp is the same loop in C++."""
        torch = self._torch
        sdpa, silu, dtype, attention = torch.nn.functional.scaled_dot_product_attention, torch.nn.functional.silu, \
            self.dtype, self.attention
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        padded = x.shape[0]
        one, gqa = padded == 1, heads != kv_heads
        qk_shape, v_shape, qk_heads = (rows, heads + kv_heads, 2, head_dim // 2), (rows, kv_heads, 1, head_dim), \
            [heads, kv_heads]
        for index, (norm_in, qkv, split_qkv, o_proj, scaling, norm_post, gate_up, width, down) in enumerate(self.layers):
            qk, v = (qkv.one_row if one else qkv.call)(norm_in(x).to(qkv.input_dtype)).split_with_sizes(split_qkv, 1)
            if padded > rows:
                qk, v = qk[:rows], v[:rows]
            qk = qk.view(qk_shape)
            # transformers' apply_rotary_pos_emb, q and k at once: qk * cos + rotate_half(qk) * sin
            qk = qk * cos + qk.flip(2) * sin
            q, k = qk.view(rows, heads + kv_heads, 1, head_dim).split_with_sizes(qk_heads, 1)
            key_columns[index].copy_(k)
            value_columns[index].copy_(v.view(v_shape))
            if attention is not None:
                attn = attention(q, keys[index], values[index], attn_mask, scaling)
            else:
                attn = sdpa(q, keys[index], values[index], attn_mask=attn_mask, scale=scaling, enable_gqa=gqa)
            attn = attn.reshape(rows, heads * head_dim)
            if padded > rows:
                attn_rows[:rows] = attn
                attn = attn_rows
            x = x + (o_proj.one_row if one else o_proj.call)(attn.to(o_proj.input_dtype))
            gate_and_up = (gate_up.one_row if one else gate_up.call)(norm_post(x).to(gate_up.input_dtype))
            gate, up = gate_and_up.to(dtype).split_with_sizes([width, width], 1)
            x = x + (down.one_row if one else down.call)((silu(gate) * up).to(down.input_dtype))
        return x
