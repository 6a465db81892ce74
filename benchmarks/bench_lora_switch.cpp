// What switching LoRA adapters per request costs (a chat server serving several tasks,
// ConLoRA's detection / OCR adapters), on the mid shape's LLM (TinyLlama-1.1B: bench_shapes'
// mid_shape) with two adapters on q_proj and v_proj of every layer. Nothing is asserted.
//
//   bench_lora_switch [--threads 2] [--dtype fp32|bf16] [--rank 8] [--alpha 32] [--switches 200]
//                     [--merged-switches 10] [--repeats 3] [--decode-repeats 20] [--json out.json]
//
// Switching unmerged flips which adapter each layer applies: no weight changes. Switching
// merged takes the previous adapter's update out of every adapted base weight and folds the
// new one in (2 x 44 products B A of [out, r] x [r, in] and weight updates). Unmerged
// adapters cost two small products per adapted layer and token instead; the prefill and
// decode-step times with no adapter, an unmerged one and a merged one show that side.
#include "benchmarks/bench_shapes.h"
#include "minigpt4/models/lora.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <fstream>

using namespace minigpt4;

namespace {

struct Timing {
  double median_ms = 0, min_ms = 0;
  std::vector<double> runs;
};

// `repeats` timed calls after one untimed warm-up.
Timing time_calls(const std::function<void(int)>& call, int repeats) {
  call(-1);
  Timing t;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    call(i);
    t.runs.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  auto sorted = t.runs;
  std::sort(sorted.begin(), sorted.end());
  const size_t n = sorted.size();
  t.median_ms = n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  t.min_ms = sorted.front();
  return t;
}

nlohmann::json to_json(const Timing& t) { return {{"median_ms", t.median_ms}, {"min_ms", t.min_ms}, {"runs", t.runs}}; }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Cost of switching LoRA adapters per request (mid LLM, q_proj/v_proj adapters)"};
  int threads = 2, rank = 8, switches = 200, merged_switches = 10, repeats = 3, decode_repeats = 20;
  double alpha = 32;
  std::string dtype_name = "fp32", json_path;
  app.add_option("--threads", threads);
  app.add_option("--dtype", dtype_name)->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--rank", rank);
  app.add_option("--alpha", alpha);
  app.add_option("--switches", switches, "timed unmerged switches");
  app.add_option("--merged-switches", merged_switches, "timed merged switches");
  app.add_option("--repeats", repeats, "timed prefills per condition");
  app.add_option("--decode-repeats", decode_repeats, "timed decode steps per condition");
  app.add_option("--json", json_path);
  CLI11_PARSE(app, argc, argv);
  at::set_num_threads(threads);
  at::set_num_interop_threads(1);
  torch::NoGradGuard no_grad;

  const auto shape = bench::mid_shape();
  const auto dtype = parse_dtype(dtype_name);
  torch::manual_seed(0);
  LlamaForCausalLM llm(shape.llama, torch::TensorOptions().dtype(dtype));
  bench::randomise(llm);
  lora::LoraConfig config;
  config.r = rank;
  config.lora_alpha = alpha;
  config.target_modules = {"q_proj", "v_proj"};
  const auto layers = lora::add_adapter(llm, "task_a", config);
  lora::add_adapter(llm, "task_b", config);
  for (const auto& l : lora::lora_layers(llm))
    for (const auto& name : l.layer->adapter_names()) l.layer->adapter(name).B.normal_(0, 0.02);  // non-zero updates
  int64_t adapter_params = 0;
  for (const auto& [name, w] : lora::adapter_weights(llm, "task_a")) adapter_params += w.numel();

  fmt::print(
      "mid LLM ({} layers, hidden {}), {}, {} threads; adapters on {} layers (q_proj, v_proj), r {}, "
      "{} parameters each\n",
      shape.llama.num_hidden_layers, shape.llama.hidden_size, dtype_name, at::get_num_threads(), layers.size(), rank,
      adapter_params);

  const char* names[] = {"task_a", "task_b"};
  const auto unmerged = time_calls([&](int i) { lora::set_active_adapter(llm, names[(i + 2) % 2]); }, switches);
  const auto merged =
      time_calls([&](int i) { lora::set_active_adapter(llm, names[(i + 2) % 2], /*merge=*/true); }, merged_switches);
  lora::set_active_adapter(llm, "original");
  fmt::print("switch, ms per request, median (min): unmerged {:.4f} ({:.4f}) over {}; merged {:.1f} ({:.1f}) over {}\n",
             unmerged.median_ms, unmerged.min_ms, switches, merged.median_ms, merged.min_ms, merged_switches);

  // The other side: what the adapter costs per forward when not merged. First one adapted
  // q_proj on one token (the decode shape), with and without its adapter.
  {
    const auto& q_proj = *llm.layers->ptr(0)->as<LlamaDecoderLayer>()->self_attn->q_proj;
    const auto x = torch::randn({1, 1, shape.llama.hidden_size}).to(dtype);
    const auto plain = time_calls([&](int) { q_proj.forward(x); }, 2000);
    lora::set_active_adapter(llm, "task_a");
    const auto adapted = time_calls([&](int) { q_proj.forward(x); }, 2000);
    lora::set_active_adapter(llm, "original");
    fmt::print("q_proj on 1 token, ms median (min): {:.4f} ({:.4f}) plain, {:.4f} ({:.4f}) with the adapter unmerged\n",
               plain.median_ms, plain.min_ms, adapted.median_ms, adapted.min_ms);
  }
  torch::manual_seed(1);
  const auto prompt = torch::randn({1, shape.llm_tokens(), shape.llama.hidden_size}).to(dtype);
  const auto token = torch::randn({1, 1, shape.llama.hidden_size}).to(dtype);
  nlohmann::json forwards;
  fmt::print("{:>10} {:>22} {:>22}\n", "adapter", "prefill ms (min)", "decode step ms (min)");
  for (const auto& [label, name, merge] : std::vector<std::tuple<std::string, std::string, bool>>{
           {"none", "original", false}, {"unmerged", "task_a", false}, {"merged", "task_a", true}}) {
    lora::set_active_adapter(llm, name, merge);
    const auto prefill = time_calls([&](int) { (void)llm.forward(prompt).logits[0][0][0].item<float>(); }, repeats);
    KVCache cache;
    CausalLMOptions options;
    options.cache = &cache;
    llm.forward(prompt, options);
    const auto decode =
        time_calls([&](int) { (void)llm.forward(token, options).logits[0][0][0].item<float>(); }, decode_repeats);
    fmt::print("{:>10} {:>14.1f} ({:.1f}) {:>14.1f} ({:.1f})\n", label, prefill.median_ms, prefill.min_ms,
               decode.median_ms, decode.min_ms);
    forwards[label] = {{"prefill", to_json(prefill)}, {"decode_step", to_json(decode)}};
  }
  lora::set_active_adapter(llm, "original");

  if (!json_path.empty()) {
    nlohmann::json out = {{"dtype", dtype_name},
                          {"threads", at::get_num_threads()},
                          {"rank", rank},
                          {"adapted_layers", layers.size()},
                          {"prompt_tokens", shape.llm_tokens()},
                          {"switch_unmerged", to_json(unmerged)},
                          {"switch_merged", to_json(merged)},
                          {"forward", forwards}};
    std::ofstream(json_path) << out.dump(2) << "\n";
  }
  return 0;
}
