// GGUF files written by llama.cpp's own converter (and, for q4_0/q4_1/q4_K, by gguf-py) from
// the tiny Vicuna fixture (tests/data/gguf/README.md): the config from the metadata, q/k rows
// back in Hugging Face's order, greedy ids equal to transformers' on the same dequantised
// weights, q8_0/q4_0 kept as they are in group-wise layers, q4_K blocks as gguf-py decodes
// them, and broken files refused by name.
#include "minigpt4/common/config.h"
#include "minigpt4/common/strings.h"
#include "minigpt4/generate/generate.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/io/gguf.h"
#include "minigpt4/io/safetensors.h"
#include "minigpt4/models/gguf_llama.h"
#include "minigpt4/models/llm_family.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/models/quantize.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>
#include <torch/torch.h>

using namespace minigpt4;
using Catch::Contains;
namespace fs = std::filesystem;

namespace {

fs::path gguf_dir() { return test::data_dir() / "gguf"; }
fs::path vicuna_dir() { return test::data_dir() / "parity/tiny_vicuna0/vicuna"; }

const nlohmann::json& expected() {
  static const auto j = test::read_json(gguf_dir() / "expected_greedy.json");
  return j;
}

std::vector<int64_t> greedy(const CausalLM& llm, int64_t new_tokens) {
  const auto prompt = expected()["prompt_ids"].get<std::vector<int64_t>>();
  GenerationConfig gc;
  gc.max_new_tokens = new_tokens;
  gc.eos_token_id = -1;
  gc.min_length = 0;
  const auto ids = torch::tensor(prompt, torch::kLong).unsqueeze(0);
  return generate(llm, llm.embed(ids), gc).tokens;
}

torch::Tensor prompt_logits(const CausalLM& llm) {
  const auto prompt = expected()["prompt_ids"].get<std::vector<int64_t>>();
  return llm.forward(llm.embed(torch::tensor(prompt, torch::kLong).unsqueeze(0))).logits;
}

}  // namespace

TEST_CASE("GGUF: llama.cpp's converter output loads with the config and weights of the original", "[models][gguf]") {
  torch::NoGradGuard no_grad;
  const auto g = io::read_gguf((gguf_dir() / "tiny_llama_f16.gguf").string());
  const auto config = llama_config_from_gguf(g);
  const auto hf = LlamaConfig::from_json(io::read_json_file((vicuna_dir() / "config.json").string()), "config.json");
  CHECK(config.hidden_size == hf.hidden_size);
  CHECK(config.intermediate_size == hf.intermediate_size);
  CHECK(config.num_hidden_layers == hf.num_hidden_layers);
  CHECK(config.num_attention_heads == hf.num_attention_heads);
  CHECK(config.num_key_value_heads == hf.num_key_value_heads);
  CHECK(config.vocab_size == hf.vocab_size);
  CHECK(config.rms_norm_eps == Approx(hf.rms_norm_eps));
  CHECK(config.dim_per_head() == hf.dim_per_head());

  // Every matrix equals the safetensors one rounded to float16 (the norms the converter keeps
  // in float32): q and k rows included, which it reorders for ggml's rotary embedding.
  const auto from_gguf = load_causal_lm((gguf_dir() / "tiny_llama_f16.gguf").string(), torch::kFloat32);
  const auto from_hf = load_causal_lm(vicuna_dir().string(), torch::kFloat32);
  auto hf_params = from_hf->named_parameters();
  for (const auto& item : from_gguf->named_parameters()) {
    INFO(item.key());
    const auto& original = hf_params[item.key()];
    CHECK(torch::equal(item.value(), original.dim() == 1 ? original : original.to(torch::kHalf).to(torch::kFloat)));
  }
}

TEST_CASE("GGUF: greedy ids equal transformers' on the same weights, for every file type", "[models][gguf]") {
  torch::NoGradGuard no_grad;
  const auto& files = expected()["dequantised_gguf_weights"];
  // The safetensors original, and each GGUF loaded into a float32 model (dequantised).
  CHECK(greedy(*load_causal_lm(vicuna_dir().string(), torch::kFloat32), 12) ==
        expected()["new_ids"].get<std::vector<int64_t>>());
  for (const std::string name :
       {"tiny_llama_f16.gguf", "tiny_llama_q8_0.gguf", "tiny_llama_q4_0.gguf", "tiny_llama_q4_1.gguf"}) {
    INFO(name);
    const auto llm = load_causal_lm((gguf_dir() / name).string(), torch::kFloat32);
    CHECK(greedy(*llm, 12) == files[name]["new_ids"].get<std::vector<int64_t>>());
  }
  // f16 and q8_0 (as the converter wrote them) answer as the original does.
  CHECK(files["tiny_llama_f16.gguf"]["new_ids"] == expected()["new_ids"]);
  CHECK(files["tiny_llama_q8_0.gguf"]["new_ids"] == expected()["new_ids"]);
}

TEST_CASE("GGUF: q8_0 and q4_0 projections are kept as the file holds them", "[models][gguf]") {
  torch::NoGradGuard no_grad;
  for (const auto& [name, format] : std::vector<std::pair<std::string, WeightFormat>>{
           {"tiny_llama_q8_0.gguf", WeightFormat{8, 32}}, {"tiny_llama_q4_0.gguf", WeightFormat{4, 32}}}) {
    INFO(name);
    const auto path = (gguf_dir() / name).string();
    const auto g = io::read_gguf(path);
    CHECK(gguf_projection_format(g) == format);
    const auto native = load_causal_lm(path, torch::kFloat32, format);
    const auto dense = load_causal_lm(path, torch::kFloat32);
    const auto* llama = native->as<LlamaForCausalLM>();
    // attn_v: not reordered, so its storage is the file's blocks byte for byte.
    const auto& v = *llama->layers->ptr(0)->as<LlamaDecoderLayer>()->self_attn->v_proj;
    const auto blocks = io::gguf_grouped(g, *g.find("blk.0.attn_v.weight"));
    CHECK(v.format() == format);
    CHECK(torch::equal(v.weight, blocks.values));
    CHECK(torch::equal(v.weight_scale, blocks.scales));
    // Every quantised layer stands for exactly the weight the dense load dequantised.
    auto dense_modules = dense->named_modules("", false);
    int64_t kept = 0;
    for (const auto& item : native->named_modules("", false)) {
      const auto* linear = item.value()->as<Linear>();
      // (ffn_down's rows of 176 are no whole number of blocks: the converter wrote them f16,
      // and this model quantised them itself.)
      if (!linear || !linear->is_grouped() || ends_with(item.key(), "down_proj")) continue;
      INFO(item.key());
      CHECK(torch::equal(linear->dense_weight(torch::kFloat), dense_modules[item.key()]->as<Linear>()->weight));
      ++kept;
    }
    CHECK(kept == 12);  // q, k, v, o, gate, up in 2 layers
    // A float32 model holding the weights the quantised layers stand for: the prompt goes
    // through the float path, so the logits are the same; decoding multiplies int8 activations
    // (W8A8 / W4A8), which may move a near-tie, so only the first answer is pinned.
    for (const auto& item : native->named_modules("", false)) {
      const auto* linear = item.value()->as<Linear>();
      if (linear && linear->is_grouped())
        dense_modules[item.key()]->as<Linear>()->weight.copy_(linear->dense_weight(torch::kFloat));
    }
    const auto a = prompt_logits(*native), b = prompt_logits(*dense);
    CHECK((a - b).abs().max().item<double>() <= 1e-4 * b.abs().max().item<double>());
    CHECK(greedy(*native, 1) == greedy(*dense, 1));
  }
}

TEST_CASE("GGUF: q4_K blocks decode as gguf-py decodes them", "[models][gguf]") {
  const auto g = io::read_gguf((gguf_dir() / "q4_k_blocks.gguf").string());
  const auto want = io::load_safetensors((gguf_dir() / "q4_k_expected.safetensors").string());
  int64_t checked = 0;
  for (const auto& t : g.tensors) {
    INFO(t.name);
    REQUIRE(want.count(t.name));
    CHECK(torch::equal(io::gguf_dequantize(g, t), want.at(t.name).to(torch::kFloat)));
    ++checked;
  }
  CHECK(checked == 3);
}

TEST_CASE("GGUF: broken and foreign files are named errors", "[models][gguf][hostile]") {
  CHECK_THROWS_WITH(io::read_gguf((gguf_dir() / "truncated.gguf").string()),
                    Contains("truncated.gguf") && Contains("beyond the end of the file"));
  CHECK_THROWS_WITH(io::read_gguf((gguf_dir() / "bad_magic.gguf").string()), Contains("not a GGUF file"));
  // A file with no LLaMA metadata (the q4_K blocks) is not a model.
  const auto blocks = io::read_gguf((gguf_dir() / "q4_k_blocks.gguf").string());
  CHECK_THROWS_WITH(llama_config_from_gguf(blocks), Contains("general.architecture"));
  CHECK_THROWS_WITH(load_causal_lm((gguf_dir() / "missing.gguf").string(), torch::kFloat32), Contains("missing.gguf"));
}

TEST_CASE("GGUF: a MiniGPT-4 config's llama_model may name a GGUF file", "[models][gguf]") {
  torch::NoGradGuard no_grad;
  const auto dir = test::data_dir() / "parity/tiny_vicuna0";
  const auto manifest = test::read_json(dir / "manifest.json");
  const auto yaml = test::parity_case_yaml(dir, manifest);
  auto load = [&](const std::vector<std::string>& options, LoadReport* report = nullptr) {
    const auto config = Config::from_yaml(yaml, (dir / "manifest.json").string(), options);
    return load_minigpt4(MiniGPT4Config::from_config(config), torch::kCPU, report);
  };
  const auto original = load({});
  LoadReport report;
  const auto q8 = load({"model.llama_model=" + (gguf_dir() / "tiny_llama_q8_0.gguf").string()}, &report);
  bool noted = false;
  for (const auto& note : report.notes) noted = noted || note.find("llm_weight_bits: 8") != std::string::npos;
  CHECK(noted);  // built unquantised: the q8_0 projections were converted, and the note says how to keep them
  const auto f16 = load({"model.llama_model=" + (gguf_dir() / "tiny_llama_f16.gguf").string()});
  const auto io = io::load_safetensors((dir / "io.safetensors").string());
  const auto embs = io.at("chat_embs");
  const auto want = original->llama_model->forward(embs).logits;
  const auto got = f16->llama_model->forward(embs).logits;
  CHECK((got - want).abs().max().item<double>() <= 1e-2 * want.abs().max().item<double>());
  CHECK(torch::equal(got.argmax(-1), want.argmax(-1)));
  const auto native =
      load({"model.llama_model=" + (gguf_dir() / "tiny_llama_q4_0.gguf").string(), "model.llm_weight_bits=4"});
  CHECK(native->llama_model->as<LlamaForCausalLM>()->layers->ptr(1)->as<LlamaDecoderLayer>()->mlp->up_proj->format() ==
        WeightFormat{4, 32});
}
