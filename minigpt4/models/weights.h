#pragma once
// Copying a state dict into a module by name. Everything a user can get wrong is reported
// by name: keys the module needs that the file lacks, keys the file has that the module
// does not use, and shapes that differ. Tensors are cast to the parameter's dtype/device;
// a floating weight meant for an int8 Linear (low_resource) is quantised into it.
#include "minigpt4/common/state_dict.h"

#include <torch/torch.h>

#include <functional>
#include <set>
#include <string>
#include <vector>

namespace minigpt4 {

struct LoadResult {
  std::string source;                   // the file or directory the tensors came from
  std::vector<std::string> loaded;      // module names filled
  std::vector<std::string> unexpected;  // file keys the module has no use for
  std::vector<std::string> ignored;     // file keys known to be unused (e.g. BLIP-2 text branch)
};

struct LoadSpec {
  std::string source;      // for messages
  std::string add_prefix;  // prepended to every file key ("llama_model." for an HF dir)
  // File keys (after add_prefix) that are known not to belong to the model; they are
  // listed as ignored, never as unexpected.
  std::function<bool(const std::string&)> is_ignorable;
  // Called for a key whose shape differs: may return a converted tensor (e.g. an
  // interpolated pos_embed) or an undefined tensor to report the mismatch.
  std::function<torch::Tensor(const std::string& name, const torch::Tensor& value, const torch::Tensor& target)>
      reshape;
};

// Copies every tensor of `state` whose name is a parameter or buffer of `module` and records
// which names were filled in `filled`. Shape mismatches throw, naming key, shapes and source.
LoadResult load_into(torch::nn::Module& module, const StateDict& state, const LoadSpec& spec,
                     std::set<std::string>& filled);

// All parameter names of `module` (with `prefix`) not in `filled`.
std::vector<std::string> unfilled_parameters(const torch::nn::Module& module, const std::set<std::string>& filled,
                                             const std::string& prefix = "");

// "a, b, c and 12 more" for error messages.
std::string summarize_names(const std::vector<std::string>& names, size_t max_listed = 8);

}  // namespace minigpt4
