#pragma once
// A state dict: tensor name -> tensor, exactly as PyTorch's `module.state_dict()`.
// Loaders produce it, models consume it; neither knows about the other.
#include <ATen/core/Tensor.h>

#include <map>
#include <string>

namespace minigpt4 {

using StateDict = std::map<std::string, at::Tensor>;

}  // namespace minigpt4
