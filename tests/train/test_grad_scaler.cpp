// GradScaler on the CPU (the AMP kernels have CPU implementations): skipped steps and
// backoff on inf/NaN, exact unscaling, growth after the interval, state round trip.
#include "minigpt4/common/error.h"
#include "minigpt4/train/grad_scaler.h"

#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <limits>

using namespace minigpt4;
using namespace minigpt4::train;
using Catch::Contains;

namespace {

struct Setup {
  torch::Tensor w = torch::tensor({1.0f, -2.0f, 3.0f}).set_requires_grad(true);
  torch::optim::SGD sgd{std::vector<torch::Tensor>{w}, torch::optim::SGDOptions(0.1)};

  // loss = sum(w * c): the unscaled gradient is exactly c.
  void backward(GradScaler& scaler, const torch::Tensor& c) {
    sgd.zero_grad();
    scaler.scale((w * c).sum()).backward();
  }
};

}  // namespace

TEST_CASE("grad scaler: finite gradients are unscaled exactly and the step is taken", "[train]") {
  Setup s;
  GradScaler scaler(true);
  CHECK(scaler.get_scale() == 65536.0);
  const auto loss = torch::tensor(1.5f);
  CHECK(scaler.scale(loss).item<float>() == 1.5f * 65536.0f);

  const auto c = torch::tensor({0.5f, -0.25f, 2.0f});
  s.backward(scaler, c);
  CHECK(torch::equal(s.w.grad(), c * 65536.0f));
  scaler.unscale_(s.sgd);
  CHECK(torch::equal(s.w.grad(), c));  // a power of two: exact
  const auto before = s.w.detach().clone();
  CHECK(scaler.step(s.sgd));
  CHECK(torch::allclose(s.w, before - 0.1f * c));
  scaler.update();
  CHECK(scaler.get_scale() == 65536.0);
  CHECK(scaler.growth_tracker() == 1);
}

TEST_CASE("grad scaler: inf or NaN skips the step and halves the scale", "[train]") {
  Setup s;
  GradScaler scaler(true);
  for (float bad : {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    INFO("bad value " << bad);
    s.backward(scaler, torch::tensor({1.0f, 1.0f, 1.0f}));
    s.w.mutable_grad()[1] = bad;
    const auto before = s.w.detach().clone();
    const double scale_before = scaler.get_scale();
    CHECK_FALSE(scaler.step(s.sgd));  // unscale_ ran inside step
    CHECK(torch::equal(s.w, before));
    scaler.update();
    CHECK(scaler.get_scale() == scale_before * 0.5);
    CHECK(scaler.growth_tracker() == 0);
  }
  CHECK(scaler.get_scale() == 16384.0);
}

TEST_CASE("grad scaler: the scale grows after growth_interval clean steps", "[train]") {
  Setup s;
  GradScalerOptions options;
  options.init_scale = 1024;
  options.growth_interval = 3;
  GradScaler scaler(true, options);
  for (int i = 1; i <= 3; ++i) {
    s.backward(scaler, torch::tensor({1.0f, 2.0f, 3.0f}));
    CHECK(scaler.step(s.sgd));
    scaler.update();
    if (i < 3) {
      CHECK(scaler.get_scale() == 1024.0);
      CHECK(scaler.growth_tracker() == i);
    }
  }
  CHECK(scaler.get_scale() == 2048.0);
  CHECK(scaler.growth_tracker() == 0);

  // An overflow in between restarts the count.
  s.backward(scaler, torch::tensor({1.0f, 2.0f, 3.0f}));
  scaler.step(s.sgd);
  scaler.update();
  s.backward(scaler, torch::tensor({1.0f, 2.0f, 3.0f}));
  s.w.mutable_grad()[0] = std::numeric_limits<float>::infinity();
  scaler.step(s.sgd);
  scaler.update();
  CHECK(scaler.get_scale() == 1024.0);
  CHECK(scaler.growth_tracker() == 0);
}

TEST_CASE("grad scaler: state round trip, misuse errors, disabled pass-through", "[train]") {
  Setup s;
  GradScalerOptions options;
  options.growth_interval = 2;
  GradScaler scaler(true, options);
  for (int i = 0; i < 3; ++i) {
    s.backward(scaler, torch::tensor({1.0f, 2.0f, 3.0f}));
    scaler.step(s.sgd);
    scaler.update();
  }
  CHECK(scaler.get_scale() == 131072.0);
  CHECK(scaler.growth_tracker() == 1);
  const StateDict state = scaler.state_dict();
  CHECK(state.at("scale").scalar_type() == torch::kFloat32);
  CHECK(state.at("_growth_tracker").scalar_type() == torch::kInt32);

  GradScaler restored(true, options);
  restored.load_state_dict(state, "ckpt.pth");
  CHECK(restored.get_scale() == 131072.0);
  CHECK(restored.growth_tracker() == 1);
  s.backward(restored, torch::tensor({1.0f, 1.0f, 1.0f}));  // the lazily created scale uses the loaded value
  CHECK(s.w.grad()[0].item<float>() == 131072.0f);
  restored.step(s.sgd);
  restored.update();
  CHECK(restored.get_scale() == 262144.0);
  CHECK_THROWS_WITH(restored.load_state_dict({}, "ckpt.pth"), Contains("ckpt.pth") && Contains("scale"));

  // unscale_ twice, step twice, update before any step, fp16 gradients.
  s.backward(scaler, torch::tensor({1.0f, 1.0f, 1.0f}));
  scaler.unscale_(s.sgd);
  CHECK_THROWS_WITH(scaler.unscale_(s.sgd), Contains("already"));
  scaler.step(s.sgd);
  CHECK_THROWS_WITH(scaler.step(s.sgd), Contains("already"));
  scaler.update();
  CHECK_THROWS_AS(scaler.update(), Error);
  auto h = torch::ones({2}, torch::kFloat16).set_requires_grad(true);
  torch::optim::SGD sgd_h({h}, torch::optim::SGDOptions(0.1));
  scaler.scale(h.sum()).backward();
  CHECK_THROWS_WITH(scaler.unscale_(sgd_h), Contains("fp16"));

  GradScaler off(false);
  const auto loss = torch::tensor(2.0f);
  CHECK(off.scale(loss).is_same(loss));
  CHECK(off.get_scale() == 1.0);
  CHECK(off.state_dict().empty());
  Setup t;
  t.backward(off, torch::tensor({1.0f, 1.0f, 1.0f}));
  const auto before = t.w.detach().clone();
  CHECK(off.step(t.sgd));
  off.update();
  CHECK(torch::allclose(t.w, before - 0.1f));
}
