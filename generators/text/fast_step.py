"""A lean decoding step for Llama-architecture models, and the KV cache it writes into.

Transformers' forward serves every case (training, any mask, any cache layout), and for one new
token of a small model most of its time is Python around ~700 tiny kernels: module calls, mask
building, a cache that concatenates a whole new tensor per layer per step. Measured with cProfile
on SmolLM2-135M int4, one stream: 9 ms of kernels in 28 ms per token. This step does the same
arithmetic with the model's own weights, modules and rotary embedding — embed, per layer RMS norm,
q/k/v projections, RoPE, attention over the cache, output projection, RMS norm, SiLU-gated MLP,
then the final norm and the head — straight through, writing each new key and value into a
preallocated cache column instead of concatenating (the idea of gpt-fast's and vLLM's static
caches). Rows stay 2-D (B, features): with one new token per row the attention's (B, heads, 1,
head_dim) is a view of them, so there are no transposes; int4 outputs stay bfloat16 until the next
operator promotes them; RoPE rotates by a flip of the two halves times a signed sin; the RMS norm is
one layer-norm kernel (see `_norm`); the cache hands out every layer's views in four operators.
Each operator costs ~2 µs of dispatch whatever it computes, so these count: measured on SmolLM2-135M
int4, one stream, interleaved on one model, 97 → 119 tok/s (float32 and bfloat16 unchanged: their
matmuls dominate). Two kernel choices are measured per model at load, because they are facts of the
CPU and its BLAS, not of the model: one row through `torch.mv` (bfloat16 here: 37 → 52 tok/s) and
float batches padded to 16 rows (MKL's sgemm: 14 rows 80 → 57 ms per step). Prefill and scoring keep
using the model's forward: with many tokens per call its overhead does not matter.

The continuous batcher (`batching.py`) uses it for every step when `LeanLlamaStep.unsupported(model)`
is None, and transformers' forward otherwise; tests check both give the same logits. The layer loop
also exists in C++ (`native/lean_layers.cpp`, built on first use by `native_step.py`): the same
operators without the interpreter between them, the same logits bit for bit (SmolLM2 int4, one
stream: 6.4 → 5.4 ms per step). Models whose layers it does not know keep the Python loop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

LEAN_MODEL_TYPES = ("llama",)
INT4_ROW_BLOCK = 64


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
        merged = [(torch.cat([_left_pad(k_old, pad_old), _left_pad(k_new, pad_new)]),
                   torch.cat([_left_pad(v_old, pad_old), _left_pad(v_new, pad_new)]))
                  for (k_old, v_old), (k_new, v_new) in zip(self.layers(), layers, strict=True)]
        self._rebuild(merged, self.capacity + pad_old)
        return pad_old, pad_new

    def _rebuild(self, layers: list[tuple[Any, Any]], capacity: int) -> None:
        """New buffers of `capacity` holding `layers` (their width becomes this cache's)."""
        rebuilt = KVCache(layers, capacity=capacity)
        self.keys, self.values, self.width, self._stacked = rebuilt.keys, rebuilt.values, rebuilt.width, rebuilt._stacked


def _left_pad(t: Any, n: int) -> Any:
    """(B, H, T, D) with n zero positions prepended on the sequence axis."""
    import torch

    if n == 0:
        return t
    return torch.cat([t.new_zeros((*t.shape[:2], n, t.shape[3])), t], dim=2)


def has_hooks(module: Any) -> bool:
    """Forward or backward hooks on `module`: then it must be called, not bypassed."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


def _call(module: Any) -> Any:
    """The module's forward without nn.Module's call machinery, unless hooks are attached."""
    return module if has_hooks(module) else module.forward


class Projection:
    """One or several linear layers of the same input as one call on 2-D rows: `input_dtype` is what the
    rows must be given in (bfloat16 for the int4 kernel, the model's dtype otherwise) and the output
    comes in whatever dtype the kernel produces — the next operator (an add to the float32 residual,
    the RoPE multiply) promotes it exactly, so no conversion of its own is spent."""

    def __init__(self, call: Any, input_dtype: Any, fused: bool, weight: Any = None, bias: Any = None,
                 packed: Any = None, scales_and_zeros: Any = None, group: int = 0, onednn: list | None = None) -> None:
        self.call, self.input_dtype, self.fused = call, input_dtype, fused
        self.weight, self.bias = weight, bias  # of a plain float matmul (weight None for other kinds)
        self.packed, self.scales_and_zeros, self.group = packed, scales_and_zeros, group  # of an int4 kernel call
        self.onednn = onednn  # [(oneDNN-packed weight, bias or None)] of `PackedLinear` parts, outputs concatenated
        self.one_row = call  # the call for a batch of one row (see `use_matrix_vector`)
        self.matrix_vector = False

    def use_matrix_vector(self) -> None:
        """One row through `torch.mv` (matrix × vector) instead of a one-row matmul."""
        import torch

        weight, bias, mv = self.weight, self.bias, torch.mv
        self.matrix_vector = True
        if bias is None:
            self.one_row = lambda x: mv(weight, x[0]).unsqueeze(0)
        else:
            self.one_row = lambda x: (mv(weight, x[0]) + bias).unsqueeze(0)


# projection kinds of the C++ layer loop (native/lean_layers.cpp)
NATIVE_INT4, NATIVE_LINEAR, NATIVE_MV, NATIVE_ONEDNN = 0, 1, 2, 3

PAD_ROWS = 16
MEASURE_MIN_ELEMENTS = 1 << 20  # smaller matrices: not worth a kernel choice, and their timings are noise


def _worth_measuring(weight: Any) -> bool:
    return weight.numel() >= MEASURE_MIN_ELEMENTS and weight.device.type == "cpu"


def matrix_vector_is_faster(weight: Any, margin: float = 0.9) -> bool:
    """Whether one row goes faster through `torch.mv` than through a one-row matmul. bfloat16 here:
    oneDNN's matmul for one row takes 16.5 ms for SmolLM2's layers and `mv` 11.6 (the head 2.66 vs
    1.54 ms); float32 ties (both MKL). Measured on the layer at load, as `calibrate_row_padding`."""
    import torch

    if not _worth_measuring(weight):
        return False
    row = torch.randn((1, weight.shape[1]), generator=torch.Generator().manual_seed(0)).to(weight.dtype)
    linear, mv = torch.nn.functional.linear, torch.mv
    return _best_seconds(lambda: mv(weight, row[0])) < margin * _best_seconds(lambda: linear(row, weight))


def _best_seconds(call: Any, repeats: int = 3) -> float:
    """Best of `repeats` timings of `call()` after one untimed call."""
    import time

    import torch

    best = float("inf")
    with torch.inference_mode():
        call()
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - start)
    return best


def calibrate_row_padding(weight: Any, margin: float = 0.9) -> dict[int, int]:
    """{rows: PAD_ROWS} for the batch sizes whose float matmul with `weight` is faster when padded to
    16 rows. MKL's sgemm on this project's AVX-512 machine runs fewer than 16 rows through a kernel
    that costs about one more pass over the weights per 3 rows, and 16 or more through a blocked GEMM:
    SmolLM2's float32 matmuls of one step take 47 ms for 16 rows, 48 for 8 and 67 for 14 (the head
    alone 8.6 ms for 16, 17.9 for 14). Measured on the layer itself (a few ms at load, best of three),
    because other CPUs and BLAS libraries switch elsewhere or not at all (bfloat16 here: never).
    Small matrices are not worth it and their timings are noise: no padding."""
    import torch

    if not _worth_measuring(weight):
        return {}
    rows = torch.randn((PAD_ROWS, weight.shape[1]), generator=torch.Generator().manual_seed(0)).to(weight.dtype)
    linear = torch.nn.functional.linear
    padded = _best_seconds(lambda: linear(rows, weight))
    return {m: PAD_ROWS for m in range(2, PAD_ROWS) if padded < margin * _best_seconds(lambda m=m: linear(rows[:m], weight))}


def fuse_projections(modules: list[Any], dtype: Any) -> Projection | None:
    """One call for several projections of the same input, checked against them on a random input;
    None when they cannot be fused (other layer types, hooks, mixed biases). `dtype`: the model's."""
    import torch

    fused = _fuse(modules, dtype)
    if fused is None:
        return None
    first = modules[0]
    device = next(iter(first.buffers()), getattr(first, "weight", None)).device
    probe = torch.randn((2, first.in_features), generator=torch.Generator().manual_seed(0)).to(device, dtype)
    with torch.inference_mode():
        got = fused.call(probe.to(fused.input_dtype)).float()
        want = torch.cat([m(probe) for m in modules], dim=-1).float()
    # a layout mistake is off by the size of the values; another summation order is off in the last bits
    if (got - want).abs().max() > 1e-2 * want.abs().max():
        raise RuntimeError("fused projections differ from the layers they fuse")  # a kernel changed its layout
    return fused


def _fuse(modules: list[Any], dtype: Any) -> Projection | None:
    """One matmul computing `cat([m(x) for m in modules], -1)` — q/k/v, or gate/up. The modules' own
    weights become views of the fused tensor, so the model computes exactly what it did and holds no
    second copy. A single int4 layer goes through too: it calls the kernel without the module's
    conversions."""
    import torch
    from torch import nn

    from .int4 import Int4Linear

    kinds = {type(m) for m in modules}
    if kinds not in ({nn.Linear}, {Int4Linear}) or any(has_hooks(m) for m in modules):
        return None
    if kinds == {nn.Linear} and len(modules) == 1:  # one F.linear on its own weight: nothing copied
        weight, bias, linear = modules[0].weight, modules[0].bias, torch.nn.functional.linear
        return Projection(lambda x: linear(x, weight, bias), weight.dtype, fused=False, weight=weight, bias=bias)
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
        return Projection(lambda x: linear(x, weight, bias), weight.dtype, fused=True, weight=weight, bias=bias)
    # The CPU int4 kernel lays out rows in blocks of 64: packed rows concatenate only in whole blocks.
    if kinds == {Int4Linear} and len({m.group_size for m in modules}) == 1 and all(n % INT4_ROW_BLOCK == 0 for n in sizes):
        packed = torch.cat([m.packed_weight for m in modules])  # rows are packed independently
        scales_and_zeros = torch.cat([m.scales_and_zeros for m in modules], dim=1)
        for m, start, size in zip(modules, starts, sizes, strict=True):
            m.packed_weight = packed[start:start + size]
        group, kernel = modules[0].group_size, torch._weight_int4pack_mm_for_cpu
        kernel_args = {"packed": packed, "scales_and_zeros": scales_and_zeros, "group": group}
        if bias is None:
            return Projection(lambda x: kernel(x, packed, group, scales_and_zeros), torch.bfloat16, fused=len(modules) > 1,
                              **kernel_args)
        bias = bias.to(dtype)  # the module adds its bias after converting back to the model's dtype
        return Projection(lambda x: kernel(x, packed, group, scales_and_zeros).to(dtype) + bias, torch.bfloat16,
                          fused=len(modules) > 1, bias=bias, **kernel_args)
    return None


def _onednn(modules: list[Any]) -> Projection | None:
    """`PackedLinear` layers (bfloat16 weights packed for oneDNN, see onednn.py): packed weights do not
    concatenate, so several (q/k/v, gate/up) are one call each, outputs joined."""
    import torch

    from .onednn import PackedLinear

    if any(type(m) is not PackedLinear or has_hooks(m) for m in modules):
        return None
    parts = [(m.packed_weight, m.bias) for m in modules]
    pointwise, cat = torch.ops.mkldnn._linear_pointwise, torch.cat
    if len(parts) == 1:
        (weight, bias), = parts
        call = lambda x: pointwise(x, weight, bias, "none", [], "")  # noqa: E731
    else:
        call = lambda x: cat([pointwise(x, weight, bias, "none", [], "") for weight, bias in parts], dim=-1)  # noqa: E731
    return Projection(call, torch.bfloat16, fused=False, onednn=parts)


def _one_by_one(modules: list[Any], dtype: Any) -> Projection:
    """The projections one by one (layer types that do not fuse: dynamic int8, bitsandbytes), joined."""
    import torch

    calls = [_call(m) for m in modules]
    if len(calls) == 1:
        return Projection(calls[0], dtype, fused=False)
    return Projection(lambda x: torch.cat([call(x) for call in calls], dim=-1), dtype, fused=False)


def projection(modules: list[Any], dtype: Any) -> Projection:
    return fuse_projections(modules, dtype) or _onednn(modules) or _one_by_one(modules, dtype)


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
        `matrix_vector_is_faster`). `native`: the C++ layer loop (`native_step.load_native_layers`),
        used when every projection and norm of the model is a kind it knows (`native_reason` says
        why not otherwise); None: the Python loop."""
        import torch

        reason = self.unsupported(model)
        if reason:
            raise ValueError(f"the lean step cannot run this model: {reason}")
        inner = model.model
        config = model.config
        self.embed = _call(inner.embed_tokens)  # nn.Embedding, or int4's Int8Embedding
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
        widest = next((p.weight for p in (self.layers[0].gate_up, self.head) if p.weight is not None), None)
        self.row_padding = row_padding if row_padding is not None else \
            ({} if widest is None else calibrate_row_padding(widest))
        if matrix_vector if matrix_vector is not None else (widest is not None and matrix_vector_is_faster(widest)):
            for p in self._projections():
                if p.weight is not None:
                    p.use_matrix_vector()
        self.native, self.native_reason, self._native_args = None, "not requested", ()
        if native is not None:
            self._native_args, self.native_reason = self._native_arguments()
            self.native = native if not self.native_reason else None

    def _native_arguments(self) -> tuple[tuple[Any, Any, Any], str]:
        """The layers' tensors, integers and floats laid out as native/lean_layers.cpp reads them, or
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
                if p.packed is not None:
                    tensors += [p.packed, p.scales_and_zeros, p.bias]
                    ints += [NATIVE_INT4, p.group, 1]
                elif p.weight is not None:
                    tensors += [p.weight, None, p.bias]
                    ints += [NATIVE_MV if p.matrix_vector else NATIVE_LINEAR, 0, 1]
                elif p.onednn is not None:
                    for weight, bias in p.onednn:
                        tensors += [weight, None, bias]
                    ints += [NATIVE_ONEDNN, 0, len(p.onednn)]
                else:
                    return (), "a projection the C++ loop does not know (dynamic int8, bitsandbytes, hooks)"
            ints += [*layer.split_qkv, layer.width]
            floats += [norms[0][1], norms[1][1], layer.scaling]
        return (tensors, ints, floats), ""

    def _projections(self) -> list[Projection]:
        return [self.head] + [p for layer in self.layers for p in (layer.qkv, layer.o_proj, layer.gate_up, layer.down)]

    def _norm(self, norm: Any) -> Any:
        """LlamaRMSNorm of rows (B, n) in its weight's dtype, x · rsqrt(mean(x²) + eps) · w, as one layer norm of
        [x, −x]: its mean is 0 and its variance mean(x²), so the first half is exactly the RMS norm.
        PyTorch's CPU `rms_norm` is a composite of ~8 operators (7.6 µs per call for one row here,
        the layer norm kernel 1.7 µs), and a step normalizes 61 times. (In bfloat16 it rounds once
        where transformers rounds twice.) Other inputs: the module's forward."""
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
        if self.native is not None:  # `_python_layers` in C++, same operators (native/lean_layers.cpp)
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
        native/lean_layers.cpp is the same loop in C++."""
        torch = self._torch
        sdpa, silu, dtype = torch.nn.functional.scaled_dot_product_attention, torch.nn.functional.silu, self.dtype
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
