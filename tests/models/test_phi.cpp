// Phi's weight layouts, TinyGPT-V's switches, the KV cache and left padding, config.json
// variants, int8, and a MiniGPT-4 built on a Phi directory (the parity with transformers is
// in test_phi_parity.cpp).
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/io/safetensors.h"
#include "minigpt4/models/llm_family.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/models/weights.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>

#include <cmath>

using namespace minigpt4;
using Catch::Contains;

namespace {

const test::fs::path& phi_dir() {
  static const auto dir = test::data_dir() / "parity/tiny_phi2/phi2";
  return dir;
}

PhiConfig small_config() {
  PhiConfig c;
  c.vocab_size = 40, c.hidden_size = 32, c.intermediate_size = 48, c.num_hidden_layers = 2;
  c.num_attention_heads = 4, c.num_key_value_heads = 4, c.partial_rotary_factor = 0.5;  // head_dim 8, 4 rotary
  return c;
}

void randomise(torch::nn::Module& module, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) p.normal_(0, 0.3);
}

StateDict state_of(const torch::nn::Module& module) {
  StateDict out;
  for (const auto& item : module.named_parameters()) out[item.key()] = item.value().detach().clone();
  return out;
}

// The split q/k/v weights (or biases) rearranged into the fused query_key_value of the
// transformers 4.36 port: per head, its q, k and v rows one after another.
torch::Tensor fuse(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t heads) {
  auto per_head = [heads](const torch::Tensor& t) { return t.reshape({heads, t.size(0) / heads, -1}); };
  const auto fused = torch::stack({per_head(q), per_head(k), per_head(v)}, 1);  // [heads, 3, D, in]
  return q.dim() == 1 ? fused.reshape({-1}) : fused.reshape({-1, q.size(1)});
}

StateDict fused_state(const StateDict& split, int64_t layers, int64_t heads) {
  StateDict out = split;
  for (int64_t i = 0; i < layers; ++i) {
    const auto prefix = "model.layers." + std::to_string(i) + ".self_attn.";
    for (const std::string kind : {"weight", "bias"}) {
      out[prefix + "query_key_value." + kind] =
          fuse(split.at(prefix + "q_proj." + kind), split.at(prefix + "k_proj." + kind),
               split.at(prefix + "v_proj." + kind), heads);
      for (const char* proj : {"q_proj.", "k_proj.", "v_proj."}) out.erase(prefix + proj + kind);
    }
  }
  return out;
}

// Loads `state` into a model built from `config` after detect_layout; every parameter must be filled.
std::shared_ptr<PhiForCausalLM> load_phi(PhiConfig config, const StateDict& state) {
  config.detect_layout(state, "test");
  auto model = std::make_shared<PhiForCausalLM>(config, torch::kFloat32);
  std::set<std::string> filled;
  LoadSpec spec;
  spec.source = "test";
  const auto result = load_into(*model, state, spec, filled);
  CHECK(result.unexpected.empty());
  CHECK(unfilled_parameters(*model, filled).empty());
  return model;
}

bool close(const torch::Tensor& a, const torch::Tensor& b, double tol = 1e-5) {
  return torch::allclose(a, b, tol, tol);
}

}  // namespace

TEST_CASE("Phi: the fused query_key_value layout computes what the split layout does", "[models]") {
  torch::NoGradGuard no_grad;
  const auto config = small_config();
  PhiForCausalLM split(config, torch::kFloat32);
  randomise(split, 1);
  const auto fused_weights = fused_state(state_of(split), config.num_hidden_layers, config.num_attention_heads);
  const auto fused = load_phi(config, fused_weights);
  REQUIRE(fused->config.fused_qkv);
  REQUIRE(fused->layers->ptr(0)->as<PhiDecoderLayer>()->self_attn->query_key_value);

  const auto ids = torch::randint(0, config.vocab_size, {2, 7});
  CHECK(close(fused->forward(fused->embed(ids)).logits, split.forward(split.embed(ids)).logits));
  // A layout detected from split names stays split.
  const auto again = load_phi(config, state_of(split));
  CHECK_FALSE(again->config.fused_qkv);
  CHECK(close(again->forward(again->embed(ids)).logits, split.forward(split.embed(ids)).logits));
}

TEST_CASE("Phi: TinyGPT-V's q/k LayerNorm and post-attention RMSNorm", "[models]") {
  torch::NoGradGuard no_grad;
  auto config = small_config();
  config.num_hidden_layers = 1;
  PhiForCausalLM plain(config, torch::kFloat32);
  randomise(plain, 2);
  const auto base = state_of(plain);
  const auto ids = torch::randint(0, config.vocab_size, {1, 6});
  const auto plain_logits = plain.forward(plain.embed(ids)).logits;

  SECTION("switched on, at their defaults, they change the outputs; absent weights are accepted") {
    for (const bool qk : {true, false}) {
      auto switched = config;
      switched.qk_layernorm = qk, switched.post_layernorm = !qk;
      PhiForCausalLM model(switched, torch::kFloat32);
      std::set<std::string> filled;
      load_into(model, base, LoadSpec{}, filled);
      const auto missing = unfilled_parameters(model, filled);
      CHECK(missing.size() == (qk ? 4u : 1u));  // q/k weight and bias, or the RMSNorm weight
      for (const auto& name : missing) CHECK(model.starts_at_default(name));
      CHECK_FALSE(close(model.forward(model.embed(ids)).logits, plain_logits, 1e-3));
    }
  }

  SECTION("their weights load by name and switch them on; the layer computes TinyGPT-V's formula") {
    auto state = fused_state(base, 1, config.num_attention_heads);
    const int64_t D = config.head_dim(), H = config.hidden_size;
    torch::manual_seed(3);
    for (const char* norm : {"q_layernorm", "k_layernorm"}) {
      state[std::string("model.layers.0.self_attn.") + norm + ".weight"] = 1 + 0.3 * torch::randn({D});
      state[std::string("model.layers.0.self_attn.") + norm + ".bias"] = 0.3 * torch::randn({D});
    }
    state["model.layers.0.post_layernorm.weight"] = 1 + 0.3 * torch::randn({H});
    const auto model = load_phi(config, state);  // detect_layout sees the names
    REQUIRE(model->config.qk_layernorm);
    REQUIRE(model->config.post_layernorm);
    CHECK(torch::equal(model->layers->ptr(0)->as<PhiDecoderLayer>()->post_layernorm->weight,
                       state.at("model.layers.0.post_layernorm.weight")));

    // x + post_layernorm(dense(attn)) + fc2(gelu_tanh(fc1(h))), with q and k normalised per
    // head after the Bloom-style split and before the partial RoPE.
    const auto w = [&](const std::string& name) { return state.at("model.layers.0." + name); };
    const auto x = model->embed(ids);
    const int64_t T = ids.size(1), heads = config.num_attention_heads, rot = config.rotary_ndims();
    const auto h = torch::layer_norm(x, {H}, w("input_layernorm.weight"), w("input_layernorm.bias"), 1e-5);
    const auto qkv = torch::linear(h, w("self_attn.query_key_value.weight"), w("self_attn.query_key_value.bias"))
                         .view({1, T, heads, 3, D});
    auto norm = [&](const torch::Tensor& t, const std::string& which) {
      return torch::layer_norm(t, {D}, w("self_attn." + which + ".weight"), w("self_attn." + which + ".bias"), 1e-5);
    };
    auto q = norm(qkv.select(3, 0), "q_layernorm").transpose(1, 2);
    auto k = norm(qkv.select(3, 1), "k_layernorm").transpose(1, 2);
    const auto v = qkv.select(3, 2).transpose(1, 2);
    const auto inv_freq = 1.0 / torch::pow(10000.0, torch::arange(0, rot, 2).to(torch::kFloat32) / rot);
    const auto freqs = torch::outer(torch::arange(T).to(torch::kFloat32), inv_freq);
    const auto cos = torch::cat({freqs, freqs}, -1).cos(), sin = torch::cat({freqs, freqs}, -1).sin();
    auto rope = [&](const torch::Tensor& t) {
      const auto r = t.slice(-1, 0, rot);
      const auto rotated = torch::cat({-r.slice(-1, rot / 2), r.slice(-1, 0, rot / 2)}, -1);
      return torch::cat({r * cos + rotated * sin, t.slice(-1, rot)}, -1);
    };
    q = rope(q), k = rope(k);
    const auto causal = torch::ones({T, T}, torch::kBool).tril();
    const auto scores = (q.matmul(k.transpose(-1, -2)) / std::sqrt(static_cast<double>(D))).masked_fill(~causal, -1e30);
    const auto attn = scores.softmax(-1).matmul(v).transpose(1, 2).reshape({1, T, H});
    const auto dense = torch::linear(attn, w("self_attn.dense.weight"), w("self_attn.dense.bias"));
    const auto post = w("post_layernorm.weight") * (dense * torch::rsqrt(dense.pow(2).mean(-1, true) + 1e-6));
    const auto mlp = torch::linear(torch::gelu(torch::linear(h, w("mlp.fc1.weight"), w("mlp.fc1.bias")), "tanh"),
                                   w("mlp.fc2.weight"), w("mlp.fc2.bias"));
    CausalLMOptions options;
    options.output_hidden_states = true;
    const auto out = model->forward(x, options);
    // hidden_states: [embeddings, after final_layernorm] for one layer; compare before it.
    const auto layer_out = x + post + mlp;
    const auto expected = torch::layer_norm(layer_out, {H}, state.at("model.final_layernorm.weight"),
                                            state.at("model.final_layernorm.bias"), 1e-5);
    CHECK(close(out.hidden_states.back(), expected, 1e-4));

    // Each switch matters with these weights.
    for (const bool qk : {false, true}) {
      auto fewer = model->config;
      (qk ? fewer.qk_layernorm : fewer.post_layernorm) = false;
      PhiForCausalLM without(fewer, torch::kFloat32);
      std::set<std::string> filled;
      LoadSpec spec;
      spec.is_ignorable = [](const std::string&) { return true; };
      load_into(without, state, spec, filled);
      CHECK_FALSE(close(without.forward(x).logits, out.logits, 1e-3));
    }
  }
}

TEST_CASE("Phi: KV cache, left padding and grouped-query attention", "[models]") {
  torch::NoGradGuard no_grad;
  auto config = small_config();
  config.num_key_value_heads = 2;
  PhiForCausalLM model(config, torch::kFloat32);
  randomise(model, 4);
  const auto embeds = model.embed(torch::randint(0, config.vocab_size, {1, 9}));
  const auto full = model.forward(embeds).logits;

  KVCache cache;
  CausalLMOptions cached;
  cached.cache = &cache;
  std::vector<torch::Tensor> steps{model.forward(embeds.slice(1, 0, 5), cached).logits};
  for (int64_t t = 5; t < 9; ++t) steps.push_back(model.forward(embeds.slice(1, t, t + 1), cached).logits);
  CHECK(close(torch::cat(steps, 1), full));
  CHECK(cache.length() == 9);

  const auto padded = torch::cat({torch::randn({1, 3, config.hidden_size}), embeds}, 1);
  auto mask = torch::ones({1, 12}, torch::kLong);
  mask.slice(1, 0, 3).zero_();
  CausalLMOptions left;
  left.attention_mask = mask;
  left.position_ids = position_ids_from_mask(mask);
  CHECK(close(model.forward(padded, left).logits.slice(1, 3), full));

  // Half precision stays finite under left padding (the scores run in float32).
  for (const auto dtype : {torch::kBFloat16, torch::kFloat16}) {
    PhiForCausalLM half(config, dtype);
    randomise(half, 5);
    CHECK(torch::isfinite(half.forward(padded.to(dtype), left).logits).all().item<bool>());
  }
}

TEST_CASE("Phi: config.json variants and refused layouts", "[models]") {
  const auto json = io::read_json_file((phi_dir() / "config.json").string());
  const auto config = PhiConfig::from_json(json, "config.json");
  CHECK(config.rotary_ndims() == static_cast<int64_t>(config.head_dim() * 0.4));
  CHECK(std::holds_alternative<PhiConfig>(llm_config_from_hf(json, "config.json")));
  CHECK(std::holds_alternative<LlamaConfig>(
      llm_config_from_hf(io::read_json_file((test::data_dir() / "hf_llama_gqa/config.json").string()), "llama.json")));

  // The early phi-msft remote-code keys.
  const nlohmann::json msft = {{"model_type", "phi-msft"},
                               {"vocab_size", 512},
                               {"n_embd", 64},
                               {"n_layer", 2},
                               {"n_head", 4},
                               {"n_inner", nullptr},
                               {"rotary_dim", 6},
                               {"n_positions", 2048},
                               {"layer_norm_epsilon", 1e-5},
                               {"activation_function", "gelu_new"}};
  const auto early = std::get<PhiConfig>(llm_config_from_hf(msft, "msft.json"));
  CHECK(early.hidden_size == 64);
  CHECK(early.intermediate_size == 256);
  CHECK(early.rotary_ndims() == 6);
  StateDict msft_weights{{"transformer.h.0.mixer.Wqkv.weight", torch::zeros({192, 64})}};
  CHECK_THROWS_WITH(llm_config_from_hf(msft, "msft.json", msft_weights), Contains("phi-msft") && Contains("Wqkv"));

  auto relu = json;
  relu["hidden_act"] = "relu";
  CHECK_THROWS_WITH(PhiConfig::from_json(relu, "cfg.json"), Contains("cfg.json") && Contains("relu"));
  auto scaled = json;
  scaled["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  CHECK_THROWS_WITH(PhiConfig::from_json(scaled, "cfg.json"), Contains("rope_scaling"));
  auto v5 = json;  // transformers >= 5
  v5.erase("rope_theta");
  v5.erase("partial_rotary_factor");
  v5["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500.0}, {"partial_rotary_factor", 0.5}};
  const auto nested = PhiConfig::from_json(v5, "cfg.json");
  CHECK(nested.rope_theta == 500.0);
  CHECK(nested.rotary_ndims() == nested.head_dim() / 2);
}

TEST_CASE("Phi: int8 decoder linears keep the logits", "[models]") {
  torch::NoGradGuard no_grad;
  const auto dense = load_causal_lm(phi_dir().string(), torch::kFloat32);
  const auto int8 = load_causal_lm(phi_dir().string(), torch::kFloat32, WeightFormat::Int8);
  const auto& phi = *int8->as<PhiForCausalLM>();
  CHECK(phi.layers->ptr(0)->as<PhiDecoderLayer>()->self_attn->q_proj->is_int8());
  CHECK(phi.layers->ptr(0)->as<PhiDecoderLayer>()->mlp->fc2->is_int8());
  CHECK_FALSE(phi.lm_head->is_int8());
  const auto ids = torch::randint(0, phi.config.vocab_size, {2, 10});
  const auto a = dense->forward(dense->embed(ids)).logits, b = int8->forward(int8->embed(ids)).logits;
  CHECK(torch::cosine_similarity(a.flatten(0, 1), b.flatten(0, 1), -1).min().item<double>() > 0.999);
  // Phi's lm_head has a bias: quantised (llm_head_bits: 8) it keeps it, and the logits.
  const auto head8 = load_causal_lm(phi_dir().string(), torch::kFloat32, WeightFormat::Dense, WeightFormat{8, 32});
  const auto& head8_phi = *head8->as<PhiForCausalLM>();
  REQUIRE(head8_phi.lm_head->format() == WeightFormat{8, 32});
  CHECK(head8_phi.lm_head->bias.defined());
  const auto c = head8->forward(head8->embed(ids)).logits;
  CHECK(torch::cosine_similarity(a.flatten(0, 1), c.flatten(0, 1), -1).min().item<double>() > 0.9999);
}

TEST_CASE("a MiniGPT-4 config naming a Phi directory builds a Phi LLM", "[models]") {
  torch::NoGradGuard no_grad;
  // The tiny MiniGPT-4's vision side with tiny_phi2 as the LLM; the projector starts fresh.
  const auto tiny = test::data_dir() / "parity/tiny_vicuna0";
  const auto manifest = test::read_json(tiny / "manifest.json");
  for (const bool low_resource : {false, true}) {
    auto config = MiniGPT4Config::from_config(Config::from_yaml(test::parity_case_yaml(tiny, manifest), "phi.yaml"));
    config.llama_model = phi_dir().string();
    config.ckpt.clear();
    config.low_resource = low_resource;
    LoadReport report;
    const auto model = load_minigpt4(config, torch::kCPU, &report);
    REQUIRE(model->llama_model->family() == "phi");
    const auto& phi = *model->llama_model->as<PhiForCausalLM>();
    CHECK(model->llama_proj->weight.size(0) == phi.config.hidden_size);
    CHECK(phi.layers->ptr(0)->as<PhiDecoderLayer>()->self_attn->dense->is_int8() == low_resource);
    const auto img = model->encode_img(torch::randn({1, 3, config.vision.image_size, config.vision.image_size}));
    const auto bos = model->llama_model->embed(torch::full({1, 1}, phi.config.bos_token_id, torch::kLong));
    const auto logits = model->llama_model->forward(torch::cat({bos, img}, 1)).logits;
    CHECK(logits.size(-1) == phi.config.vocab_size);
    CHECK(torch::isfinite(logits).all().item<bool>());
  }
}

TEST_CASE("Phi's resid and embd dropout apply in training mode only", "[phi]") {
  auto config = small_config();
  config.resid_pdrop = 0.3;
  config.embd_pdrop = 0.2;
  PhiForCausalLM model(config, torch::kFloat32);
  randomise(model, 7);
  auto plain_config = small_config();
  PhiForCausalLM plain(plain_config, torch::kFloat32);
  {
    torch::NoGradGuard no_grad;
    for (auto& item : plain.named_parameters()) item.value().copy_(model.named_parameters()[item.key()]);
  }
  const auto embeds = model.embed(torch::randint(0, config.vocab_size, {2, 6})).detach();
  model.eval();
  plain.eval();
  CHECK(torch::equal(model.forward(embeds).logits, plain.forward(embeds).logits));  // eval: no dropout

  model.train();
  torch::manual_seed(5);
  const auto first = model.forward(embeds).logits;
  torch::manual_seed(5);
  const auto again = model.forward(embeds).logits;
  torch::manual_seed(6);
  const auto other = model.forward(embeds).logits;
  CHECK(torch::equal(first, again));  // the seed fixes the masks
  CHECK_FALSE(torch::allclose(first, other));
  CHECK_FALSE(torch::allclose(first, plain.forward(embeds).logits));

  nlohmann::json j = {{"model_type", "phi"},     {"vocab_size", 40},       {"hidden_size", 32},
                      {"intermediate_size", 48}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                      {"resid_pdrop", 0.1},      {"embd_pdrop", 0.0}};
  CHECK(PhiConfig::from_json(j, "config.json").resid_pdrop == 0.1);
  j["resid_pdrop"] = 1.5;
  CHECK_THROWS_WITH(PhiConfig::from_json(j, "config.json"), Contains("dropout probability"));
}

TEST_CASE("norms_fp32 keeps the norm weights in float32 inside a bf16 Phi", "[phi]") {
  torch::NoGradGuard no_grad;
  auto config = small_config();
  config.qk_layernorm = config.post_layernorm = true;
  PhiForCausalLM reference(config, torch::kFloat32);
  randomise(reference, 11);
  config.norms_fp32 = true;
  PhiForCausalLM half(config, torch::kBFloat16);
  std::set<std::string> filled;
  load_into(half, state_of(reference), LoadSpec{}, filled);
  for (const auto& item : half.named_parameters()) {
    const bool norm = item.key().find("layernorm") != std::string::npos;
    INFO(item.key());
    CHECK(item.value().scalar_type() == (norm ? torch::kFloat32 : torch::kBFloat16));
  }
  const auto ids = torch::randint(0, config.vocab_size, {1, 7});
  const auto want = reference.forward(reference.embed(ids)).logits;
  const auto got = half.forward(half.embed(ids)).logits;
  REQUIRE(got.sizes() == want.sizes());
  const double scale = want.abs().max().item<double>();
  CHECK((got - want).abs().max().item<double>() < 0.05 * scale);  // bf16 activations
  KVCache cache;                                                  // the decode path keeps the activations in bf16 too
  CausalLMOptions cached;
  cached.cache = &cache;
  half.forward(half.embed(ids), cached);
  CHECK(cache.keys[0].scalar_type() == torch::kBFloat16);
}
