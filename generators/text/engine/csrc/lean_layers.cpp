// The decoder layers of the lean Llama decoding step (step.py, `LeanLlamaStep`) as one C++ call.
//
// The same ATen operators as the Python loop, in the same order with the same arguments, so the
// results are identical bit for bit (the tests compare them); what goes away is the Python
// interpreter between ~30 small operators per layer (figures: benchmarks/ and the README).
//
// Registered as torch.ops.aigc.lean_layers (TORCH_LIBRARY, no Python headers needed); built on
// first use by generators/text/engine/native.py with torch.utils.cpp_extension.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales);  // avx2_kernels.cpp
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& mask, double scale);  // avx2_kernels.cpp

#include <optional>
#include <string_view>
#include <vector>

namespace {

using at::Tensor;

// Projection kinds, as projection.py numbers them (NATIVE_*). Every projection is `parts` triples
// (a, b, bias) of the tensor list, their outputs concatenated.
constexpr int64_t KIND_INT4 = 0;    // a: packed int4 weight, b: scales and zeros; `group` = group size
constexpr int64_t KIND_LINEAR = 1;  // a: weight (N, K)
constexpr int64_t KIND_MV = 2;      // a: weight (N, K); one row through at::mv
constexpr int64_t KIND_ONEDNN = 3;  // a: weight packed for oneDNN (onednn.py), through mkldnn::_linear_pointwise
constexpr int64_t KIND_INT4_AVX2 = 4;  // a: int4 weight, b: scales, in avx2_kernels.cpp's layout (avx2.py)

constexpr int64_t INTS_PER_LAYER = 15;   // (kind, group, parts) x 4 (qkv, o, gate_up, down), q + k width, v width, gate/up width
constexpr int64_t FLOATS_PER_LAYER = 3;  // eps in, eps post, attention scaling

at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, std::string_view,
                            c10::List<std::optional<at::Scalar>>, std::optional<std::string_view>)>();
  return op.call(x, weight, bias, "none", c10::List<std::optional<at::Scalar>>(), std::string_view(""));
}

// LlamaRMSNorm as a layer norm of [x, -x] (see LeanLlamaStep._norm), contiguous.
Tensor rms_norm(const Tensor& x, const Tensor& doubled, const Tensor& sign, double eps) {
  const int64_t n = x.size(1);
  auto both = at::mul(x.unsqueeze(1), sign).view({x.size(0), 2 * n});
  return at::layer_norm(both, {2 * n}, doubled, {}, eps).narrow(1, 0, n).contiguous();
}

// One part of a Projection of projection.py: its call for `one` row or a batch, the input converted as it does.
Tensor project(const Tensor& input, int64_t kind, int64_t group, const Tensor& a, const std::optional<Tensor>& b,
               const std::optional<Tensor>& bias, bool one, at::ScalarType dtype) {
  if (kind == KIND_INT4) {
    auto out = at::_weight_int4pack_mm_for_cpu(input.to(at::kBFloat16), a, group, b.value());
    return bias.has_value() ? at::add(out.to(dtype), *bias) : out;
  }
  if (kind == KIND_INT4_AVX2) {  // float32 out; back to the rows' dtype where they are not float32
    auto out = int4_linear(input, a, b.value());
    if (dtype != at::kFloat) out = out.to(dtype);
    return bias.has_value() ? at::add(out, *bias) : out;
  }
  if (kind == KIND_ONEDNN) {
    return onednn_linear(input.to(at::kBFloat16), a, bias);
  }
  auto x = input.to(a.scalar_type());
  if (kind == KIND_MV && one) {
    auto out = at::mv(a, x.select(0, 0));
    return (bias.has_value() ? at::add(out, *bias) : out).unsqueeze(0);
  }
  return at::linear(x, a, bias);
}

// x: (padded rows, hidden) residual rows, the first `rows` real; cos/sin: (rows, 1, 2, head_dim / 2)
// with sin's first half negated; mask: (rows, 1, 1, width + 1) or None; key/value columns and
// keys/values: the cache's step views per layer; attn_rows: (padded, heads * head_dim) zeros when
// padded > rows. Returns the residual rows after the last layer.
Tensor lean_layers(Tensor x, const Tensor& cos, const Tensor& sin, const std::optional<Tensor>& mask,
                   at::TensorList key_columns, at::TensorList value_columns, at::TensorList keys,
                   at::TensorList values, const c10::List<std::optional<Tensor>>& tensors, at::IntArrayRef ints,
                   at::ArrayRef<double> floats, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t rows,
                   const std::optional<Tensor>& attn_rows) {
  const int64_t layers = static_cast<int64_t>(keys.size());
  // per layer INTS_PER_LAYER, then which attention: 0 scaled_dot_product_attention, 1 decode_attention (AVX2)
  TORCH_CHECK(static_cast<int64_t>(ints.size()) == layers * INTS_PER_LAYER + 1, "lean_layers: ints per layer");
  const bool avx2_attention = ints.back() == 1;
  TORCH_CHECK(static_cast<int64_t>(floats.size()) == layers * FLOATS_PER_LAYER, "lean_layers: floats per layer");
  const at::ScalarType dtype = x.scalar_type();
  const int64_t padded = x.size(0);
  const bool one = padded == 1;
  const bool gqa = heads != kv_heads;
  int64_t cursor = 0;  // into `tensors`: each layer's two norms, then its projections' parts
  auto next = [&]() {
    TORCH_CHECK(cursor < static_cast<int64_t>(tensors.size()), "lean_layers: too few tensors");
    return tensors.get(cursor++);
  };
  const auto sign = at::tensor({1.0, -1.0}).to(tensors.get(0).value().options()).view({2, 1});  // the norms' dtype (= x's)
  for (int64_t layer = 0; layer < layers; ++layer) {
    const int64_t* k = ints.data() + layer * INTS_PER_LAYER;
    const double* f = floats.data() + layer * FLOATS_PER_LAYER;
    const Tensor norm_in = next().value();
    const Tensor norm_post = next().value();
    auto proj = [&](int64_t index, const Tensor& input) {  // index 0..3: qkv, o, gate_up, down
      const int64_t kind = k[3 * index], group = k[3 * index + 1], parts = k[3 * index + 2];
      std::vector<Tensor> outputs;
      for (int64_t part = 0; part < parts; ++part) {
        const Tensor a = next().value();
        const auto b = next();
        const auto bias = next();
        outputs.push_back(project(input, kind, group, a, b, bias, one, dtype));
      }
      return parts == 1 ? outputs[0] : at::cat(outputs, -1);
    };
    auto qkv = proj(0, rms_norm(x, norm_in, sign, f[0]));
    auto qkv_parts = at::split_with_sizes(qkv, {k[12], k[13]}, 1);
    auto qk = qkv_parts[0];
    auto v = qkv_parts[1];
    if (padded > rows) {
      qk = qk.narrow(0, 0, rows);
      v = v.narrow(0, 0, rows);
    }
    qk = qk.view({rows, heads + kv_heads, 2, head_dim / 2});
    qk = at::add(at::mul(qk, cos), at::mul(qk.flip({2}), sin));
    auto q_k = at::split_with_sizes(qk.view({rows, heads + kv_heads, 1, head_dim}), {heads, kv_heads}, 1);
    key_columns[layer].copy_(q_k[1]);
    value_columns[layer].copy_(v.view({rows, kv_heads, 1, head_dim}));
    auto attn = (avx2_attention ? decode_attention(q_k[0], keys[layer], values[layer], mask, f[2])
                                : at::scaled_dot_product_attention(q_k[0], keys[layer], values[layer], mask, 0.0, false,
                                                                   f[2], gqa))
                    .reshape({rows, heads * head_dim});
    if (padded > rows) {
      attn_rows.value().narrow(0, 0, rows).copy_(attn);
      attn = attn_rows.value();
    }
    x = at::add(x, proj(1, attn));
    auto gate_up = proj(2, rms_norm(x, norm_post, sign, f[1])).to(dtype);
    auto gate_and_up = at::split_with_sizes(gate_up, {k[14], k[14]}, 1);
    x = at::add(x, proj(3, at::mul(at::silu(gate_and_up[0]), gate_and_up[1])));
  }
  TORCH_CHECK(cursor == static_cast<int64_t>(tensors.size()), "lean_layers: too many tensors");
  return x;
}

}  // namespace

TORCH_LIBRARY(aigc, m) {
  m.def(
      "lean_layers(Tensor x, Tensor cos, Tensor sin, Tensor? mask, Tensor[] key_columns, Tensor[] value_columns, "
      "Tensor[] keys, Tensor[] values, Tensor?[] tensors, int[] ints, float[] floats, int heads, int kv_heads, "
      "int head_dim, int rows, Tensor? attn_rows) -> Tensor");
}

TORCH_LIBRARY_IMPL(aigc, CompositeExplicitAutograd, m) { m.impl("lean_layers", &lean_layers); }
