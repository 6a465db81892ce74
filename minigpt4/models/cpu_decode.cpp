#include "minigpt4/models/cpu_decode.h"

#include "minigpt4/models/cpu_gemv.h"
#include "minigpt4/models/llama.h"
#include "minigpt4/models/lora.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <utility>
#include <type_traits>
#include <vector>

namespace minigpt4::cpu_decode {

namespace {

std::atomic<bool>& switch_state() {
  static std::atomic<bool> on{[] {
    const char* v = std::getenv("MINIGPT4_CPU_DECODE");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }()};
  return on;
}

// The model's activation dtype: results are rounded to it wherever the ATen path stores a
// tensor of that dtype (identity for float32).
struct Rounding {
  bool bf16;
  float operator()(float v) const { return bf16 ? static_cast<float>(c10::BFloat16(v)) : v; }
};

// Element i of a float32 or bf16 CPU tensor's data, as float.
struct FloatView {
  const float* f32 = nullptr;
  const c10::BFloat16* b16 = nullptr;
  explicit FloatView(const at::Tensor& t) {
    if (t.scalar_type() == at::kBFloat16)
      b16 = t.data_ptr<c10::BFloat16>();
    else
      f32 = t.data_ptr<float>();
  }
  float operator[](int64_t i) const { return f32 ? f32[i] : static_cast<float>(b16[i]); }
};

bool float_tensor(const at::Tensor& t, at::ScalarType dtype) {
  return t.defined() && t.is_cpu() && t.is_contiguous() && t.scalar_type() == dtype;
}

bool linear_applies(const Linear& l, at::ScalarType dtype) {
  if (l.bias.defined() || !l.weight.is_cpu() || !l.weight.is_contiguous() || l.weight.dim() != 2) return false;
  // LoRA: none active, or the active one merged into the weight (its product adds nothing).
  for (const auto& adapter : l.lora)
    if (!adapter->active().empty() && !adapter->merged()) return false;
  const auto w = l.weight.scalar_type();
  if (l.is_grouped()) return l.weight_scale.is_contiguous() && cpu_gemv::row_available(l.weight, l.weight_scale);
  if (w == at::kChar) return float_tensor(l.weight_scale, at::kFloat) && cpu_gemv::row_available(w);
  return w == dtype && cpu_gemv::row_available(w);
}

const LlamaDecoderLayer& layer_at(const LlamaForCausalLM& m, size_t i) {
  return *m.layers->ptr(i)->as<LlamaDecoderLayer>();
}

// Whether the model's layers are ones this path computes.
bool model_applies(const LlamaForCausalLM& m) {
  const auto dtype = m.dtype();
  if (!switch_state().load(std::memory_order_relaxed) || at::GradMode::is_enabled()) return false;
  if (dtype != at::kFloat && dtype != at::kBFloat16) return false;
  if (!float_tensor(m.norm->weight, dtype) || !linear_applies(*m.lm_head, dtype) ||
      !float_tensor(m.inv_freq, at::kFloat))
    return false;
  for (size_t i = 0; i < m.layers->size(); ++i) {
    const auto& layer = layer_at(m, i);
    const auto& a = *layer.self_attn;
    const auto& mlp = *layer.mlp;
    for (const auto* l : {&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &mlp.gate_proj, &mlp.up_proj, &mlp.down_proj})
      if (!linear_applies(**l, dtype)) return false;
    if (!float_tensor(layer.input_layernorm->weight, dtype) ||
        !float_tensor(layer.post_attention_layernorm->weight, dtype))
      return false;
  }
  return true;
}

// inputs_embeds [rows, 1, H] of float32 or bf16 on the CPU.
bool input_applies(const LlamaForCausalLM& m, const at::Tensor& x, int64_t rows) {
  return x.is_cpu() && x.dim() == 3 && x.size(0) == rows && x.size(1) == 1 && x.size(2) == m.config.hidden_size &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16);
}

// The cache must hold one sequence, the same number of positions in every layer.
bool cache_applies(const LlamaForCausalLM& m, const KVCache& cache) {
  const int64_t past = cache.length();
  for (size_t i = 0; i < m.layers->size(); ++i) {
    const bool cached = i < cache.keys.size() && cache.keys[i].defined();
    if (past == 0 ? cached : !cached || cache.keys[i].size(0) != 1 || cache.keys[i].size(2) != past) return false;
  }
  return true;
}

bool applies(const LlamaForCausalLM& m, const at::Tensor& x, const KVCache& cache) {
  return input_applies(m, x, 1) && model_applies(m) && cache_applies(m, cache);
}

// RMSNorm::forward: the mean square in float32, x * rsqrt(ms + eps) rounded to the model's
// dtype, times the weight.
void rms_norm(const float* x, const RMSNorm& norm, int64_t H, float* out, const Rounding& round) {
  float sum = 0;
  for (int64_t i = 0; i < H; ++i) sum += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(sum / static_cast<float>(H) + static_cast<float>(norm.eps));
  const FloatView w(norm.weight);
  for (int64_t i = 0; i < H; ++i) out[i] = round(w[i] * round(x[i] * inv));
}

// float32 weights whose kernels are ATen's (MKL on Intel, cpu_gemv.cpp) go through
// Linear::forward from this size on: MKL streams them as fast as our row kernel there, and its
// few microseconds of dispatch are noise next to reading a megabyte. Everything else runs our
// row kernels directly (cpu_gemv.h): where a weight sits in cache ATen's dispatch would be most
// of the time.
constexpr int64_t kFloatDispatchBytes = int64_t{1} << 20;

bool through_aten(const Linear& l) {
  return l.weight.scalar_type() == at::kFloat && cpu_gemv::chosen().f32 == cpu_gemv::Kernels::aten &&
         static_cast<int64_t>(l.weight.nbytes()) >= kFloatDispatchBytes;
}

void linear(const Linear& l, const float* x, float* y, const Rounding& round) {
  const int64_t N = l.out_features, K = l.in_features;
  if (through_aten(l)) {
    auto row = at::empty({1, K}, at::TensorOptions().dtype(at::kFloat));
    std::memcpy(row.data_ptr<float>(), x, static_cast<size_t>(K) * sizeof(float));
    const auto out = l.forward(row).contiguous();
    std::memcpy(y, out.data_ptr<float>(), static_cast<size_t>(N) * sizeof(float));
    return;
  }
  cpu_gemv::linear_row(l.weight, l.weight_scale, x, K, y);
  if (round.bf16)
    for (int64_t n = 0; n < N; ++n) y[n] = round(y[n]);
}

// Several linears of the same input (q, k, v; gate, up) in one parallel region where they
// all run our row kernels.
void linears(std::initializer_list<std::pair<const Linear*, float*>> layers, const float* x, const Rounding& round) {
  std::vector<cpu_gemv::RowProduct> products;
  for (const auto& [l, y] : layers) {
    if (through_aten(*l)) {
      for (const auto& [each, out] : layers) linear(*each, x, out, round);
      return;
    }
    products.push_back({l->weight, l->weight_scale, y});
  }
  cpu_gemv::linear_rows(products, x, layers.begin()->first->in_features);
  if (round.bf16)
    for (const auto& [l, y] : layers)
      for (int64_t n = 0; n < l->weight.size(0); ++n) y[n] = round(y[n]);
}

// The same product for the rows of a batch ([rows, K] float32 -> [rows, N] float32) through
// Linear::forward, which reads the weight once for every row: our kernels up to
// cpu_gemv::kMaxRows rows, a blocked GEMM above. The rows go in as the model's dtype, so a
// bf16 model rounds where its ATen path does.
// Weights other than float32 go cpu_gemv::kMaxRows rows at a time, through our decode
// kernels: their prompt paths convert the whole weight to float32 blocks first, which pays
// off over a prompt's many rows but made a step of 8 sequences of a 1.1B bf16 model 6x as
// slow as one (a pass of up to 8 rows costs 1.1-2.5x one row's); and group-wise decode
// kernels quantise the activations to int8 (as llama.cpp does) where their prompt path does
// not, while a sequence's answer must not depend on how many others share its step.
// float32 weights go to MKL whole (it reads them once for all rows, converting nothing).
void linear_batch(const Linear& l, const float* x, int64_t rows, float* y, at::ScalarType dtype) {
  const int64_t N = l.out_features, K = l.in_features;
  const bool dense_float32 = !l.is_quantized() && l.weight.scalar_type() == at::kFloat;
  const int64_t chunk = dense_float32 ? rows : cpu_gemv::kMaxRows;
  for (int64_t r = 0; r < rows; r += chunk) {
    const int64_t n = std::min(chunk, rows - r);
    auto in = at::from_blob(const_cast<float*>(x + r * K), {n, K}, at::TensorOptions().dtype(at::kFloat));
    const auto out = l.forward(dtype == at::kFloat ? in : in.to(dtype)).to(at::kFloat).contiguous();
    std::memcpy(y + r * N, out.data_ptr<float>(), static_cast<size_t>(n * N) * sizeof(float));
  }
}

// apply_rope on `heads` heads of D channels: x * cos + rotate_half(x) * sin, rotate_half(x) =
// cat(-x2, x1); cos and sin hold the first half's frequencies (the second half repeats them).
void rope(float* x, int64_t heads, int64_t D, const float* cos, const float* sin, const Rounding& round) {
  const int64_t half = D / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* v = x + h * D;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = v[i], x2 = v[i + half];
      v[i] = round(round(x1 * cos[i]) + round(-x2 * sin[i]));
      v[i + half] = round(round(x2 * cos[i]) + round(x1 * sin[i]));
    }
  }
}

void store(const at::Tensor& buffer, int64_t offset, const float* values, int64_t n) {
  if (buffer.scalar_type() == at::kBFloat16) {
    auto* out = buffer.data_ptr<c10::BFloat16>() + offset;
    for (int64_t i = 0; i < n; ++i) out[i] = c10::BFloat16(values[i]);
  } else {
    std::memcpy(buffer.data_ptr<float>() + offset, values, static_cast<size_t>(n) * sizeof(float));
  }
}

// Row t of a [.., D] cache buffer as float32 (a copy for bf16; vectorised by the compiler).
template <typename T>
const float* cache_row(const T* base, int64_t t, int64_t D, float* scratch) {
  if constexpr (std::is_same_v<T, float>) {
    (void)scratch;
    return base + t * D;
  } else {
    const T* row = base + t * D;
    for (int64_t d = 0; d < D; ++d) scratch[d] = static_cast<float>(row[d]);
    return scratch;
  }
}

// softmax(q k^T * scale) v for each query head over positions 0..T-1 of the cache buffers
// [1, kv_heads, capacity, D]; query head h reads kv head h / (heads / kv_heads). One task per
// kv head: each cached key and value row is read (and converted from bf16) once for the
// query heads that share it, and the loops over D are plain float32 arrays the compiler
// vectorises.
template <typename T>
void attend_typed(const float* q, const T* keys, const T* values, int64_t capacity, int64_t heads, int64_t kv_heads,
                  int64_t D, int64_t T_len, float scale, float* out, const Rounding& round) {
  const int64_t group = heads / kv_heads;
  at::parallel_for(0, kv_heads, 1, [&](int64_t g0, int64_t g1) {
    std::vector<float> p(static_cast<size_t>(group * T_len)), acc(static_cast<size_t>(group * D)),
        row(static_cast<size_t>(D));
    for (int64_t g = g0; g < g1; ++g) {
      const T* kg = keys + g * capacity * D;
      const T* vg = values + g * capacity * D;
      const float* qg = q + g * group * D;
      for (int64_t t = 0; t < T_len; ++t) {
        const float* k = cache_row(kg, t, D, row.data());
        for (int64_t h = 0; h < group; ++h) {
          const float* qh = qg + h * D;
          float dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < D; ++d) dot += qh[d] * k[d];
          p[static_cast<size_t>(h * T_len + t)] = dot * scale;
        }
      }
      for (int64_t h = 0; h < group; ++h) {
        float* ph = p.data() + h * T_len;
        float max = -INFINITY, sum = 0;
        for (int64_t t = 0; t < T_len; ++t) max = std::max(max, ph[t]);
        for (int64_t t = 0; t < T_len; ++t) sum += (ph[t] = std::exp(ph[t] - max));
        for (int64_t t = 0; t < T_len; ++t) ph[t] /= sum;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t t = 0; t < T_len; ++t) {
        const float* v = cache_row(vg, t, D, row.data());
        for (int64_t h = 0; h < group; ++h) {
          const float w = p[static_cast<size_t>(h * T_len + t)];
          float* a = acc.data() + h * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) a[d] += w * v[d];
        }
      }
      for (int64_t i = 0; i < group * D; ++i) out[g * group * D + i] = round(acc[static_cast<size_t>(i)]);
    }
  });
}

void attend(const float* q, const at::Tensor& keys, const at::Tensor& values, int64_t heads, int64_t kv_heads,
            int64_t D, int64_t T, float scale, float* out, const Rounding& round) {
  const int64_t capacity = keys.size(2);
  if (keys.scalar_type() == at::kBFloat16)
    attend_typed(q, keys.data_ptr<c10::BFloat16>(), values.data_ptr<c10::BFloat16>(), capacity, heads, kv_heads, D, T,
                 scale, out, round);
  else
    attend_typed(q, keys.data_ptr<float>(), values.data_ptr<float>(), capacity, heads, kv_heads, D, T, scale, out,
                 round);
}

}  // namespace

bool enabled() { return switch_state().load(); }
void set_enabled(bool on) { switch_state().store(on); }

namespace {

// rope(): cos/sin of pos * inv_freq in float32, rounded to the model's dtype; `half` of each.
void rope_angles(const LlamaForCausalLM& m, int64_t pos, float* cos, float* sin, const Rounding& round) {
  const int64_t half = m.config.dim_per_head() / 2;
  const float* inv_freq = m.inv_freq.data_ptr<float>();
  for (int64_t i = 0; i < half; ++i) {
    const float angle = static_cast<float>(pos) * inv_freq[i];
    cos[i] = round(std::cos(angle)), sin[i] = round(std::sin(angle));
  }
}

// Layer i's attention for one sequence at position `pos` (the cache's length before this
// step; cache.length() counts layer 0's, which is already longer from layer 1 on): RoPE on q
// and k, k and v into the cache, q over every cached position into `att` [heads * D].
void attend_sequence(const LlamaForCausalLM& m, size_t i, KVCache& cache, int64_t pos, float* q, float* k,
                     const float* v, const float* cos, const float* sin, float* att, const Rounding& round) {
  const auto& c = m.config;
  const int64_t heads = c.num_attention_heads, kv_heads = c.num_key_value_heads, D = c.dim_per_head();
  rope(q, heads, D, cos, sin, round);
  rope(k, kv_heads, D, cos, sin, round);
  cache.prepare(i, 1, kv_heads, D, at::TensorOptions().dtype(m.dtype()).device(at::kCPU), pos + 1);
  const auto& keys = cache.key_buffers[i];
  const auto& values = cache.value_buffers[i];
  const int64_t capacity = keys.size(2);
  for (int64_t g = 0; g < kv_heads; ++g) {
    store(keys, (g * capacity + pos) * D, k + g * D, D);
    store(values, (g * capacity + pos) * D, v + g * D, D);
  }
  cache.commit(i, pos + 1);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  attend(q, keys, values, heads, kv_heads, D, pos + 1, scale, att, round);
}

// x += y, rounded to the model's dtype (a residual connection).
void add_residual(float* x, const float* y, int64_t n, const Rounding& round) {
  for (int64_t j = 0; j < n; ++j) x[j] = round(x[j] + y[j]);
}

// silu(gate) * up into gate.
void silu_mul(float* gate, const float* up, int64_t n, const Rounding& round) {
  for (int64_t j = 0; j < n; ++j) gate[j] = round(round(gate[j] / (1.0f + std::exp(-gate[j]))) * up[j]);
}

// The embeddings of `rows` tokens, rounded to the model's dtype, into x [rows, H].
void load_inputs(const at::Tensor& inputs_embeds, int64_t rows, int64_t H, float* x, const Rounding& round) {
  const auto embeds = inputs_embeds.contiguous();
  const FloatView in(embeds);
  for (int64_t i = 0; i < rows * H; ++i) x[i] = round(in[i]);
}

}  // namespace

at::Tensor llama_step(const LlamaForCausalLM& m, const at::Tensor& inputs_embeds, KVCache& cache) {
  if (!applies(m, inputs_embeds, cache)) return {};
  const auto& c = m.config;
  const Rounding round{m.dtype() == at::kBFloat16};
  const int64_t H = c.hidden_size, F = c.intermediate_size, heads = c.num_attention_heads,
                kv_heads = c.num_key_value_heads, D = c.dim_per_head();

  std::vector<float> x(H), xn(H), q(heads * D), k(kv_heads * D), v(kv_heads * D), att(heads * D), o(H), gate(F), up(F);
  load_inputs(inputs_embeds, 1, H, x.data(), round);
  const int64_t pos = cache.length();
  std::vector<float> cos(D / 2), sin(D / 2);
  rope_angles(m, pos, cos.data(), sin.data(), round);

  for (size_t i = 0; i < m.layers->size(); ++i) {
    const auto& layer = layer_at(m, i);
    const auto& attn = *layer.self_attn;
    rms_norm(x.data(), *layer.input_layernorm, H, xn.data(), round);
    linears({{attn.q_proj.get(), q.data()}, {attn.k_proj.get(), k.data()}, {attn.v_proj.get(), v.data()}}, xn.data(),
            round);
    attend_sequence(m, i, cache, pos, q.data(), k.data(), v.data(), cos.data(), sin.data(), att.data(), round);
    linear(*attn.o_proj, att.data(), o.data(), round);
    add_residual(x.data(), o.data(), H, round);

    const auto& mlp = *layer.mlp;
    rms_norm(x.data(), *layer.post_attention_layernorm, H, xn.data(), round);
    linears({{mlp.gate_proj.get(), gate.data()}, {mlp.up_proj.get(), up.data()}}, xn.data(), round);
    silu_mul(gate.data(), up.data(), F, round);
    linear(*mlp.down_proj, gate.data(), o.data(), round);
    add_residual(x.data(), o.data(), H, round);
  }
  rms_norm(x.data(), *m.norm, H, xn.data(), round);
  auto logits = at::empty({1, 1, c.vocab_size}, at::TensorOptions().dtype(at::kFloat));
  linear(*m.lm_head, xn.data(), logits.data_ptr<float>(), round);
  return logits;
}

at::Tensor llama_steps(const LlamaForCausalLM& m, const at::Tensor& inputs_embeds,
                       const std::vector<KVCache*>& caches) {
  const int64_t rows = static_cast<int64_t>(caches.size());
  if (rows == 1) {
    auto logits = llama_step(m, inputs_embeds, *caches[0]);
    return logits.defined() ? logits.view({1, -1}) : logits;
  }
  if (rows == 0 || !input_applies(m, inputs_embeds, rows) || !model_applies(m)) return {};
  for (size_t r = 0; r < caches.size(); ++r) {
    if (!caches[r] || !cache_applies(m, *caches[r])) return {};
    // A repeated cache's rows must come one after another (a chunk is one run of positions).
    if (r > 0 && caches[r] != caches[r - 1] &&
        std::find(caches.begin(), caches.begin() + r, caches[r]) != caches.begin() + r)
      return {};
  }
  const auto& c = m.config;
  const auto dtype = m.dtype();
  const Rounding round{dtype == at::kBFloat16};
  const int64_t H = c.hidden_size, F = c.intermediate_size, heads = c.num_attention_heads,
                kv_heads = c.num_key_value_heads, D = c.dim_per_head(), half = D / 2;
  const auto n = [rows](int64_t width) { return static_cast<size_t>(rows * width); };

  std::vector<float> x(n(H)), xn(n(H)), q(n(heads * D)), k(n(kv_heads * D)), v(n(kv_heads * D)), att(n(heads * D)),
      o(n(H)), gate(n(F)), up(n(F)), cos(n(half)), sin(n(half));
  load_inputs(inputs_embeds, rows, H, x.data(), round);
  // A cache given for several rows holds one sequence's consecutive positions (a prompt's
  // chunk riding along with other answers' tokens): each row attends to those before it.
  std::vector<int64_t> positions;
  for (int64_t r = 0; r < rows; ++r) {
    const KVCache* cache = caches[static_cast<size_t>(r)];
    const auto earlier = std::count(caches.begin(), caches.begin() + r, cache);
    positions.push_back(cache->length() + earlier);
    rope_angles(m, positions.back(), cos.data() + r * half, sin.data() + r * half, round);
  }
  const auto norm_rows = [&](const RMSNorm& norm) {
    for (int64_t r = 0; r < rows; ++r) rms_norm(x.data() + r * H, norm, H, xn.data() + r * H, round);
  };

  for (size_t i = 0; i < m.layers->size(); ++i) {
    const auto& layer = layer_at(m, i);
    const auto& attn = *layer.self_attn;
    norm_rows(*layer.input_layernorm);
    linear_batch(*attn.q_proj, xn.data(), rows, q.data(), dtype);
    linear_batch(*attn.k_proj, xn.data(), rows, k.data(), dtype);
    linear_batch(*attn.v_proj, xn.data(), rows, v.data(), dtype);
    for (int64_t r = 0; r < rows; ++r)  // each sequence over its own cache: no padding
      attend_sequence(m, i, *caches[static_cast<size_t>(r)], positions[static_cast<size_t>(r)],
                      q.data() + r * heads * D, k.data() + r * kv_heads * D, v.data() + r * kv_heads * D,
                      cos.data() + r * half, sin.data() + r * half, att.data() + r * heads * D, round);
    linear_batch(*attn.o_proj, att.data(), rows, o.data(), dtype);
    add_residual(x.data(), o.data(), rows * H, round);

    const auto& mlp = *layer.mlp;
    norm_rows(*layer.post_attention_layernorm);
    linear_batch(*mlp.gate_proj, xn.data(), rows, gate.data(), dtype);
    linear_batch(*mlp.up_proj, xn.data(), rows, up.data(), dtype);
    silu_mul(gate.data(), up.data(), rows * F, round);
    linear_batch(*mlp.down_proj, gate.data(), rows, o.data(), dtype);
    add_residual(x.data(), o.data(), rows * H, round);
  }
  norm_rows(*m.norm);
  auto logits = at::empty({rows, c.vocab_size}, at::TensorOptions().dtype(at::kFloat));
  linear_batch(*m.lm_head, xn.data(), rows, logits.data_ptr<float>(), dtype);
  return logits;
}

}  // namespace minigpt4::cpu_decode
