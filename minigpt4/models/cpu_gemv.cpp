// cpu_gemv.h: which kernels run (the rules, MINIGPT4_CPU_KERNELS), and the tensor-level
// products that split output rows across threads. The kernels themselves are in
// cpu_gemv_avx2.cpp and cpu_gemv_avx512.cpp.
#include "minigpt4/models/cpu_gemv.h"

#include "minigpt4/models/cpu_gemv_kernels.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

// at::parallel_for, inlined from the headers, splits work across threads only when this file
// is compiled with OpenMP (CMakeLists.txt links OpenMP::OpenMP_CXX); without it every kernel
// would run on one thread and stream weights at half the speed.
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "compile with OpenMP: at::parallel_for would run serially"
#endif

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>

namespace minigpt4::cpu_gemv {

namespace {

// ------------------------------------------------------------------ the CPU

struct Cpu {
  std::string vendor = "unknown", model = "unknown";
  bool intel = false, avx2 = false, f16c = false, avx512 = false, avx512_bf16 = false, avx512_vnni = false,
       amx_bf16 = false, avx_vnni = false, amx_int8 = false;
};

std::string cpuinfo_field(const std::string& key) {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key, 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    auto value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    return value;
  }
  return "unknown";
}

const Cpu& cpu() {
  static const Cpu detected = [] {
    Cpu c;
    c.vendor = cpuinfo_field("vendor_id");
    c.model = cpuinfo_field("model name");
    const std::string flags = " " + cpuinfo_field("flags") + " ";
    c.amx_bf16 = flags.find(" amx_bf16 ") != std::string::npos;
    c.f16c = flags.find(" f16c ") != std::string::npos;  // float16 scales of group-wise weights
    c.avx512_vnni = flags.find(" avx512_vnni ") != std::string::npos;
    c.avx_vnni = flags.find(" avx_vnni ") != std::string::npos;
    c.amx_int8 = flags.find(" amx_int8 ") != std::string::npos;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    c.intel = __builtin_cpu_is("intel");
    c.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    c.avx512 =
        __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    c.avx512_bf16 = c.avx512 && __builtin_cpu_supports("avx512bf16");
#endif
    return c;
  }();
  return detected;
}

const kernels::Table* table(Kernels k) {
  switch (k) {
    case Kernels::avx2: return kernels::avx2();
    case Kernels::avx512: return kernels::avx512();
    case Kernels::aten: return nullptr;
  }
  return nullptr;
}

// Whether this CPU and build run family k for weights of `dtype`; if not, why.
std::optional<std::string> cannot_run(Kernels k, at::ScalarType dtype) {
  if (k == Kernels::aten) return std::nullopt;
  if (table(k) == nullptr) return fmt::format("this build has no {} kernels (not x86-64)", name(k));
  const Cpu& c = cpu();
  if (k == Kernels::avx2 && !c.avx2) return std::string("this CPU has no AVX2 with FMA");
  if (k == Kernels::avx512 && !c.avx512) return std::string("this CPU has no AVX-512 F/BW/VL");
  if (dtype == at::kByte && table(k)->q4 == nullptr)
    return fmt::format("there is no {} form of the group-wise kernels", name(k));
  if (k == Kernels::avx512 && dtype == at::kByte && !(c.avx512_vnni && c.avx2))
    return std::string("this CPU has no AVX512-VNNI (vpdpbusd)");
  if (dtype == at::kByte && !c.f16c) return std::string("this CPU has no F16C (the float16 scales)");
  return std::nullopt;
}

// The same for the prompt GEMM (Choice::gemm): aten (MKL) or avx2.
std::optional<std::string> cannot_run_gemm(Kernels k) {
  if (k == Kernels::aten) return std::nullopt;
  if (k != Kernels::avx2) return fmt::format("there is no {} prompt GEMM (avx2 or aten)", name(k));
  if (kernels::prompt_gemm_avx2() == nullptr) return std::string("this build has no avx2 kernels (not x86-64)");
  if (!cpu().avx2) return std::string("this CPU has no AVX2 with FMA");
  return std::nullopt;
}

// ------------------------------------------------------------------ the rules
// Fixed rules from the CPU's features, backed by measurements on an Intel Xeon (AVX-512,
// AVX512-BF16) and an AMD EPYC Zen 3 (AVX2 only) in benchmarks/README.md; a Zen 4 EPYC
// (AVX-512 with BF16) is not measured yet (`minigpt4 info --kernels --measure` there). The widest instruction set wins
// for int8 and bf16: ours read those weights at one row 1.6-4.6x faster than ATen on both CPUs measured. float32
// weights go to MKL on Intel, where its GEMV streams them as fast as ours, and to ours elsewhere, where MKL's read them
// at 54-88 % of ours (Zen 3). A bf16 prompt goes through float32 blocks unless the CPU has AMX (cpu_gemv.h,
// float32_blocks_mm).

struct Rule {
  Kernels kernels;
  std::string why;
};

Rule automatic(at::ScalarType dtype) {
  const Cpu& c = cpu();
  const bool avx512 = !cannot_run(Kernels::avx512, dtype), avx2 = !cannot_run(Kernels::avx2, dtype);
  if (dtype == at::kByte) {
    if (avx512) return {Kernels::avx512, "AVX512-VNNI: int8 activations per 32, vpdpbusd on 64 bytes"};
    return avx2 ? Rule{Kernels::avx2, "AVX2: int8 activations per 32, integer dot products (vpmaddubsw)"}
                : Rule{Kernels::aten, "no AVX2: the weight dequantised, then ATen"};
  }
  if (dtype == at::kFloat) {
    if (c.intel) return {Kernels::aten, "Intel CPU: MKL's float32 GEMV streams weights as fast as ours"};
    if (avx512) return {Kernels::avx512, "not Intel: ours, MKL's float32 GEMV (its generic path) is slower here"};
    if (avx2) return {Kernels::avx2, "not Intel: ours, MKL's float32 GEMV (its generic path) is slower here"};
    return {Kernels::aten, "no AVX2: ATen"};
  }
  const char* what = dtype == at::kBFloat16 ? "bf16" : "int8";
  if (avx512) {
    if (dtype != at::kBFloat16) return {Kernels::avx512, "AVX-512: int8 widened to float32, 16 lanes"};
    return {Kernels::avx512, c.avx512_bf16 ? "AVX512-BF16: vdpbf16ps dot products"
                                           : "AVX-512 without AVX512-BF16: bf16 widened to float32, 16 lanes (on an "
                                             "Ice Lake Xeon 0.84-0.89x the AVX2 form's time at 1-8 rows)"};
  }
  if (avx2 && dtype == at::kChar)
    return {Kernels::avx2, "no AVX-512: AVX2, int16 activations per 256 inputs, integer dot products (vpmaddwd)"};
  if (avx2) return {Kernels::avx2, fmt::format("no AVX-512: AVX2, {} widened to float32, 8 lanes", what)};
  return {Kernels::aten, "no AVX2: ATen"};
}

const char* dtype_name(at::ScalarType dtype) {
  return dtype == at::kFloat      ? "f32"
         : dtype == at::kBFloat16 ? "bf16"
         : dtype == at::kChar     ? "int8"
         : dtype == at::kByte     ? "grouped"
                                  : "other";
}

Kernels parse_family(const std::string& word, const std::string& setting) {
  for (const Kernels k : {Kernels::aten, Kernels::avx2, Kernels::avx512})
    if (word == name(k)) return k;
  throw std::runtime_error(fmt::format(
      "MINIGPT4_CPU_KERNELS='{}': unknown kernels '{}' (expected auto, aten, avx2 or avx512, for every dtype or "
      "per dtype as f32=...,bf16=...,int8=...,grouped=...)",
      setting, word));
}

// The choice with the reason for each dtype, from the environment and the rules.
struct Decision {
  Choice choice;
  std::string setting = "unset", why_f32, why_bf16, why_int8, why_grouped, why_bf16_prompt, why_int8_prompt, why_gemm;
};

Decision decide() {
  Decision d;
  std::optional<Kernels> forced[4];  // f32, bf16, int8, grouped
  std::optional<bool> forced_prompt, forced_int8_prompt;
  std::optional<Kernels> forced_gemm;
  const char* legacy = std::getenv("MINIGPT4_CPU_GEMV");
  if (legacy != nullptr && std::strcmp(legacy, "0") == 0) {
    d.setting = "MINIGPT4_CPU_GEMV=0";
    forced[0] = forced[1] = forced[2] = forced[3] = Kernels::aten;
    forced_prompt = forced_int8_prompt = false;
    forced_gemm = Kernels::aten;
  }
  if (const char* v = std::getenv("MINIGPT4_CPU_KERNELS"); v != nullptr && *v != '\0') {
    const std::string setting = v;
    d.setting = "MINIGPT4_CPU_KERNELS=" + setting;
    std::stringstream parts(setting);
    for (std::string part; std::getline(parts, part, ',');) {
      const auto eq = part.find('=');
      if (eq == std::string::npos) {
        if (part == "auto") continue;
        forced[0] = forced[1] = forced[2] = parse_family(part, setting);
        // One family for everything: the group-wise weights follow where it has their kernels
        // (avx512 has none: they stay automatic, on avx2).
        if (!cannot_run(*forced[0], at::kByte)) forced[3] = forced[0];
        if (forced[0] == Kernels::aten) forced_prompt = forced_int8_prompt = false;
        if (!cannot_run_gemm(*forced[0])) forced_gemm = forced[0];  // avx512 has no GEMM: automatic
        continue;
      }
      const auto dtype = part.substr(0, eq), family = part.substr(eq + 1);
      if (dtype == "bf16_prompt") {
        if (family != "float32" && family != "aten" && family != "auto")
          throw std::runtime_error(fmt::format(
              "MINIGPT4_CPU_KERNELS='{}': bf16_prompt takes float32, aten or auto, not '{}'", setting, family));
        if (family != "auto") forced_prompt = family == "float32";
        continue;
      }
      if (dtype == "gemm") {
        if (family != "auto") forced_gemm = parse_family(family, setting);
        continue;
      }
      if (dtype == "int8_prompt") {
        if (family != "llm_int8" && family != "float32" && family != "auto")
          throw std::runtime_error(fmt::format(
              "MINIGPT4_CPU_KERNELS='{}': int8_prompt takes llm_int8, float32 or auto, not '{}'", setting, family));
        if (family != "auto") forced_int8_prompt = family == "llm_int8";
        continue;
      }
      const int slot = dtype == "f32" ? 0 : dtype == "bf16" ? 1 : dtype == "int8" ? 2 : dtype == "grouped" ? 3 : -1;
      if (slot < 0)
        throw std::runtime_error(
            fmt::format("MINIGPT4_CPU_KERNELS='{}': unknown key '{}' (expected f32, bf16, int8, grouped, bf16_prompt, "
                        "int8_prompt or gemm)",
                        setting, dtype));
      if (family != "auto") forced[slot] = parse_family(family, setting);
    }
  }
  const at::ScalarType dtypes[4] = {at::kFloat, at::kBFloat16, at::kChar, at::kByte};
  Kernels* slots[4] = {&d.choice.f32, &d.choice.bf16, &d.choice.int8, &d.choice.grouped};
  std::string* whys[4] = {&d.why_f32, &d.why_bf16, &d.why_int8, &d.why_grouped};
  for (int i = 0; i < 4; ++i) {
    if (forced[i]) {
      if (const auto problem = cannot_run(*forced[i], dtypes[i]))
        throw std::runtime_error(fmt::format("{}: {} kernels for {} weights cannot run: {}", d.setting,
                                             name(*forced[i]), dtype_name(dtypes[i]), *problem));
      *slots[i] = *forced[i];
      *whys[i] = "forced by " + d.setting;
    } else {
      const Rule rule = automatic(dtypes[i]);
      *slots[i] = rule.kernels, *whys[i] = rule.why;
    }
  }
  if (forced_prompt) {
    d.choice.bf16_prompt_float32 = *forced_prompt;
    d.why_bf16_prompt = "forced by " + d.setting;
  } else {
    d.choice.bf16_prompt_float32 = !cpu().amx_bf16;
    d.why_bf16_prompt = cpu().amx_bf16 ? "AMX-BF16: oneDNN multiplies bf16 tiles natively"
                                       : "no AMX: oneDNN's bf16 GEMM is slower than float32's here";
  }
  if (forced_gemm) {
    if (const auto problem = cannot_run_gemm(*forced_gemm))
      throw std::runtime_error(
          fmt::format("{}: the {} prompt GEMM cannot run: {}", d.setting, name(*forced_gemm), *problem));
    d.choice.gemm = *forced_gemm;
    d.why_gemm = "forced by " + d.setting;
  } else if (cannot_run_gemm(Kernels::avx2)) {
    d.choice.gemm = Kernels::aten;
    d.why_gemm = "no AVX2 with FMA: MKL";
  } else {
    d.choice.gemm = cpu().intel ? Kernels::aten : Kernels::avx2;
    d.why_gemm = cpu().intel ? "Intel CPU: MKL's sgemm takes its fast path here"
                             : "not Intel: ours; MKL's sgemm (its generic path) ran 64-128 rows of a 1.1B model's "
                               "layers at about half the FMA units' peak on a Zen 3 EPYC";
  }
  const bool vnni = cpu().avx512_vnni || cpu().avx_vnni || cpu().amx_int8;
  if (forced_int8_prompt) {
    d.choice.int8_prompt_llm_int8 = *forced_int8_prompt;
    d.why_int8_prompt = "forced by " + d.setting;
    if (*forced_int8_prompt && !vnni)
      d.why_int8_prompt +=
          "; this CPU has no VNNI, where at::_int_mm took 60-110x float32's time (a Zen 3 EPYC, 64-128 rows)";
  } else {
    d.choice.int8_prompt_llm_int8 = vnni;
    d.why_int8_prompt = vnni ? "VNNI/AMX int8 dot products: oneDNN's int8 GEMM ran 128 rows of a 2048->5632 "
                               "layer 3.9x faster than float32's on an Ice Lake Xeon (2 threads)"
                             : "no VNNI: at::_int_mm has no fast int8 GEMM here (60-110x float32's time on a Zen 3 "
                               "EPYC), the float32 path";
  }
  return d;
}

const Decision& decision() {
  static const Decision d = decide();  // throws again on the next call if the setting is bad
  return d;
}

// Tests and benchmarks replace the decision's choice; 0 means "not replaced".
std::atomic<int> g_override{0};

int pack(const Choice& c) {
  return 1 | static_cast<int>(c.f32) << 1 | static_cast<int>(c.bf16) << 3 | static_cast<int>(c.int8) << 5 |
         static_cast<int>(c.bf16_prompt_float32) << 7 | static_cast<int>(c.grouped) << 8 |
         static_cast<int>(c.int8_prompt_llm_int8) << 10 | static_cast<int>(c.gemm) << 11;
}
Choice unpack(int v) {
  return {static_cast<Kernels>(v >> 1 & 3), static_cast<Kernels>(v >> 3 & 3),
          static_cast<Kernels>(v >> 5 & 3), (v >> 7 & 1) != 0,
          static_cast<Kernels>(v >> 8 & 3), (v >> 10 & 1) != 0,
          static_cast<Kernels>(v >> 11 & 3)};
}

// ------------------------------------------------------------------ the products

// Output rows per parallel task: enough weight bytes (~256 KiB) that scheduling is noise.
int64_t grain_rows(int64_t K, int64_t element_bytes) {
  return std::max<int64_t>(16, (int64_t{256} << 10) / std::max<int64_t>(1, K * element_bytes));
}

// Whether (weight, scales) is a group-wise weight (quantize.h): 4-bit uint8, or int8 with a
// [N, groups] float16 scale matrix (per-channel int8 has a float32 vector).
bool is_grouped(const at::Tensor& weight, const at::Tensor& scales) {
  return (weight.scalar_type() == at::kByte || weight.scalar_type() == at::kChar) && scales.defined() &&
         scales.dim() == 2 && scales.scalar_type() == at::kHalf;
}

// The group sizes the kernels take (they find a run's group by a shift): 32, 64 or 128 inputs.
bool kernel_group_size(const at::Tensor& weight, const at::Tensor& scales) {
  const int64_t Kp = weight.scalar_type() == at::kByte ? weight.size(1) * 2 : weight.size(1);
  if (scales.size(0) != weight.size(0) || scales.size(1) == 0 || Kp % scales.size(1) != 0) return false;
  const int64_t G = Kp / scales.size(1);
  return G == 32 || G == 64 || G == 128;
}

// Activations quantised for the group-wise kernels (kernels::Table::quantize_x): this
// thread's buffers, valid until its next call.
struct QuantizedX {
  const int8_t* q;
  const float* d;
  const int32_t* sums;
};
QuantizedX quantize_activations(const kernels::Table& t, const float* x, int64_t M, int64_t K, int64_t Kp) {
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> d;
  thread_local std::vector<int32_t> sums;
  const auto runs = static_cast<size_t>(M * Kp / 32);
  q.resize(static_cast<size_t>(M * Kp));
  d.resize(runs);
  sums.resize(runs);
  t.quantize_x(x, M, K, Kp, q.data(), d.data(), sums.data());
  return {q.data(), d.data(), sums.data()};
}

// Activations quantised to int16 for a table's per-channel int8 kernel
// (kernels::Table::quantize_x16): this thread's buffers, valid until its next call.
struct Int16X {
  const int16_t* q;
  const float* d;
};
Int16X quantize_int16(const kernels::Table& t, const float* x, int64_t M, int64_t K) {
  thread_local std::vector<int16_t> q;
  thread_local std::vector<float> d;
  q.resize(static_cast<size_t>(M * K));
  d.resize(static_cast<size_t>(M * ((K + kernels::kInt16Block - 1) / kernels::kInt16Block)));
  t.quantize_x16(x, M, K, q.data(), d.data());
  return {q.data(), d.data()};
}

// Rows [n0, n1) of y32[M, N] for a group-wise weight, activations already quantised.
void grouped_rows(const kernels::Table& t, const at::Tensor& weight, const at::Tensor& scales, const QuantizedX& x,
                  int64_t M, float* y32, int64_t n0, int64_t n1) {
  const int64_t N = weight.size(0), groups = scales.size(1);
  const bool four_bit = weight.scalar_type() == at::kByte;
  const int64_t Kp = four_bit ? weight.size(1) * 2 : weight.size(1);
  const auto* s = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::Half>());
  if (four_bit)
    t.q4(x.q, x.d, x.sums, M, Kp, weight.data_ptr<uint8_t>(), s, Kp / groups, y32, N, n0, n1);
  else
    t.q8(x.q, x.d, x.sums, M, Kp, weight.data_ptr<int8_t>(), s, Kp / groups, y32, N, n0, n1);
}

// y32[M, N] = x[M, K] . W^T (* scales) through table t; x32 / x16 as kernels::Table says. K is
// x's width: the weight's, except that a group-wise weight may be padded beyond it.
void product(const kernels::Table& t, const at::Tensor& weight, const at::Tensor& scales, const float* x32,
             const uint16_t* x16, int64_t M, int64_t K, float* y32) {
  const int64_t N = weight.size(0);
  if (is_grouped(weight, scales)) {
    const int64_t Kp = weight.scalar_type() == at::kByte ? weight.size(1) * 2 : weight.size(1);
    const QuantizedX qx = quantize_activations(t, x32, M, K, Kp);
    at::parallel_for(0, N, grain_rows(weight.size(1), 1),  // weight.size(1): bytes per row
                     [&](int64_t n0, int64_t n1) { grouped_rows(t, weight, scales, qx, M, y32, n0, n1); });
    return;
  }
  switch (weight.scalar_type()) {
    case at::kFloat: {
      const float* w = weight.data_ptr<float>();
      at::parallel_for(0, N, grain_rows(K, 4), [&](int64_t n0, int64_t n1) { t.f32(x32, M, K, w, y32, N, n0, n1); });
      return;
    }
    case at::kBFloat16: {
      const auto* w = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
      at::parallel_for(0, N, grain_rows(K, 2),
                       [&](int64_t n0, int64_t n1) { t.bf16(x32, x16, M, K, w, y32, N, n0, n1); });
      return;
    }
    case at::kChar: {
      const int8_t* q = weight.data_ptr<int8_t>();
      const float* s = scales.data_ptr<float>();
      if (t.int8_x16 != nullptr) {  // activations quantised once for all the rows
        const Int16X x16 = quantize_int16(t, x32, M, K);
        at::parallel_for(0, N, grain_rows(K, 1),
                         [&](int64_t n0, int64_t n1) { t.int8_x16(x16.q, x16.d, M, K, q, s, y32, N, n0, n1); });
        return;
      }
      at::parallel_for(0, N, grain_rows(K, 1),
                       [&](int64_t n0, int64_t n1) { t.int8(x32, M, K, q, s, y32, N, n0, n1); });
      return;
    }
    default: throw std::logic_error("cpu_gemv: no kernel for this weight dtype");
  }
}

// The rows of x, or 0 when x is not a small CPU batch this file handles.
int64_t small_rows(const at::Tensor& x, const at::Tensor& weight) {
  if (!x.is_cpu() || !weight.is_cpu() || weight.dim() != 2 || !weight.is_contiguous() || x.dim() < 1) return 0;
  const int64_t K = weight.size(1);
  if (K == 0 || weight.size(0) == 0 || x.size(-1) != K) return 0;
  const int64_t M = x.numel() / K;
  return M >= 1 && M <= kMaxRows ? M : 0;
}

// The product for a small batch x through family k, in x's dtype and shape [..., N]; the bias
// is added to the float32 sums.
at::Tensor tensor_product(Kernels k, const at::Tensor& x, int64_t M, const at::Tensor& weight, const at::Tensor& scales,
                          const at::Tensor& bias) {
  const kernels::Table& t = *table(k);
  const int64_t N = weight.size(0), K = x.size(-1);
  const auto x2 = x.reshape({M, K}).contiguous();
  at::Tensor x32, x16;
  if (weight.scalar_type() == at::kBFloat16 && t.bf16_reads_bits)
    x16 = x2.to(at::kBFloat16);
  else
    x32 = x2.to(at::kFloat);
  auto y32 = at::empty({M, N}, x.options().dtype(at::kFloat));
  product(t, weight, scales, x32.defined() ? x32.data_ptr<float>() : nullptr,
          x16.defined() ? reinterpret_cast<const uint16_t*>(x16.data_ptr<at::BFloat16>()) : nullptr, M, K,
          y32.data_ptr<float>());
  if (bias.defined()) y32.add_(bias.to(at::kFloat));
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y32.to(x.scalar_type()).view(shape);
}

}  // namespace

const char* name(Kernels kernels) {
  switch (kernels) {
    case Kernels::aten: return "aten";
    case Kernels::avx2: return "avx2";
    case Kernels::avx512: return "avx512";
  }
  return "?";
}

Choice chosen() {
  const int v = g_override.load(std::memory_order_relaxed);
  return v != 0 ? unpack(v) : decision().choice;
}

void set_choice(const Choice& choice) {
  const std::pair<Kernels, at::ScalarType> parts[] = {
      {choice.f32, at::kFloat}, {choice.bf16, at::kBFloat16}, {choice.int8, at::kChar}, {choice.grouped, at::kByte}};
  for (const auto& [k, dtype] : parts)
    if (const auto problem = cannot_run(k, dtype))
      throw std::invalid_argument(
          fmt::format("cpu_gemv::set_choice: {} kernels for {} weights: {}", name(k), dtype_name(dtype), *problem));
  if (const auto problem = cannot_run_gemm(choice.gemm))
    throw std::invalid_argument(
        fmt::format("cpu_gemv::set_choice: the {} prompt GEMM: {}", name(choice.gemm), *problem));
  g_override.store(pack(choice), std::memory_order_relaxed);
}

std::vector<Kernels> runnable(at::ScalarType weight_dtype) {
  std::vector<Kernels> out;
  for (const Kernels k : {Kernels::aten, Kernels::avx2, Kernels::avx512})
    if (!cannot_run(k, weight_dtype)) out.push_back(k);
  return out;
}

std::string describe() {
  const Cpu& c = cpu();
  const Decision& d = decision();
  const Choice now = chosen();
  std::string out = fmt::format("cpu: {} ({})\n", c.model, c.vendor);
  out += fmt::format(
      "features: avx2+fma {}, f16c {}, avx512 f/bw/vl {}, avx512_bf16 {}, avx512_vnni {}, avx_vnni {}, amx_bf16 {}, "
      "amx_int8 {}\n",
      c.avx2 ? "yes" : "no", c.f16c ? "yes" : "no", c.avx512 ? "yes" : "no", c.avx512_bf16 ? "yes" : "no",
      c.avx512_vnni ? "yes" : "no", c.avx_vnni ? "yes" : "no", c.amx_bf16 ? "yes" : "no", c.amx_int8 ? "yes" : "no");
  out += fmt::format("setting: {}\n", d.setting);
  out += fmt::format("threads: {} (at::get_num_threads)\n", at::get_num_threads());
  const auto line = [&](const char* dtype, Kernels k, const std::string& why, at::ScalarType t) {
    std::vector<std::string> can;
    for (const Kernels r : runnable(t)) can.emplace_back(name(r));
    return fmt::format("{:<5} weights, 1-{} rows: {:<7} ({}; runnable here: {})\n", dtype, kMaxRows, name(k), why,
                       fmt::join(can, ", "));
  };
  out += line("f32", now.f32, d.why_f32, at::kFloat);
  out += line("bf16", now.bf16, d.why_bf16, at::kBFloat16);
  out += line("int8", now.int8, d.why_int8, at::kChar);
  out += line("q4/q8 groups", now.grouped, d.why_grouped, at::kByte);
  if (!(now == d.choice)) out += "(the choice was replaced in this process by cpu_gemv::set_choice)\n";
  const std::string f32_gemm = now.gemm == Kernels::aten ? "MKL" : fmt::format("ours ({})", name(now.gemm));
  const std::string blocks = now.gemm == Kernels::aten ? "float32 blocks + MKL" : f32_gemm + ", float32 blocks";
  out += fmt::format("more than {} rows (prompt), in float32: {} ({})\n", kMaxRows, f32_gemm, d.why_gemm);
  out += fmt::format("  f32 weights: {}; q4/q8 groups: {}\n", f32_gemm, blocks);
  out += fmt::format("  bf16: {} ({})\n", now.bf16_prompt_float32 ? blocks : "ATen (oneDNN)", d.why_bf16_prompt);
  out += fmt::format(
      "  int8 (per channel): {} ({})\n",
      now.int8_prompt_llm_int8 ? "LLM.int8(): int8 activations per row, at::_int_mm, outliers in float32" : blocks,
      d.why_int8_prompt);
  out += "training (autograd): ATen for every dtype\n";
  return out;
}

namespace {

// linear_f32 and linear_bf16: x and the weight both of `dtype`, through family k.
at::Tensor dense_linear(at::ScalarType dtype, Kernels k, const at::Tensor& x, const at::Tensor& weight,
                        const at::Tensor& bias) {
  if (x.scalar_type() != dtype || weight.scalar_type() != dtype) return {};
  const int64_t M = small_rows(x, weight);
  if (k == Kernels::aten || M == 0) return {};
  if (bias.defined() && (bias.numel() != weight.size(0) || !bias.is_cpu())) return {};
  return tensor_product(k, x, M, weight, {}, bias);
}

}  // namespace

at::Tensor linear_f32(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return dense_linear(at::kFloat, chosen().f32, x, weight, bias);
}

at::Tensor linear_bf16(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return dense_linear(at::kBFloat16, chosen().bf16, x, weight, bias);
}

at::Tensor linear_int8(const at::Tensor& x, const at::Tensor& values, const at::Tensor& scales) {
  if (values.scalar_type() != at::kChar || scales.scalar_type() != at::kFloat || !scales.is_contiguous()) return {};
  if (x.scalar_type() != at::kBFloat16 && x.scalar_type() != at::kFloat) return {};
  const Kernels k = chosen().int8;
  const int64_t M = small_rows(x, values);
  if (k == Kernels::aten || M == 0) return {};
  if (scales.numel() != values.size(0) || !scales.is_cpu()) return {};
  return tensor_product(k, x, M, values, scales, {});
}

at::Tensor linear_grouped(const at::Tensor& x, const at::Tensor& values, const at::Tensor& scales) {
  if (!is_grouped(values, scales) || !scales.is_contiguous() || !scales.is_cpu()) return {};
  if (x.scalar_type() != at::kBFloat16 && x.scalar_type() != at::kFloat) return {};
  const Kernels k = chosen().grouped;
  if (k == Kernels::aten || !x.is_cpu() || !values.is_cpu() || !values.is_contiguous() || x.dim() < 1) return {};
  const int64_t K = x.size(-1), Kp = values.scalar_type() == at::kByte ? values.size(1) * 2 : values.size(1);
  if (K == 0 || Kp < K || !kernel_group_size(values, scales)) return {};
  const int64_t M = x.numel() / K;
  if (M < 1 || M > kMaxRows) return {};
  return tensor_product(k, x, M, values, scales, {});
}

// Weight elements converted per block: 2 MiB of float32 (256 rows of K=2048) stays in cache
// between the conversion and the product.
constexpr int64_t kBlockElements = int64_t{1} << 19;

at::Tensor float32_blocks_mm(const at::Tensor& x2, const at::Tensor& weight) {
  const int64_t M = x2.size(0), N = weight.size(0), K = weight.size(1);
  const int64_t rows = std::min(N, std::max<int64_t>(16, kBlockElements / std::max<int64_t>(K, 1)));
  const auto f32 = x2.options().dtype(at::kFloat);
  auto y = at::empty({M, N}, f32);
  auto block = at::empty({rows, K}, f32);
  const auto x = x2.to(at::kFloat).contiguous();
  for (int64_t n0 = 0; n0 < N; n0 += rows) {
    const int64_t n = std::min(rows, N - n0);
    auto w = block.narrow(0, 0, n);
    w.copy_(weight.narrow(0, n0, n));
    y.narrow(1, n0, n).copy_(at::mm(x, w.t()));
  }
  return y;
}

at::Tensor grouped_blocks_mm(const at::Tensor& x2, const at::Tensor& values, const at::Tensor& scales) {
  const Kernels k = chosen().grouped;
  if (k == Kernels::aten || !is_grouped(values, scales) || !values.is_cpu() || !values.is_contiguous() ||
      !scales.is_contiguous() || !kernel_group_size(values, scales))
    return {};
  if (auto y = prompt_mm(x2, values, scales); y.defined()) return y;
  const kernels::Table& t = *table(k);
  const bool four_bit = values.scalar_type() == at::kByte;
  const int64_t M = x2.size(0), K = x2.size(1), N = values.size(0);
  const int64_t Kp = four_bit ? values.size(1) * 2 : values.size(1), G = Kp / scales.size(1);
  const int64_t rows = std::min(N, std::max<int64_t>(16, kBlockElements / Kp));
  const auto f32 = x2.options().dtype(at::kFloat);
  auto y = at::empty({M, N}, f32);
  auto block = at::empty({rows, Kp}, f32);
  const auto x = x2.to(at::kFloat).contiguous();
  const auto* s = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::Half>());
  for (int64_t n0 = 0; n0 < N; n0 += rows) {
    const int64_t n = std::min(rows, N - n0);
    float* out = block.data_ptr<float>();
    at::parallel_for(n0, n0 + n, 16, [&](int64_t a, int64_t b) {
      t.dequantize(values.data_ptr(), four_bit ? 4 : 8, s, G, Kp, 0, Kp, out + (a - n0) * Kp, Kp, a, b);
    });
    y.narrow(1, n0, n).copy_(at::mm(x, block.narrow(0, 0, n).narrow(1, 0, K).t()));
  }
  return y;
}

namespace {

// Where prompt_mm's weight blocks come from: rows [n0, n0 + nb), inputs [k0, k0 + kc) as
// float32, in place or converted into buf (room for nb rows of kc rounded up to 32); returns
// the block and sets its row stride.
struct WeightBlocks {
  const kernels::PromptGemm& gemm;
  const at::Tensor& weight;
  const at::Tensor& scales;
  const float* operator()(int64_t n0, int64_t nb, int64_t k0, int64_t kc, float* buf, int64_t& ld) const {
    const int64_t stride = weight.size(1);
    ld = kc;
    const int64_t runs_end = k0 + (kc + 31) / 32 * 32;  // group-wise: whole runs (the padding is zeros)
    switch (weight.scalar_type()) {
      case at::kFloat: ld = stride; return weight.data_ptr<float>() + n0 * stride + k0;
      case at::kBFloat16:
        gemm.widen_bf16(reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>()) + n0 * stride + k0, stride,
                        nb, kc, buf);
        break;
      case at::kChar:
        if (is_grouped(weight, scales)) {
          const int64_t Kp = stride, G = Kp / scales.size(1);
          ld = runs_end - k0;
          kernels::avx2()->dequantize(weight.data_ptr(), 8, reinterpret_cast<const uint16_t*>(scales.data_ptr()), G, Kp,
                                      k0, runs_end, buf, ld, n0, n0 + nb);
        } else {
          gemm.widen_int8(weight.data_ptr<int8_t>() + n0 * stride + k0, stride, nb, kc, scales.data_ptr<float>() + n0,
                          buf);
        }
        break;
      default: {  // 4-bit groups
        const int64_t Kp = stride * 2, G = Kp / scales.size(1);
        ld = runs_end - k0;
        kernels::avx2()->dequantize(weight.data_ptr(), 4, reinterpret_cast<const uint16_t*>(scales.data_ptr()), G, Kp,
                                    k0, runs_end, buf, ld, n0, n0 + nb);
      }
    }
    return buf;
  }
};

// Whether prompt_mm multiplies this weight: a contiguous CPU [N, K'] weight of a kind it reads.
bool prompt_weight(const at::Tensor& weight, const at::Tensor& scales, int64_t K) {
  if (!weight.is_cpu() || weight.dim() != 2 || !weight.is_contiguous() || weight.size(0) == 0) return false;
  switch (weight.scalar_type()) {
    case at::kFloat:
    case at::kBFloat16: return weight.size(1) == K;
    case at::kChar:
      if (is_grouped(weight, scales)) break;
      return weight.size(1) == K && scales.defined() && scales.scalar_type() == at::kFloat && scales.is_cpu() &&
             scales.is_contiguous() && scales.numel() == weight.size(0);
    case at::kByte: break;
    default: return false;
  }
  // Group-wise: the dequantiser takes runs of 32 and group sizes of 32, 64 or 128.
  if (!is_grouped(weight, scales) || !scales.is_cpu() || !scales.is_contiguous() ||
      !kernel_group_size(weight, scales) || cannot_run(Kernels::avx2, at::kByte))
    return false;
  const int64_t Kp = weight.scalar_type() == at::kByte ? weight.size(1) * 2 : weight.size(1);
  return K <= Kp && K > Kp - Kp / scales.size(1);
}

}  // namespace

at::Tensor prompt_mm(const at::Tensor& x2, const at::Tensor& weight, const at::Tensor& scales) {
  if (chosen().gemm != Kernels::avx2 || x2.dim() != 2 || !x2.is_cpu() || x2.size(0) == 0 || x2.size(1) == 0) return {};
  if (x2.scalar_type() != at::kFloat && x2.scalar_type() != at::kBFloat16) return {};
  const int64_t M = x2.size(0), K = x2.size(1), N = weight.size(0);
  if (!prompt_weight(weight, scales, K)) return {};
  const kernels::PromptGemm& gemm = *kernels::prompt_gemm_avx2();
  const WeightBlocks blocks{gemm, weight, scales};
  const auto x = x2.to(at::kFloat).contiguous();
  const float* xs = x.data_ptr<float>();
  auto y = at::empty({M, N}, x.options());
  float* ys = y.data_ptr<float>();

  // Inputs per block: a multiple of 32 (the group-wise dequantiser's runs) that keeps a block
  // of weight rows and a panel of activations in L1/L2. Weight rows per block: a multiple of
  // the tile's 6, at most 96, small enough that every thread gets several blocks.
  constexpr int64_t kInputs = 256, kRowsOfX = 256;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t rows = std::clamp<int64_t>((N / (4 * threads)) / 6 * 6, 6, 96);
  const int64_t n_blocks = (N + rows - 1) / rows;
  std::vector<float> xp;
  for (int64_t m_start = 0; m_start < M; m_start += kRowsOfX) {
    // Activations [m_start, m_start + Mc) packed into panels (kernels::prompt_panel_width).
    const int64_t Mc = std::min(kRowsOfX, M - m_start), Mp = (Mc + 7) / 8 * 8;
    xp.assign(static_cast<size_t>(Mp * K), 0.0f);
    std::vector<int64_t> panels;
    for (int64_t m0 = 0; m0 < Mp; m0 += kernels::prompt_panel_width(Mp - m0)) panels.push_back(m0);
    at::parallel_for(0, static_cast<int64_t>(panels.size()), 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t m0 = panels[static_cast<size_t>(p)], width = kernels::prompt_panel_width(Mp - m0);
        float* dst = xp.data() + m0 * K;
        for (int64_t j = 0; j < width && m0 + j < Mc; ++j) {
          const float* src = xs + (m_start + m0 + j) * K;
          for (int64_t k = 0; k < K; ++k) dst[k * width + j] = src[k];
        }
      }
    });
    at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> buf(static_cast<size_t>(rows * kInputs)), ct(static_cast<size_t>(rows * Mp));
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t n0 = b * rows, nb = std::min(rows, N - n0);
        std::fill(ct.begin(), ct.end(), 0.0f);
        for (int64_t k0 = 0; k0 < K; k0 += kInputs) {
          const int64_t kc = std::min(kInputs, K - k0);
          int64_t ld = 0;
          const float* w = blocks(n0, nb, k0, kc, buf.data(), ld);
          gemm.block(w, ld, nb, xp.data(), K, k0, kc, Mp, ct.data());
        }
        for (int64_t n = 0; n < nb; ++n)
          for (int64_t m = 0; m < Mc; ++m) ys[(m_start + m) * N + n0 + n] = ct[static_cast<size_t>(n * Mp + m)];
      }
    });
  }
  return y;
}

at::Tensor linear_f32_prompt(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (x.scalar_type() != at::kFloat || weight.scalar_type() != at::kFloat || x.dim() < 1 || weight.dim() != 2)
    return {};
  const int64_t K = weight.size(1), N = weight.size(0);
  if (x.size(-1) != K || K == 0 || x.numel() / K <= kMaxRows) return {};
  if (bias.defined() && (!bias.is_cpu() || bias.numel() != N)) return {};
  auto y = prompt_mm(x.reshape({-1, K}), weight, {});
  if (!y.defined()) return {};
  if (bias.defined()) y.add_(bias.to(at::kFloat));
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y.view(shape);
}

at::Tensor linear_bf16_prompt(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (!chosen().bf16_prompt_float32 || x.scalar_type() != at::kBFloat16 || weight.scalar_type() != at::kBFloat16)
    return {};
  if (!x.is_cpu() || !weight.is_cpu() || weight.dim() != 2 || x.dim() < 1 || x.size(-1) != weight.size(1)) return {};
  if (bias.defined() && (!bias.is_cpu() || bias.numel() != weight.size(0))) return {};
  const int64_t K = weight.size(1), N = weight.size(0);
  // A few rows are a GEMV: converting the whole weight would triple what it reads.
  if (x.numel() / std::max<int64_t>(K, 1) <= kMaxRows) return {};
  const auto x2 = x.reshape({-1, K});
  auto y = prompt_mm(x2, weight, {});
  if (!y.defined()) y = float32_blocks_mm(x2, weight);
  if (bias.defined()) y.add_(bias.to(at::kFloat));
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y.to(at::kBFloat16).view(shape);
}

namespace {

// The family linear_row uses for a weight dtype (aten: none); kByte: group-wise weights.
Kernels row_family(at::ScalarType weight_dtype) {
  const Choice c = chosen();
  if (weight_dtype == at::kBFloat16) return c.bf16;
  if (weight_dtype == at::kChar) return c.int8;
  if (weight_dtype == at::kFloat) return c.f32 != Kernels::aten ? c.f32 : c.int8;
  if (weight_dtype == at::kByte) return c.grouped;
  return Kernels::aten;
}
Kernels row_family(const at::Tensor& weight, const at::Tensor& scales) {
  return row_family(is_grouped(weight, scales) ? at::kByte : weight.scalar_type());
}

// x[K] as bf16 bits where table t multiplies bf16 weights with them (AVX512-BF16), else
// nullptr. The buffer is this thread's, valid until its next call.
const uint16_t* bits_if_needed(const kernels::Table& t, at::ScalarType weight_dtype, const float* x, int64_t K) {
  if (weight_dtype != at::kBFloat16 || !t.bf16_reads_bits) return nullptr;
  thread_local std::vector<uint16_t> bits;
  bits.resize(static_cast<size_t>(K));
  for (int64_t i = 0; i < K; ++i) bits[static_cast<size_t>(i)] = c10::BFloat16(x[i]).x;
  return bits.data();
}

}  // namespace

bool row_available(at::ScalarType weight_dtype) { return row_family(weight_dtype) != Kernels::aten; }
bool row_available(const at::Tensor& weight, const at::Tensor& scales) {
  if (is_grouped(weight, scales) && !kernel_group_size(weight, scales)) return false;
  return row_family(weight, scales) != Kernels::aten;
}

void linear_row(const at::Tensor& weight, const at::Tensor& scales, const float* x, int64_t K, float* y) {
  const Kernels k = row_family(weight, scales);
  if (k == Kernels::aten)
    throw std::logic_error("cpu_gemv::linear_row called for a weight it does not handle (check row_available first)");
  const kernels::Table& t = *table(k);
  product(t, weight, scales, x, bits_if_needed(t, weight.scalar_type(), x, K), 1, K, y);
}

void linear_rows(const std::vector<RowProduct>& products, const float* x, int64_t K) {
  if (products.empty()) return;
  const auto& first = products.front();
  const auto dtype = first.weight.scalar_type();
  const bool grouped = is_grouped(first.weight, first.scales);
  int64_t total = 0;
  bool uniform = true;
  for (const auto& p : products) {
    uniform = uniform && p.weight.scalar_type() == dtype && p.weight.size(1) == first.weight.size(1) &&
              is_grouped(p.weight, p.scales) == grouped;
    total += p.weight.size(0);
  }
  const Kernels k = row_family(first.weight, first.scales);
  if (!uniform || k == Kernels::aten) {
    for (const auto& p : products) linear_row(p.weight, p.scales, x, K, p.y);
    return;
  }
  const kernels::Table& t = *table(k);
  if (grouped) {  // x quantised once for all of them
    const int64_t Kp = dtype == at::kByte ? first.weight.size(1) * 2 : first.weight.size(1);
    const QuantizedX qx = quantize_activations(t, x, 1, K, Kp);
    at::parallel_for(0, total, grain_rows(first.weight.size(1), 1), [&](int64_t r0, int64_t r1) {
      int64_t base = 0;
      for (const auto& p : products) {
        const int64_t N = p.weight.size(0), n0 = std::max<int64_t>(r0 - base, 0), n1 = std::min<int64_t>(r1 - base, N);
        if (n0 < n1) grouped_rows(t, p.weight, p.scales, qx, 1, p.y, n0, n1);
        base += N;
      }
    });
    return;
  }
  const uint16_t* x16 = bits_if_needed(t, dtype, x, K);
  const Int16X xi16 = dtype == at::kChar && t.int8_x16 != nullptr ? quantize_int16(t, x, 1, K) : Int16X{};
  const int64_t element_bytes = dtype == at::kFloat ? 4 : dtype == at::kBFloat16 ? 2 : 1;
  // Rows [r0, r1) of the products stacked one after another.
  at::parallel_for(0, total, grain_rows(K, element_bytes), [&](int64_t r0, int64_t r1) {
    int64_t first = 0;
    for (const auto& p : products) {
      const int64_t N = p.weight.size(0), n0 = std::max<int64_t>(r0 - first, 0), n1 = std::min<int64_t>(r1 - first, N);
      if (n0 < n1) {
        switch (dtype) {
          case at::kFloat: t.f32(x, 1, K, p.weight.data_ptr<float>(), p.y, N, n0, n1); break;
          case at::kBFloat16:
            t.bf16(x, x16, 1, K, reinterpret_cast<const uint16_t*>(p.weight.data_ptr<at::BFloat16>()), p.y, N, n0, n1);
            break;
          default:
            if (xi16.q != nullptr)
              t.int8_x16(xi16.q, xi16.d, 1, K, p.weight.data_ptr<int8_t>(), p.scales.data_ptr<float>(), p.y, N, n0, n1);
            else
              t.int8(x, 1, K, p.weight.data_ptr<int8_t>(), p.scales.data_ptr<float>(), p.y, N, n0, n1);
            break;
        }
      }
      first += N;
    }
  });
}

}  // namespace minigpt4::cpu_gemv
