// AdamW parameter groups (LAVIS' weight-decay rule) and the update itself.
#include "minigpt4/common/run_settings.h"
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/train/optimizer.h"
#include "tests/train/train_test_util.h"

#include <torch/torch.h>

#include <algorithm>

using namespace minigpt4;
using namespace minigpt4::train;
using Catch::Contains;
using minigpt4::test::TinyNet;

namespace {

std::vector<std::string> names(const std::vector<NamedParameter>& params) {
  std::vector<std::string> out;
  for (const auto& p : params) out.push_back(p.name);
  return out;
}

}  // namespace

TEST_CASE("the weight-decay rule: ndim < 2, or bias / ln / bn in the name", "[train]") {
  const auto w2 = torch::zeros({2, 2}), w1 = torch::zeros({2});
  CHECK(uses_weight_decay("llama_proj.weight", w2));
  CHECK_FALSE(uses_weight_decay("llama_proj.bias", w1));
  CHECK_FALSE(uses_weight_decay("some.weight", w1));           // 1-D
  CHECK_FALSE(uses_weight_decay("ln_vision.weight", w2));      // "ln"
  CHECK_FALSE(uses_weight_decay("blocks.0.attn.q_bias", w2));  // "bias"
  CHECK_FALSE(uses_weight_decay("features.bn1.weight", w2));   // "bn"
  CHECK_FALSE(uses_weight_decay("kiln.weight", w2));           // plain substring test, as in Python
  CHECK(uses_weight_decay("query_tokens", torch::zeros({1, 32, 768})));
}

TEST_CASE("parameter groups on a small module: only requires_grad, in order", "[train]") {
  TinyNet net;
  const ParamGroups groups = split_parameters(net);
  // named_parameters() order, as in PyTorch: a module's own parameters, then its children's.
  CHECK(names(groups.decay) == std::vector<std::string>{"table", "proj.weight"});
  CHECK(names(groups.no_decay) == std::vector<std::string>{"scale", "kiln_table", "proj.bias", "ln_final.weight",
                                                           "ln_final.bias", "bn.weight", "bn.bias"});
  CHECK(groups.numel() == (12 + 9) + (3 + 3 + 3 + 3 + 3 + 3 + 6));
  CHECK(groups.summary() == "trainable parameters: 45 (decay: 2 tensors / 21 params, no decay: 7 / 24)");

  const auto config = Config::from_yaml("run:\n  init_lr: 1e-3\n  weight_decay: 0.05\n", "opt.yaml");
  auto optimizer = make_optimizer(net, RunSettings::from_config(config));
  auto& groups_t = optimizer->torch_optimizer().param_groups();
  REQUIRE(groups_t.size() == 2);
  const auto& decay = static_cast<const torch::optim::AdamWOptions&>(groups_t[0].options());
  const auto& no_decay = static_cast<const torch::optim::AdamWOptions&>(groups_t[1].options());
  CHECK(decay.weight_decay() == Approx(0.05));
  CHECK(no_decay.weight_decay() == 0.0);
  CHECK(std::get<0>(decay.betas()) == 0.9);
  CHECK(std::get<1>(decay.betas()) == 0.999);
  CHECK(groups_t[0].params().size() == 2);
  CHECK(groups_t[1].params().size() == 7);

  optimizer->set_lr(3e-5);
  CHECK(decay.lr() == Approx(3e-5));
  CHECK(no_decay.lr() == Approx(3e-5));
  CHECK(optimizer->lr() == Approx(3e-5));

  CHECK_THROWS_WITH(
      make_optimizer(net, RunSettings::from_config(Config::from_yaml("run:\n  init_lr: 1e-3\n", "opt.yaml"))),
      Contains("run.weight_decay") && Contains("opt.yaml"));
}

TEST_CASE("an AdamW step equals the hand-computed update", "[train]") {
  auto w = torch::tensor({{0.5, -1.0}, {2.0, 0.25}}, torch::kFloat64).set_requires_grad(true);
  auto b = torch::tensor({0.1, -0.2}, torch::kFloat64).set_requires_grad(true);
  ParamGroups groups;
  groups.decay.push_back({"layer.weight", w});
  groups.no_decay.push_back({"layer.bias", b});
  AdamWSettings settings;
  settings.lr = 1e-2;
  settings.weight_decay = 0.1;
  Optimizer opt(groups, settings);

  const double lr = 1e-2, wd = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  auto expected_w = w.detach().clone(), expected_b = b.detach().clone();
  auto m_w = torch::zeros_like(w), v_w = torch::zeros_like(w), m_b = torch::zeros_like(b), v_b = torch::zeros_like(b);
  const std::vector<std::pair<torch::Tensor, torch::Tensor>> grads = {
      {torch::tensor({{0.3, -0.7}, {1.5, 0.0}}, torch::kFloat64), torch::tensor({-0.4, 0.9}, torch::kFloat64)},
      {torch::tensor({{-0.1, 0.2}, {0.05, 2.0}}, torch::kFloat64), torch::tensor({0.6, 0.01}, torch::kFloat64)}};
  for (size_t t = 1; t <= grads.size(); ++t) {
    const auto& [gw, gb] = grads[t - 1];
    w.mutable_grad() = gw.clone();
    b.mutable_grad() = gb.clone();
    opt.step();

    // Decoupled decay first, then the bias-corrected Adam step (Loshchilov & Hutter).
    const double c1 = 1 - std::pow(b1, t), c2 = 1 - std::pow(b2, t);
    expected_w = expected_w * (1 - lr * wd);
    m_w = b1 * m_w + (1 - b1) * gw;
    v_w = b2 * v_w + (1 - b2) * gw * gw;
    expected_w = expected_w - lr * (m_w / c1) / ((v_w / c2).sqrt() + eps);
    m_b = b1 * m_b + (1 - b1) * gb;  // no decay group
    v_b = b2 * v_b + (1 - b2) * gb * gb;
    expected_b = expected_b - lr * (m_b / c1) / ((v_b / c2).sqrt() + eps);

    CHECK(torch::allclose(w, expected_w, 1e-12, 1e-14));
    CHECK(torch::allclose(b, expected_b, 1e-12, 1e-14));
  }

  // State by name, and back into a fresh optimizer over other tensors with the same names.
  const StateDict state = opt.state_by_name();
  CHECK(state.size() == 6);
  CHECK(state.at("layer.weight/step").item<int64_t>() == 2);
  CHECK(torch::allclose(state.at("layer.weight/exp_avg"), m_w, 1e-12, 1e-14));
  CHECK(torch::allclose(state.at("layer.bias/exp_avg_sq"), v_b, 1e-12, 1e-14));

  ParamGroups other;
  other.decay.push_back({"layer.weight", w.detach().clone().set_requires_grad(true)});
  other.no_decay.push_back({"layer.bias", b.detach().clone().set_requires_grad(true)});
  Optimizer restored(other, settings);
  restored.load_state_by_name(state, "test");
  CHECK(restored.state_by_name().size() == 6);
  CHECK(torch::equal(restored.state_by_name().at("layer.bias/exp_avg"), m_b));

  StateDict stray = state;
  stray["other.weight/exp_avg"] = torch::zeros({1});
  CHECK_THROWS_WITH(restored.load_state_by_name(stray, "ckpt.pth"), Contains("ckpt.pth") && Contains("other.weight"));
  StateDict bad_shape = state;
  bad_shape["layer.bias/exp_avg"] = torch::zeros({3}, torch::kFloat64);
  CHECK_THROWS_WITH(restored.load_state_by_name(bad_shape, "ckpt.pth"),
                    Contains("layer.bias/exp_avg") && Contains("shape"));
}
