// Parity of Phi (TinyGPT-V's LLM family) with transformers' PhiForCausalLM for every fixture
// case holding a Phi directory (tests/data/parity/tiny_phi2 + MINIGPT4_PARITY_DIRS): the
// model is loaded from the case's Hugging Face directory as a user's would be, and every
// size comes from its files.
#include "minigpt4/io/safetensors.h"
#include "minigpt4/models/llm_family.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>

#include <iostream>

using namespace minigpt4;
namespace fs = std::filesystem;

TEST_CASE("Phi forward matches transformers on every Phi fixture case", "[parity]") {
  torch::NoGradGuard no_grad;
  int cases = 0;
  for (const auto& dir : test::parity_cases()) {
    const auto manifest = test::read_json(dir / "manifest.json");
    const auto phi_dir = test::hf_model_dir(dir, manifest, "phi");
    if (phi_dir.empty()) continue;
    ++cases;
    INFO("case directory " << dir);
    const auto io = io::load_safetensors((dir / "io.safetensors").string());
    const auto model = load_causal_lm(phi_dir.string(), torch::kFloat32);
    REQUIRE(model->family() == "phi");
    int checked = 0;
    auto check = [&](const std::string& name, const torch::Tensor& actual) {
      INFO("tensor " << name);
      REQUIRE(io.count(name));
      const auto result = test::compare(name, actual, io.at(name), test::tolerance_for(manifest, name));
      INFO(result.message);
      std::cout << "  " << name << ": max |diff| " << result.max_abs_diff << "\n";
      CHECK(result.ok);
      ++checked;
    };

    // A plain forward: positions 0..T-1, every hidden state, the loss with labels = ids.
    const auto ids = io.at("input_ids");
    CausalLMOptions with_states;
    with_states.output_hidden_states = true;
    const auto out = model->forward(model->embed(ids), with_states);
    check("logits", out.logits);
    check("hidden_states", torch::stack(out.hidden_states));
    check("loss", causal_lm_loss(out.logits, ids));

    // With an attention mask (still positions 0..T-1): only unmasked positions mean anything.
    if (io.count("masked_attention_mask")) {
      const auto mask = io.at("masked_attention_mask");
      CausalLMOptions masked;
      masked.attention_mask = mask;
      const auto logits = model->forward(model->embed(ids), masked).logits;
      const auto real = mask.to(torch::kBool).unsqueeze(-1).expand_as(logits);
      check("masked_logits", torch::where(real, logits, io.at("masked_logits")));
    }
    std::cout << "phi parity case " << manifest.value("case", dir.filename().string()) << ": " << checked
              << " tensors checked" << std::endl;
  }
  // The committed tiny_phi2 case at least.
  CHECK(cases >= 1);
}
