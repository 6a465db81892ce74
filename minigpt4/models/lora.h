#pragma once
// LoRA (Hu et al. 2021, "Low-Rank Adaptation"): a frozen linear layer W gets a trainable
// update, y = W x + (alpha / r) * B A dropout(x), with A [r, in] and B [out, r]. This is the
// one mechanism every relative uses (ConLoRA's per-task adapters on the ViT, Q-Former and
// LLM; TinyGPT-V's on Phi-2), written to behave like Hugging Face PEFT's LoraModel:
//  - targets are chosen by module name (LoraConfig::matches, PEFT's target_modules and
//    layers_to_transform rules), among the minigpt4::Linear layers under a root module;
//  - A starts kaiming-uniform(a = sqrt(5)), B at zero, so a fresh adapter changes nothing;
//  - the weights are registered on the layer as lora_A.<adapter>.weight and
//    lora_B.<adapter>.weight, PEFT's in-memory names, so a training checkpoint holds them
//    under the names a PEFT model would use;
//  - several named adapters live side by side; one (or none: "original") is active, and
//    switching is a flag per layer, with no reload of the base model.
// The active adapter can be merged into the base weight for inference (no extra products
// per token) and unmerged again; an int8 (low_resource) base cannot take a merge, its
// adapters run unmerged. Adapter weights are float32 whatever the base dtype (PEFT's
// autocast_adapter_dtype): they train with AdamW, and the base product is unchanged.
//
// A fused layer can expose parts of its output under names of their own (Linear::parts):
// EVA's qkv offers `query`, `key` and `value`, so ConLoRA's adapters on a ViT whose qkv was
// split into three linears apply to the fused layer unchanged, with identical results.
#include "minigpt4/models/layers.h"

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace minigpt4::lora {

// The name that means "no adapter": the base model as loaded.
inline constexpr const char* kOriginal = "original";

// One adapter's settings, the fields of PEFT's LoraConfig this code honours.
struct LoraConfig {
  int64_t r = 8;
  double lora_alpha = 8;
  double lora_dropout = 0.0;
  // A module is a target when its name (relative to the root) equals one of these or ends
  // with "." + one of them ...
  std::vector<std::string> target_modules;
  // ... or, when this is set instead, when the regex matches the whole name (PEFT's
  // target_modules given as one string; layers_to_transform is then ignored, as in PEFT).
  std::string target_regex;
  // Only modules in these layers (empty: every layer). The layer index is the number after
  // the first `<pattern>.` in the name for a pattern of layers_pattern, or without one after
  // the first `<segment>.` that follows a dot (PEFT >= 0.18's rules).
  std::vector<int64_t> layers_to_transform;
  std::vector<std::string> layers_pattern;
  bool use_rslora = false;  // scale alpha / sqrt(r) instead of alpha / r
  // Per-module rank / alpha by name pattern (PEFT's rank_pattern / alpha_pattern: the key
  // matches the end of the name, as `(.*\.)?(key)$`).
  std::map<std::string, int64_t> rank_pattern;
  std::map<std::string, double> alpha_pattern;
  // Recorded in adapter_config.json only.
  std::string base_model_name_or_path;
  std::string task_type;  // "CAUSAL_LM" for an LLM adapter, empty for others (as ConLoRA's)

  bool matches(const std::string& module_name) const;
  int64_t rank_for(const std::string& module_name) const;
  double alpha_for(const std::string& module_name) const;
  double scale(int64_t rank, double alpha) const;
  // Throws minigpt4::Error when r, alpha, dropout or the target settings make no sense.
  void validate(const std::string& context) const;
};

// The adapters on one target: the output rows [row_begin, row_begin + rows) of a Linear
// (all of them, or one part of a fused layer). Owned by the Linear (Linear::lora); the
// weights are registered on `host` (the Linear itself, or the placeholder module standing
// for a part) as lora_A.<adapter>.weight / lora_B.<adapter>.weight.
class LoraLayer {
 public:
  LoraLayer(Linear& base, torch::nn::Module& host, std::string part, int64_t row_begin, int64_t rows);

  // A new adapter: A kaiming-uniform(a = sqrt(5)), B zero, float32 on the base's device.
  void add(const std::string& adapter, int64_t rank, double scale, double dropout,
           std::shared_ptr<const LoraConfig> config);
  void remove(const std::string& adapter);
  bool has(const std::string& adapter) const { return adapters_.count(adapter) > 0; }
  std::vector<std::string> adapter_names() const;

  // "" (or an adapter this layer lacks): none. A merged adapter is unmerged first.
  void set_active(const std::string& adapter);
  const std::string& active() const { return active_; }
  // Adds the active adapter's update to the base weight (fails for an int8 base), or
  // takes the merged one out again. The update merged is remembered, so unmerging is exact
  // even if the adapter's weights changed in between.
  void merge();
  void unmerge();
  bool merged() const { return merged_.has_value(); }

  // y (the base product for x, [..., out]) plus the active unmerged adapter's update.
  torch::Tensor apply(const torch::Tensor& x, torch::Tensor y) const;

  struct Adapter {
    torch::Tensor A, B;  // [r, in], [rows, r]: the registered parameters
    double scale = 1.0;
    double dropout = 0.0;
    std::shared_ptr<const LoraConfig> config;  // how it was made (saving writes it back)
  };
  const Adapter& adapter(const std::string& name) const;
  const std::string& part() const { return part_; }  // "" for the whole layer
  int64_t row_begin() const { return row_begin_; }
  int64_t rows() const { return rows_; }
  const Linear& base() const { return base_; }
  // Whether dropout applies: the lora_A container's training flag (Module::train / eval).
  bool training() const { return a_dict_->is_training(); }
  void set_training(bool on);

 private:
  // base rows += scale * B A, in one fused product (no weight-sized temporary).
  void add_to_base(const torch::Tensor& A, const torch::Tensor& B, double scale);

  Linear& base_;
  std::string part_;
  int64_t row_begin_, rows_;
  std::shared_ptr<torch::nn::Module> a_dict_, b_dict_;
  std::map<std::string, Adapter> adapters_;
  std::string active_;
  std::optional<Adapter> merged_;  // the update currently added to the base weight
};

// A LoRA layer and its name: the Linear's name, or its parent's name + "." + the part.
struct NamedLoraLayer {
  std::string name;
  LoraLayer* layer;
};

// Every place under `root` that can take an adapter: each Linear, and each part of a fused
// Linear. `name` relative to root.
struct Target {
  std::string name;
  std::shared_ptr<Linear> linear;
  torch::nn::Module* parent = nullptr;  // for parts: where the placeholder goes
  std::string part;                     // "" for the whole layer
  int64_t row_begin = 0, rows = 0;
};
std::vector<Target> linear_targets(torch::nn::Module& root);

// Creates adapter `adapter` on every target of `root` the config selects and returns their
// names. No target matching, an adapter name already in use, or an invalid name ('.',
// empty, "original") is an error naming `context`.
std::vector<std::string> add_adapter(torch::nn::Module& root, const std::string& adapter, const LoraConfig& config,
                                     const std::string& context = "LoRA");

// Creates adapter `adapter` at exactly these targets (a loaded file names them): name ->
// {rank, scale}. Unknown names are errors naming `source`.
struct PlacedAdapter {
  int64_t rank = 0;
  double scale = 1.0;
};
void add_adapter_at(torch::nn::Module& root, const std::string& adapter, const std::map<std::string, PlacedAdapter>& at,
                    const LoraConfig& config, const std::string& source);

std::vector<NamedLoraLayer> lora_layers(torch::nn::Module& root);
// Adapter names present under root, sorted.
std::vector<std::string> adapter_names(torch::nn::Module& root);
bool has_adapter(torch::nn::Module& root, const std::string& adapter);
// Removes an adapter's weights (unmerging it first when merged).
void delete_adapter(torch::nn::Module& root, const std::string& adapter);

// Makes `adapter` the one every layer under root applies; "original" (or "") disables all.
// Unknown names are errors listing the known ones. With merge, the adapter is folded into
// the base weights (see merge_active_adapter).
void set_active_adapter(torch::nn::Module& root, const std::string& adapter, bool merge = false);
// The active adapter, "original" when none.
std::string active_adapter(torch::nn::Module& root);
// Folds the active adapter into every base weight it adapts (an int8 base is refused,
// naming the layer, before anything changes) / takes every merged update out again.
void merge_active_adapter(torch::nn::Module& root);
void unmerge_adapters(torch::nn::Module& root);

// requires_grad on the weights of `adapter` (only; every other adapter's weights are
// frozen). "" freezes all adapters.
void set_trainable_adapter(torch::nn::Module& root, const std::string& adapter);
// Turns adapter dropout on or off (the adapter containers' train/eval flag only; the rest
// of the model keeps its mode).
void set_adapters_training(torch::nn::Module& root, bool on);

// True for the parameter names of adapter weights (".lora_A." / ".lora_B." in the name).
bool is_adapter_parameter(const std::string& name);

// The weights of one adapter under PEFT's saved names, relative to root:
// "<prefix><module>.lora_A.weight" / ".lora_B.weight" (the adapter name left out, as PEFT
// writes files). Tensors are the live parameters (not copies).
std::map<std::string, torch::Tensor> adapter_weights(torch::nn::Module& root, const std::string& adapter,
                                                     const std::string& prefix = "");
// The config the adapter was created with (from any of its layers).
std::shared_ptr<const LoraConfig> adapter_config(torch::nn::Module& root, const std::string& adapter);

}  // namespace minigpt4::lora
