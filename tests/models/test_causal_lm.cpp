// What every LLM family shares (causal_lm.h): `logits_to_keep`, which generation's prefill
// uses so that the LM head runs on the last prompt position only.
#include "minigpt4/models/llm_family.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>

using namespace minigpt4;

TEST_CASE("logits_to_keep returns the last positions' logits of the full forward", "[causal_lm]") {
  torch::NoGradGuard no_grad;
  for (const auto* dir : {"parity/tiny_vicuna0/vicuna", "parity/tiny_phi2/phi2"}) {
    const auto llm = load_causal_lm((test::data_dir() / dir).string(), torch::kFloat32);
    torch::manual_seed(0);
    const auto embeds = torch::randn({2, 7, llm->hidden_size()});
    const auto mask = torch::tensor({0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}).view({2, 7});
    CausalLMOptions all;
    all.attention_mask = mask;
    const auto full = llm->forward(embeds, all).logits;
    for (const int64_t keep : {1, 3, 7, 9}) {
      CausalLMOptions options = all;
      options.logits_to_keep = keep;
      const auto kept = llm->forward(embeds, options).logits;
      const int64_t n = std::min<int64_t>(keep, 7);
      INFO(dir << " keep " << keep);
      REQUIRE(kept.sizes() == torch::IntArrayRef({2, n, llm->vocab_size()}));
      CHECK(torch::allclose(kept, full.narrow(1, 7 - n, n), 1e-5, 1e-6));
    }
  }
}
