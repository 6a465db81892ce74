// The autocast region of the training forward: CUDA's autocast state is thread-local and can
// be checked without a GPU; on the CPU the guard does nothing.
#include "minigpt4/train/autocast.h"

#include <ATen/autocast_mode.h>
#include <catch2/catch.hpp>

using minigpt4::train::AutocastGuard;

TEST_CASE("AutocastGuard turns CUDA autocast on in the chosen dtype and restores it") {
  const c10::Device cuda(c10::DeviceType::CUDA, 0);
  REQUIRE_FALSE(at::autocast::is_autocast_enabled(c10::DeviceType::CUDA));
  const auto before = at::autocast::get_autocast_dtype(c10::DeviceType::CUDA);
  {
    AutocastGuard guard(cuda, c10::kBFloat16, true);
    CHECK(at::autocast::is_autocast_enabled(c10::DeviceType::CUDA));
    CHECK(at::autocast::get_autocast_dtype(c10::DeviceType::CUDA) == c10::kBFloat16);
  }
  CHECK_FALSE(at::autocast::is_autocast_enabled(c10::DeviceType::CUDA));
  CHECK(at::autocast::get_autocast_dtype(c10::DeviceType::CUDA) == before);
  {
    AutocastGuard disabled(cuda, c10::kHalf, false);
    CHECK_FALSE(at::autocast::is_autocast_enabled(c10::DeviceType::CUDA));
  }
}

TEST_CASE("AutocastGuard leaves the CPU alone") {
  AutocastGuard guard(c10::Device(c10::kCPU), c10::kBFloat16, true);
  CHECK_FALSE(at::autocast::is_autocast_enabled(c10::DeviceType::CPU));
  CHECK_FALSE(at::autocast::is_autocast_enabled(c10::DeviceType::CUDA));
}
