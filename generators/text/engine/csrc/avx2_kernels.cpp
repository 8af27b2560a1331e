// Kernels for AVX2 CPUs: weight-only int4 and int8 matmuls (float32 rows × quantized weights → float32
// rows) and the attention of one new token per row over the KV cache.
//
// PyTorch's CPU int4 kernel (`_weight_int4pack_mm_for_cpu`) has its fast path for AVX-512; on an
// AVX2-only CPU it computes a batch of 8–16 rows barely faster than 8–16 single rows, which is what
// keeps a continuous batch from scaling there (benchmarks/bench_int4_kernel.py). These kernels
// unpack each weight once per block of up to 8 rows into a float32 vector and multiply it into 8
// accumulators with FMAs, so a batch of rows shares one read and one unpacking of the weights.
//
// Layouts (made by generators/text/engine/avx2.py, which also holds the Python reference):
//   int4: qweight int32 (N/8, K/32, 32): tile t (output columns 8t..8t+7), group g (inputs 32g..32g+31),
//         word k holds column 8t+j's 4-bit integer for input 32g+k in bits 4j..4j+3;
//         scales bfloat16 (N/8, K/32, 16): the tile's 8 scales, then its 8 zeros; w = (q - 8) * scale + zero
//         (the grid of int4.py's `quantize_weight`, so the same weights as `Int4Linear`).
//   int8: qweight int8 (N/8, K, 8): tile t, input k, column 8t+j; scales bfloat16 (N/8, 8): w = q * scale.
// Attention (`decode_attention`): what scaled_dot_product_attention computes for one query per row (a
// decoding step), grouped-query heads and a padding mask included, in float32. PyTorch's CPU flash kernel
// is built for long queries: for one it spent ~0.45 ms a layer on 16 rows × 200 cached tokens, several
// times the arithmetic (bench: the README's batching section). Here each (row, key/value head) is one task:
// scores of its query heads against every cached key (FMAs over the head size), PyTorch's softmax, then
// the weighted sum of the values.
// The functions carry `target("avx2,fma")`, so the library builds with the default flags and every other
// function of it runs on any x86-64; callers check `quant_kernels_supported()` first.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>

namespace {

constexpr int64_t TILE = 8;    // output columns per tile: one AVX2 vector of floats
constexpr int64_t GROUP = 32;  // int4 inputs per scale
constexpr int MAX_ROWS = 8;    // rows per pass: 8 accumulators, the weight vector and the broadcasts fit the 16 registers

bool supported() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

#define AVX2_FMA __attribute__((target("avx2,fma")))

AVX2_FMA inline __m256 bfloat16x8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// One int4 tile for ROWS rows: out[r][0..8) = sum_k x[r][k] * w[k][tile column].
template <int ROWS>
AVX2_FMA void int4_tile(const float* x, int64_t ldx, const uint32_t* q, const uint16_t* sz, int64_t groups,
                        float* out, int64_t ldo) {
  __m256 acc[ROWS];
  _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; ++r) acc[r] = _mm256_setzero_ps();
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i low4 = _mm256_set1_epi32(15);
  const __m256 eight = _mm256_set1_ps(8.0f);
  for (int64_t g = 0; g < groups; ++g) {
    const __m256 scale = bfloat16x8(sz + g * 2 * TILE);
    const __m256 offset = _mm256_fnmadd_ps(eight, scale, bfloat16x8(sz + g * 2 * TILE + TILE));  // zero - 8 scale
    const uint32_t* qg = q + g * GROUP;
    const float* xg = x + g * GROUP;
    _Pragma("GCC unroll 4") for (int k = 0; k < GROUP; ++k) {
      const __m256i qi = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(qg[k])), shifts), low4);
      const __m256 w = _mm256_fmadd_ps(_mm256_cvtepi32_ps(qi), scale, offset);
      _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; ++r) acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(xg[r * ldx + k]), w, acc[r]);
    }
  }
  _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; ++r) _mm256_storeu_ps(out + r * ldo, acc[r]);
}

// One int8 tile for ROWS rows.
template <int ROWS>
AVX2_FMA void int8_tile(const float* x, int64_t ldx, const int8_t* q, const uint16_t* scales, int64_t k_size,
                        float* out, int64_t ldo) {
  __m256 acc[ROWS];
  _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t k = 0; k < k_size; ++k) {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + k * TILE));
    const __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
    _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; ++r) acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(x[r * ldx + k]), w, acc[r]);
  }
  const __m256 scale = bfloat16x8(scales);
  _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; ++r) _mm256_storeu_ps(out + r * ldo, _mm256_mul_ps(acc[r], scale));
}

using Int4Tile = void (*)(const float*, int64_t, const uint32_t*, const uint16_t*, int64_t, float*, int64_t);
using Int8Tile = void (*)(const float*, int64_t, const int8_t*, const uint16_t*, int64_t, float*, int64_t);
constexpr Int4Tile INT4_TILES[MAX_ROWS + 1] = {nullptr, int4_tile<1>, int4_tile<2>, int4_tile<3>, int4_tile<4>,
                                               int4_tile<5>, int4_tile<6>, int4_tile<7>, int4_tile<8>};
constexpr Int8Tile INT8_TILES[MAX_ROWS + 1] = {nullptr, int8_tile<1>, int8_tile<2>, int8_tile<3>, int8_tile<4>,
                                               int8_tile<5>, int8_tile<6>, int8_tile<7>, int8_tile<8>};

// Tiles per parallel chunk: about 32k multiply-adds (a few microseconds), so a thread's share is worth the
// fork, yet a one-row step of a small layer (SmolLM2's 576x576 output projection: 72 tiles) still splits.
int64_t grain(int64_t rows, int64_t k_size) {
  return std::max<int64_t>(1, (int64_t{1} << 12) / std::max<int64_t>(1, rows * k_size / TILE));
}

at::Tensor rows_of(const at::Tensor& x, int64_t k_size, const char* name) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == k_size, name, ": input must be (rows, ", k_size, "), got ", x.sizes());
  return x.to(at::kFloat).contiguous();
}


// Scores of `group` query heads (rows of q, stride q_stride) against `width` keys (stride k_stride),
// times `scale`; masked-out keys get -inf. `d` is a multiple of 8.
AVX2_FMA void attention_scores(const float* q, int64_t q_stride, int64_t group, const float* k, int64_t k_stride,
                               int64_t width, int64_t d, const bool* keep, float scale, float* scores,
                               int64_t scores_stride) {
  for (int64_t w = 0; w < width; ++w) {
    if (keep != nullptr && !keep[w]) {
      for (int64_t g = 0; g < group; ++g) scores[g * scores_stride + w] = -std::numeric_limits<float>::infinity();
      continue;
    }
    const float* kw = k + w * k_stride;
    for (int64_t g = 0; g < group; ++g) {
      const float* qg = q + g * q_stride;
      __m256 acc = _mm256_setzero_ps();
      for (int64_t i = 0; i < d; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(qg + i), _mm256_loadu_ps(kw + i), acc);
      __m128 sum = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
      sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
      sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
      scores[g * scores_stride + w] = _mm_cvtss_f32(sum) * scale;
    }
  }
}

// out[g] = sum_w p[g][w] * v[w] for `group` heads; `d` a multiple of 8 (at most 256: 32 accumulators).
AVX2_FMA void attention_values(const float* p, int64_t p_stride, int64_t group, const float* v, int64_t v_stride,
                               int64_t width, int64_t d, float* out, int64_t out_stride) {
  for (int64_t g = 0; g < group; ++g) {
    const float* pg = p + g * p_stride;
    float* og = out + g * out_stride;
    for (int64_t i0 = 0; i0 < d; i0 += 64) {  // 8 vectors of the head at a time
      const int64_t n = std::min<int64_t>(8, (d - i0) / 8);
      __m256 acc[8];
      for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
      for (int64_t w = 0; w < width; ++w) {
        const float weight = pg[w];
        if (weight == 0.0f) continue;  // masked-out keys (exp(-inf) = 0) cost nothing
        const __m256 pw = _mm256_set1_ps(weight);
        const float* vw = v + w * v_stride + i0;
        for (int j = 0; j < n; ++j) acc[j] = _mm256_fmadd_ps(pw, _mm256_loadu_ps(vw + 8 * j), acc[j]);
      }
      for (int j = 0; j < n; ++j) _mm256_storeu_ps(og + i0 + 8 * j, acc[j]);
    }
  }
}
}  // namespace

bool quant_kernels_supported() { return supported(); }

// x (M, K) → (M, N) float32 with the int4 layout above.
at::Tensor int4_linear(const at::Tensor& x_in, const at::Tensor& qweight, const at::Tensor& scales) {
  TORCH_CHECK(supported(), "int4_linear: this CPU lacks AVX2/FMA");
  TORCH_CHECK(qweight.scalar_type() == at::kInt && qweight.dim() == 3 && qweight.size(2) == GROUP && qweight.is_contiguous(),
              "int4_linear: qweight must be contiguous int32 (N/8, K/32, 32)");
  TORCH_CHECK(scales.scalar_type() == at::kBFloat16 && scales.is_contiguous() && scales.dim() == 3 &&
                  scales.size(0) == qweight.size(0) && scales.size(1) == qweight.size(1) && scales.size(2) == 2 * TILE,
              "int4_linear: scales must be contiguous bfloat16 (N/8, K/32, 16)");
  const int64_t tiles = qweight.size(0), groups = qweight.size(1), k_size = groups * GROUP, n = tiles * TILE;
  const at::Tensor x = rows_of(x_in, k_size, "int4_linear");
  const int64_t m = x.size(0);
  at::Tensor out = at::empty({m, n}, x.options());
  if (m == 0) return out;
  const float* xp = x.const_data_ptr<float>();
  const auto* qp = reinterpret_cast<const uint32_t*>(qweight.const_data_ptr<int32_t>());
  const auto* sp = reinterpret_cast<const uint16_t*>(scales.const_data_ptr<at::BFloat16>());
  float* op = out.data_ptr<float>();
  at::parallel_for(0, tiles, grain(m, k_size), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t r = 0; r < m; r += MAX_ROWS) {
        const int rows = static_cast<int>(std::min<int64_t>(MAX_ROWS, m - r));
        INT4_TILES[rows](xp + r * k_size, k_size, qp + t * groups * GROUP, sp + t * groups * 2 * TILE, groups,
                         op + r * n + t * TILE, n);
      }
    }
  });
  return out;
}

// x (M, K) → (M, N) float32 with the int8 layout above.
at::Tensor int8_linear(const at::Tensor& x_in, const at::Tensor& qweight, const at::Tensor& scales) {
  TORCH_CHECK(supported(), "int8_linear: this CPU lacks AVX2/FMA");
  TORCH_CHECK(qweight.scalar_type() == at::kChar && qweight.dim() == 3 && qweight.size(2) == TILE && qweight.is_contiguous(),
              "int8_linear: qweight must be contiguous int8 (N/8, K, 8)");
  TORCH_CHECK(scales.scalar_type() == at::kBFloat16 && scales.is_contiguous() && scales.dim() == 2 &&
                  scales.size(0) == qweight.size(0) && scales.size(1) == TILE,
              "int8_linear: scales must be contiguous bfloat16 (N/8, 8)");
  const int64_t tiles = qweight.size(0), k_size = qweight.size(1), n = tiles * TILE;
  const at::Tensor x = rows_of(x_in, k_size, "int8_linear");
  const int64_t m = x.size(0);
  at::Tensor out = at::empty({m, n}, x.options());
  if (m == 0) return out;
  const float* xp = x.const_data_ptr<float>();
  const int8_t* qp = qweight.const_data_ptr<int8_t>();
  const auto* sp = reinterpret_cast<const uint16_t*>(scales.const_data_ptr<at::BFloat16>());
  float* op = out.data_ptr<float>();
  at::parallel_for(0, tiles, grain(m, k_size), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t r = 0; r < m; r += MAX_ROWS) {
        const int rows = static_cast<int>(std::min<int64_t>(MAX_ROWS, m - r));
        INT8_TILES[rows](xp + r * k_size, k_size, qp + t * k_size * TILE, sp + t * TILE, k_size, op + r * n + t * TILE, n);
      }
    }
  });
  return out;
}


// q (B, Hq, 1, D), k and v (B, Hkv, W, D) with the head size contiguous (the KV cache's views), mask None
// or (B, 1, 1, W) bool (True: attend) → (B, Hq, 1, D) float32, as scaled_dot_product_attention with
// enable_gqa (query head h reads key/value head h / (Hq / Hkv)).
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& mask, double scale) {
  TORCH_CHECK(supported(), "decode_attention: this CPU lacks AVX2/FMA");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.size(2) == 1, "decode_attention: q (B, Hq, 1, D), k/v (B, Hkv, W, D)");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "decode_attention: float32 only");
  const int64_t b = q.size(0), hq = q.size(1), d = q.size(3), hkv = k.size(1), width = k.size(2);
  TORCH_CHECK(d % 8 == 0 && d <= 256 && k.size(3) == d && v.size(3) == d && v.size(2) == width && k.size(0) == b &&
                  v.size(0) == b && v.size(1) == hkv && hq % hkv == 0,
              "decode_attention: shapes ", q.sizes(), " ", k.sizes(), " ", v.sizes());
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "decode_attention: the head size must be contiguous");
  const bool* keep = nullptr;
  at::Tensor mask_rows;
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->numel() == b * width, "decode_attention: mask (B, 1, 1, W) bool");
    mask_rows = mask->reshape({b, width}).contiguous();
    keep = mask_rows.const_data_ptr<bool>();
  }
  const int64_t group = hq / hkv;
  at::Tensor scores = at::empty({b, hq, width}, q.options());
  at::Tensor out = at::empty({b, hq, 1, d}, q.options());
  const float *qp = q.const_data_ptr<float>(), *kp = k.const_data_ptr<float>(), *vp = v.const_data_ptr<float>();
  float *sp = scores.data_ptr<float>(), *op = out.data_ptr<float>();
  const int64_t tasks = b * hkv, task_grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, width * d));
  at::parallel_for(0, tasks, task_grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t / hkv, head = t % hkv;
      attention_scores(qp + row * q.stride(0) + head * group * q.stride(1), q.stride(1), group,
                       kp + row * k.stride(0) + head * k.stride(1), k.stride(2), width, d,
                       keep == nullptr ? nullptr : keep + row * width, static_cast<float>(scale),
                       sp + (row * hq + head * group) * width, width);
    }
  });
  scores = at::softmax(scores, -1);
  sp = scores.data_ptr<float>();
  at::parallel_for(0, tasks, task_grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t / hkv, head = t % hkv;
      attention_values(sp + (row * hq + head * group) * width, width, group, vp + row * v.stride(0) + head * v.stride(1),
                       v.stride(2), width, d, op + (row * hq + head * group) * d, d);
    }
  });
  return out;
}

TORCH_LIBRARY_FRAGMENT(aigc, m) {
  m.def("int4_linear(Tensor x, Tensor qweight, Tensor scales) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor qweight, Tensor scales) -> Tensor");
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> Tensor");
  m.def("quant_kernels_supported() -> bool", &quant_kernels_supported);
}

TORCH_LIBRARY_IMPL(aigc, CompositeExplicitAutograd, m) {
  m.impl("int4_linear", &int4_linear);
  m.impl("int8_linear", &int8_linear);
  m.impl("decode_attention", &decode_attention);
}
