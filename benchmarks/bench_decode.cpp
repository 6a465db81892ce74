// Batch-1 greedy decoding on the CPU: time to first token and decode tokens per second of a
// random LLaMA or Phi-2 in fp32, bf16, int8 and group-wise 8/4 bits (weight-only,
// minigpt4/models/quantize.h), next to what the machine's memory bandwidth allows.
//
//   bench_decode --shape tiny|quickstart|1b|phi2|phi2-8l --dir DIR [--prompt 64] [--new-tokens N] [--repeats R]
//                [--warmup W] [--precisions fp32,bf16,int8] [--threads N] [--json PATH] [--profile DIR]
//
// It builds a LlamaForCausalLM or PhiForCausalLM of the shape with random weights
// (torch::manual_seed(0), N(0, 0.02), norm weights 1: bench::randomise), writes it to DIR as a
// Hugging Face directory (config.json + model.safetensors, float32) so that Python loads the
// same weights (benchmarks/bench_decode_ref.py runs Hugging Face and llama.cpp on them), and
// then, per precision, loads DIR into a model of that precision and times
// minigpt4::generate on a fixed prompt of token ids (embedded with llm.embed inside the timed
// region), eos_token_id -1 so that every run produces exactly --new-tokens tokens:
//   ttft     from the call (embedding included) to the first token: prefill + one argmax
//   decode   the intervals between consecutive tokens after the first; tok/s = 1000 / median
//            interval (and the mean rate over all of them)
//   gemv     the same model's linear layers alone on one token (every projection and the
//            LM head, no attention, norms or cache): the floor of one decode step in ATen's
//            kernels, so that step - gemv is the per-token overhead outside the GEMVs
// Memory bandwidth: the best of a few full reads of a 1 GiB float32 tensor (sum, and mv with it
// as a [N, 4096] matrix) and copies, with the same threads, before and after the runs (the
// best counts: a busy moment only lowers a measurement); roofline tok/s = read bandwidth /
// weight bytes read per token (every parameter except the embedding table, of which one row is
// read; the KV cache, under 5 MB here, is left out). Nothing is asserted.
#include "benchmarks/bench_shapes.h"
#include "minigpt4/generate/generate.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/io/safetensors.h"
#include "minigpt4/models/init.h"
#include "minigpt4/models/llm_family.h"
#include "minigpt4/models/memory.h"
#include "minigpt4/models/weights.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using minigpt4::CausalLM;
using minigpt4::LlamaConfig;
using minigpt4::LLMConfig;
using minigpt4::PhiConfig;
using minigpt4::WeightFormat;

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// "tiny": bench_shapes' tiny LLM (tiny_shape().llama: hidden 64, 2 layers, 4 heads, FFN 176,
// vocabulary 1000); "quickstart": the quickstart's LLM (minigpt4/quickstart/pipeline.h: hidden
// 128, 4 layers, 4 heads, FFN 344, vocabulary 512); "1b": TinyLlama-1.1B's shape
// (bench_shapes' mid_shape().llama: hidden 2048, 22 layers, 32 heads, 4 KV heads, FFN 5632,
// vocabulary 32000); "phi2": Phi-2's shape (hidden 2560, 32 layers, 32 heads, FFN 10240,
// vocabulary 51200, partial rotary 0.4: 2.8B parameters, 11 GB in float32); "phi2-8l": the
// same width with 8 of its 32 layers (a quarter of the decoder; the same GEMV shapes).
LLMConfig shape_config(const std::string& name) {
  if (name == "1b") return bench::mid_shape().llama;
  if (name == "tiny") return bench::tiny_shape().llama;
  if (name == "phi2" || name == "phi2-8l") {
    PhiConfig c;  // the defaults are microsoft/phi-2's config.json
    if (name == "phi2-8l") c.num_hidden_layers = 8;
    return c;
  }
  LlamaConfig c;
  c.vocab_size = 512;
  c.hidden_size = 128;
  c.intermediate_size = 344;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 4;
  c.rms_norm_eps = 1e-6;
  c.max_position_embeddings = 512;
  return c;
}

struct Bandwidth {
  double read_gbs = 0;  // the best of sum, mv and streams: what reading the weights can achieve
  double sum_gbs = 0, mv_gbs = 0, streams_gbs = 0, copy_gbs = 0;  // copy: the bytes read plus those written
  void merge(const Bandwidth& o) {
    read_gbs = std::max(read_gbs, o.read_gbs), sum_gbs = std::max(sum_gbs, o.sum_gbs);
    mv_gbs = std::max(mv_gbs, o.mv_gbs), streams_gbs = std::max(streams_gbs, o.streams_gbs);
    copy_gbs = std::max(copy_gbs, o.copy_gbs);
  }
};

// A read of `words` in four streams per thread, as the decode kernels read at one row
// (cpu_gemv_avx2.cpp's kStreams): one stream of consecutive reads per core, as ATen's sum
// makes, leaves bandwidth unused on a Zen 3 EPYC, so it is no roofline for them.
uint32_t read_in_four_streams(const uint32_t* words, int64_t n) {
  std::atomic<uint32_t> sink{0};
  at::parallel_for(0, n, n / std::max(1, at::get_num_threads()), [&](int64_t begin, int64_t end) {
    const int64_t part = (end - begin) / 4;
    const uint32_t *s0 = words + begin, *s1 = s0 + part, *s2 = s1 + part, *s3 = s2 + part;
    uint32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (int64_t i = 0; i < part; ++i) a0 += s0[i], a1 += s1[i], a2 += s2[i], a3 += s3[i];
    sink += a0 ^ a1 ^ a2 ^ a3;
  });
  return sink.load();
}

// Best of `tries` passes over a float32 tensor of `bytes`, in 2 MiB pages as loading places
// weights (memory.h): a full sum, a matrix-vector product with it as the [rows, 4096] matrix
// (the shape of decoding's work), a read in four streams per thread, and a copy.
Bandwidth measure_bandwidth(int64_t bytes, int tries) {
  torch::NoGradGuard no_grad;
  const int64_t cols = 4096, rows = bytes / 4 / cols, n = rows * cols;
  torch::nn::Module holder;
  holder.register_buffer("a", torch::ones({n}));
  holder.register_buffer("b", torch::empty({n}));
  minigpt4::move_to_huge_pages(holder);
  auto a = holder.named_buffers()["a"], b = holder.named_buffers()["b"];
  b.copy_(a);  // touch every page before timing
  const auto m = a.view({rows, cols});
  const auto x = torch::ones({cols});
  auto y = torch::mv(m, x);
  double best_sum = 1e300, best_mv = 1e300, best_streams = 1e300, best_copy = 1e300;
  for (int i = 0; i < tries; ++i) {
    auto start = Clock::now();
    (void)a.sum().item<float>();
    best_sum = std::min(best_sum, ms_since(start));
    start = Clock::now();
    torch::mv_out(y, m, x);
    best_mv = std::min(best_mv, ms_since(start));
    start = Clock::now();
    (void)read_in_four_streams(reinterpret_cast<const uint32_t*>(a.data_ptr<float>()), n);
    best_streams = std::min(best_streams, ms_since(start));
    start = Clock::now();
    b.copy_(a);
    best_copy = std::min(best_copy, ms_since(start));
  }
  const double nbytes = 4.0 * n;
  Bandwidth bw;
  bw.sum_gbs = nbytes / (best_sum * 1e-3) / 1e9;
  bw.mv_gbs = nbytes / (best_mv * 1e-3) / 1e9;
  bw.streams_gbs = nbytes / (best_streams * 1e-3) / 1e9;
  bw.copy_gbs = 2.0 * nbytes / (best_copy * 1e-3) / 1e9;
  bw.read_gbs = std::max({bw.sum_gbs, bw.mv_gbs, bw.streams_gbs});
  return bw;
}

minigpt4::StateDict parameters_of(const torch::nn::Module& module) {
  minigpt4::StateDict state;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) state[item.key()] = item.value().detach();
  return state;
}

// Bytes one decode step reads from the weights: every parameter and buffer but the
// embedding table, of which it reads one row.
int64_t weight_bytes_per_token(const CausalLM& llm) {
  const auto parameters = llm.named_parameters();  // find() points into it: keep it alive
  const auto e = parameters.find("model.embed_tokens.weight");
  if (!e) throw std::runtime_error("the model has no model.embed_tokens.weight");
  return minigpt4::tensor_bytes(llm).total - e->numel() * e->element_size() + e->size(1) * e->element_size();
}

// A Hugging Face config.json for the shape, which transformers' Auto classes read.
nlohmann::json config_json(const LLMConfig& config) {
  if (const auto* llama = std::get_if<LlamaConfig>(&config)) return minigpt4::llama_config_json(*llama);
  return minigpt4::phi_config_json(std::get<PhiConfig>(config));
}

struct Sizes {
  int64_t hidden, intermediate, layers, heads, kv_heads, vocab;
};
Sizes sizes_of(const LLMConfig& config) {
  return std::visit(
      [](const auto& c) {
        return Sizes{c.hidden_size,         c.intermediate_size,   c.num_hidden_layers,
                     c.num_attention_heads, c.num_key_value_heads, c.vocab_size};
      },
      config);
}

struct PrecisionSpec {
  std::string name;
  torch::Dtype dtype;
  WeightFormat format;
  bool huge_pages = true;  // the weights in 2 MiB pages, as loading places them (memory.h)
};

PrecisionSpec parse_precision(const std::string& name) {
  // "_4k": the same weights left in 4 KiB pages, to measure what the 2 MiB pages bring.
  if (name.size() > 3 && name.compare(name.size() - 3, 3, "_4k") == 0) {
    auto spec = parse_precision(name.substr(0, name.size() - 3));
    spec.name = name, spec.huge_pages = false;
    return spec;
  }
  if (name == "fp32") return {name, torch::kFloat32, WeightFormat::Dense};
  if (name == "bf16") return {name, torch::kBFloat16, WeightFormat::Dense};
  if (name == "int8") return {name, torch::kBFloat16, WeightFormat::Int8};  // int8 weights, bf16 activations
  if (name == "int8_fp32") return {name, torch::kFloat32, WeightFormat::Int8};
  // Group-wise (quantize.h): q8 = 8 bits, q4 = 4 bits, a float16 scale per 32 inputs (as
  // llama.cpp's q8_0 / q4_0), bf16 activations; _g64 / _g128 other group sizes, _fp32 float32
  // activations.
  for (const int bits : {8, 4}) {
    const std::string base = "q" + std::to_string(bits);
    for (const int64_t group : {32, 64, 128}) {
      const std::string grouped = group == 32 ? base : base + "_g" + std::to_string(group);
      if (name == grouped) return {name, torch::kBFloat16, WeightFormat{bits, group}};
      if (name == grouped + "_fp32") return {name, torch::kFloat32, WeightFormat{bits, group}};
    }
  }
  throw std::runtime_error(
      "unknown precision " + name +
      " (fp32, bf16, int8, int8_fp32, q8, q4, q4_g64, q4_g128, each q* also with _fp32; any with _4k)");
}

struct RunTimes {
  double ttft_ms = 0;
  std::vector<double> intervals_ms;  // between consecutive tokens after the first
  std::vector<int64_t> tokens;
};

// The next-token logits at every prompt position, one token at a time through the KV cache
// (the decode path, which for quantised weights also quantises the activations), float32.
torch::Tensor stepwise_logits(const CausalLM& llm, const torch::Tensor& prompt_ids) {
  const auto embeds = llm.embed(prompt_ids);
  minigpt4::KVCache cache;
  minigpt4::CausalLMOptions options;
  options.cache = &cache;
  std::vector<torch::Tensor> out;
  for (int64_t t = 0; t < embeds.size(1); ++t)
    out.push_back(llm.forward(embeds.narrow(1, t, 1), options).logits[0][0].to(torch::kFloat));
  return torch::stack(out);
}

RunTimes timed_generate(const CausalLM& llm, const torch::Tensor& prompt_ids, int64_t new_tokens) {
  minigpt4::GenerationConfig gc;
  gc.max_new_tokens = new_tokens;
  gc.eos_token_id = -1;  // never stops early
  gc.min_length = 0;
  RunTimes r;
  std::vector<Clock::time_point> stamps;
  stamps.reserve(new_tokens);
  torch::NoGradGuard no_grad;
  const auto start = Clock::now();
  const auto embeds = llm.embed(prompt_ids);
  const auto out = minigpt4::generate(llm, embeds, gc, [&](int64_t) { stamps.push_back(Clock::now()); });
  r.tokens = out.tokens;
  if (!stamps.empty()) r.ttft_ms = std::chrono::duration<double, std::milli>(stamps[0] - start).count();
  for (size_t i = 1; i < stamps.size(); ++i)
    r.intervals_ms.push_back(std::chrono::duration<double, std::milli>(stamps[i] - stamps[i - 1]).count());
  return r;
}

// Every Linear of the model (per layer: LLaMA's q, k, v, o, gate, up, down; Phi's q, k, v,
// dense, fc1, fc2; then lm_head) on one token, in the order the modules were registered, which
// is the order a decode step runs them: the GEMV floor of a step.
double gemv_ms(const CausalLM& llm, torch::Dtype dtype, int repeats) {
  torch::NoGradGuard no_grad;
  std::vector<std::shared_ptr<minigpt4::Linear>> linears;
  for (const auto& module : llm.modules(/*include_self=*/false))
    if (auto linear = std::dynamic_pointer_cast<minigpt4::Linear>(module)) linears.push_back(linear);
  std::vector<torch::Tensor> inputs;
  for (const auto& l : linears) inputs.push_back(torch::randn({1, 1, l->in_features}).to(dtype));
  std::vector<double> runs;
  for (int r = 0; r < repeats + 1; ++r) {
    const auto start = Clock::now();
    for (size_t i = 0; i < linears.size(); ++i) (void)linears[i]->forward(inputs[i]);
    if (r > 0) runs.push_back(ms_since(start));  // the first is a warm-up
  }
  return median(runs);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Batch-1 greedy decoding (TTFT, decode tok/s) of a random LLaMA or Phi-2 in fp32 / bf16 / int8 on the CPU"};
  std::string shape = "tiny", dir, json_path, precisions_arg = "fp32,bf16,int8";
  int64_t prompt_len = 64, new_tokens = 0;
  int repeats = 0, warmup = 1, threads = 0;
  double bandwidth_gib = 1.0;
  bool skip_save = false;
  app.add_option("--shape", shape,
                 "tiny (bench_shapes' tiny LLM), quickstart (the quickstart's LLM), 1b "
                 "(TinyLlama-1.1B shape), phi2 (Phi-2 shape) or phi2-8l (Phi-2 with 8 layers)")
      ->check(CLI::IsMember({"tiny", "quickstart", "1b", "phi2", "phi2-8l"}));
  app.add_option("--dir", dir, "where the Hugging Face directory (config.json + model.safetensors) goes")->required();
  app.add_option("--prompt", prompt_len, "prompt length in tokens")->capture_default_str();
  app.add_option("--new-tokens", new_tokens,
                 "tokens generated per run (0: tiny/quickstart 128, 1b/phi2-8l 32, phi2 16)");
  app.add_option("--repeats", repeats, "timed generations per precision (0: tiny/quickstart 5, 1b/phi2-8l 3, phi2 2)");
  app.add_option("--warmup", warmup, "untimed generations of min(8, new tokens) tokens first")->capture_default_str();
  app.add_option("--precisions", precisions_arg,
                 "comma-separated: fp32, bf16, int8 (bf16 activations), int8_fp32, q8, q4, q4_g64, q4_g128 (bf16 "
                 "activations; each also _fp32); any with _4k: the weights left in 4 KiB pages, not moved into 2 MiB "
                 "ones as loading does")
      ->capture_default_str();
  int head_bits = 0;
  app.add_option("--lm-head-bits", head_bits,
                 "lm_head in 16 or 8 bits (groups of 32); 0: as model.llm_head_bits' default (8 under q8/q4, else 16)")
      ->check(CLI::IsMember({0, 8, 16}))
      ->capture_default_str();
  app.add_option("--threads", threads, "at::set_num_threads (0: LibTorch's default)");
  app.add_option("--bandwidth-gib", bandwidth_gib, "size of the bandwidth test tensor")->capture_default_str();
  std::string profile_dir;
  app.add_option("--profile", profile_dir,
                 "also write a LibTorch profiler trace of a 9-token generation per precision to "
                 "DIR/<shape>_<precision>.trace.json (chrome://tracing format)");
  app.add_flag("--skip-save", skip_save, "reuse the weights already in --dir (written by an earlier run)");
  app.add_option("--json", json_path, "write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);
  const bool large = shape == "1b" || shape == "phi2-8l";
  if (new_tokens <= 0) new_tokens = shape == "phi2" ? 16 : large ? 32 : 128;
  if (repeats <= 0) repeats = shape == "phi2" ? 2 : large ? 3 : 5;
  if (threads > 0) at::set_num_threads(threads);
  torch::set_num_interop_threads(1);

  try {
    std::vector<PrecisionSpec> precisions;
    {
      std::stringstream ss(precisions_arg);
      for (std::string p; std::getline(ss, p, ',');)
        if (!p.empty()) precisions.push_back(parse_precision(p));
    }
    const auto config = shape_config(shape);
    const auto sizes = sizes_of(config);
    const auto family = std::holds_alternative<PhiConfig>(config) ? "phi" : "llama";
    fmt::print(
        "LibTorch {}, {} intra-op threads; shape {} ({}): hidden {}, {} layers, {} heads ({} KV), FFN {}, vocab {}\n",
        TORCH_VERSION, at::get_num_threads(), shape, family, sizes.hidden, sizes.layers, sizes.heads, sizes.kv_heads,
        sizes.intermediate, sizes.vocab);
    const int64_t bw_bytes = static_cast<int64_t>(bandwidth_gib * (1 << 30));
    auto report_bandwidth = [&](const char* when, const Bandwidth& b) {
      fmt::print(
          "memory bandwidth {} ({} threads, {:.2f} GiB float32): sum {:.1f} GB/s, mv {:.1f} GB/s, four streams per "
          "thread {:.1f} GB/s, copy {:.1f} GB/s\n",
          when, at::get_num_threads(), bandwidth_gib, b.sum_gbs, b.mv_gbs, b.streams_gbs, b.copy_gbs);
      std::fflush(stdout);
    };
    // Measured before and after the runs; the best read figure sets the roofline (a busy
    // moment can only make a measurement lower).
    Bandwidth bw = measure_bandwidth(bw_bytes, 8);
    report_bandwidth("before", bw);

    // Random fp32 weights, written as a Hugging Face directory.
    fs::create_directories(dir);
    if (!skip_save) {
      torch::NoGradGuard no_grad;
      torch::manual_seed(0);
      const auto start = Clock::now();
      const auto llm = minigpt4::make_causal_lm(config, torch::TensorOptions().dtype(torch::kFloat32));
      bench::randomise(*llm);
      minigpt4::io::save_safetensors((fs::path(dir) / "model.safetensors").string(), parameters_of(*llm),
                                     {{"format", "pt"}});
      std::ofstream out(fs::path(dir) / "config.json");
      out << config_json(config).dump(2) << "\n";
      if (!out.flush()) throw std::runtime_error("cannot write config.json in " + dir);
      fmt::print("wrote {} ({:.1f} s)\n", dir, ms_since(start) / 1e3);
    }

    // A fixed prompt of ids (no special ids), the same for every side.
    std::vector<int64_t> prompt;
    for (int64_t i = 0; i < prompt_len; ++i) prompt.push_back(3 + (i * 7919 + 13) % (sizes.vocab - 3));
    const auto prompt_ids = torch::tensor(prompt, torch::kLong).view({1, prompt_len});

    nlohmann::ordered_json json;
    json["shape"] = shape;
    json["family"] = family;
    json["config"] = config_json(config);
    json["threads"] = at::get_num_threads();
    json["torch"] = TORCH_VERSION;
    json["weights_dir"] = dir;
    json["prompt_ids"] = prompt;
    json["new_tokens"] = new_tokens;
    json["repeats"] = repeats;
    json["warmup"] = warmup;
    auto& results = json["results"];

    torch::Tensor reference_logits;
    std::string reference_name;
    for (const auto& p : precisions) {
      torch::NoGradGuard no_grad;
      const bool head8 = head_bits == 8 || (head_bits == 0 && p.format.group_size > 0);
      const auto llm_ptr = minigpt4::make_causal_lm(config, torch::TensorOptions().dtype(p.dtype), p.format,
                                                    head8 ? WeightFormat{8, 32} : WeightFormat::Dense);
      CausalLM& llm = *llm_ptr;
      llm.eval();
      {
        const auto state = minigpt4::io::load_state_dict(dir);
        std::set<std::string> filled;
        minigpt4::LoadSpec spec;
        spec.source = dir;
        minigpt4::load_into(llm, state, spec, filled);
        const auto missing = minigpt4::unfilled_parameters(llm, filled);
        if (!missing.empty()) throw std::runtime_error("missing weights: " + minigpt4::summarize_names(missing));
      }
      // load_into copied the tensors out of the memory-mapped file, which is unmapped by now.
      const int64_t bytes_per_token = weight_bytes_per_token(llm);
      if (p.huge_pages) minigpt4::move_to_huge_pages(llm);  // as loading does (memory.h)
      minigpt4::release_free_heap();
      const int64_t resident_after_load = minigpt4::resident_set_bytes();
      fmt::print("\n[{}] weights read per token {:.1f} MB; resident after loading {}\n", p.name, bytes_per_token / 1e6,
                 minigpt4::format_bytes(resident_after_load));

      std::fflush(stdout);
      // Agreement with the first precision's next-token logits over the prompt (top-1 and the
      // lowest cosine, as tests/models/test_quantize.cpp measures on the fixtures).
      const auto logits = stepwise_logits(llm, prompt_ids);
      if (!reference_logits.defined()) reference_logits = logits, reference_name = p.name;
      const double top1 = (logits.argmax(-1) == reference_logits.argmax(-1)).to(torch::kDouble).mean().item<double>();
      const double cosine = torch::cosine_similarity(logits.to(torch::kDouble), reference_logits.to(torch::kDouble), -1)
                                .min()
                                .item<double>();
      fmt::print("  against {}: top-1 agreement {:.4f} over {} positions, lowest cosine {:.6f}\n", reference_name, top1,
                 logits.size(0), cosine);
      for (int w = 0; w < warmup; ++w) timed_generate(llm, prompt_ids, std::min<int64_t>(8, new_tokens));
      std::vector<double> ttfts, intervals, rates;
      std::vector<int64_t> tokens;
      for (int r = 0; r < repeats; ++r) {
        auto t = timed_generate(llm, prompt_ids, new_tokens);
        const double total = std::accumulate(t.intervals_ms.begin(), t.intervals_ms.end(), 0.0);
        const double rate = t.intervals_ms.empty() ? 0 : 1000.0 * t.intervals_ms.size() / total;
        fmt::print("  run {}: ttft {:.2f} ms, decode median {:.3f} ms/token, mean {:.2f} tok/s\n", r + 1, t.ttft_ms,
                   median(t.intervals_ms), rate);
        std::fflush(stdout);
        ttfts.push_back(t.ttft_ms);
        rates.push_back(rate);
        intervals.insert(intervals.end(), t.intervals_ms.begin(), t.intervals_ms.end());
        if (r == 0) tokens = t.tokens;
      }
      const double gemv = gemv_ms(llm, p.dtype, std::max(3, repeats));
      if (!profile_dir.empty()) {
        fs::create_directories(profile_dir);
        const auto trace = (fs::path(profile_dir) / fmt::format("{}_{}.trace.json", shape, p.name)).string();
        {
          torch::autograd::profiler::RecordProfile guard(trace);
          timed_generate(llm, prompt_ids, 9);
        }
        fmt::print("  profiler trace: {}\n", trace);
      }
      const double step = median(intervals);
      fmt::print(
          "  ttft median {:.2f} ms; decode {:.2f} tok/s (median step {:.3f} ms; linear layers alone {:.3f} ms)\n",
          median(ttfts), 1000.0 / step, step, gemv);
      results[p.name] = {{"ttft_ms", ttfts},
                         {"ttft_ms_median", median(ttfts)},
                         {"decode_step_ms", intervals},
                         {"decode_step_ms_median", step},
                         {"decode_tok_s", 1000.0 / step},
                         {"decode_tok_s_mean", rates},
                         {"gemv_ms", gemv},
                         {"weight_bytes_per_token", bytes_per_token},
                         {"agreement", {{"reference", reference_name}, {"top1", top1}, {"min_cosine", cosine}}},
                         {"resident_bytes_after_load", resident_after_load},
                         {"tokens", tokens}};
    }

    const auto bw_after = measure_bandwidth(bw_bytes, 8);
    report_bandwidth("after", bw_after);
    bw.merge(bw_after);
    json["bandwidth_gbs"] = {{"read", bw.read_gbs},       {"sum", bw.sum_gbs},   {"mv", bw.mv_gbs},
                             {"streams", bw.streams_gbs}, {"copy", bw.copy_gbs}, {"bytes", bw_bytes}};
    for (auto& [name, r] : results.items())
      if (r.contains("weight_bytes_per_token"))
        r["roofline_tok_s"] = bw.read_gbs * 1e9 / r["weight_bytes_per_token"].get<double>();
    fmt::print("\n{} (prompt {}, {} new tokens, {} runs each; read bandwidth {:.1f} GB/s)\n", shape, prompt_len,
               new_tokens, repeats, bw.read_gbs);
    fmt::print("{:<10} {:>10} {:>12} {:>12} {:>10} {:>10}\n", "precision", "ttft ms", "decode tok/s", "roofline",
               "MB/token", "gemv ms");
    for (const auto& p : precisions) {
      const auto& r = results[p.name];
      if (r.contains("skipped")) {
        fmt::print("{:<10} skipped: {}\n", p.name, r["skipped"].get<std::string>());
        continue;
      }
      fmt::print("{:<10} {:>10.2f} {:>12.2f} {:>12.2f} {:>10.1f} {:>10.3f}\n", p.name,
                 r["ttft_ms_median"].get<double>(), r["decode_tok_s"].get<double>(), r["roofline_tok_s"].get<double>(),
                 r["weight_bytes_per_token"].get<double>() / 1e6, r["gemv_ms"].get<double>());
    }
    if (!json_path.empty()) {
      std::ofstream out(json_path);
      out << json.dump(2) << "\n";
      if (!out.flush()) throw std::runtime_error("cannot write " + json_path);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
