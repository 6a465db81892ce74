#pragma once
// Two LoRA task adapters for the tiny fixture model (tests/data/parity/tiny_vicuna0), made
// once per test process as ConLoRA stores them: a folder per task holding one PEFT adapter
// per component (lora_a/{llm,ve,qformer}, lora_b/...), with random A and B so each changes
// the answers. Used by the server tests and the app tests (`chat --lora`).
#include "minigpt4/common/config.h"
#include "minigpt4/models/lora.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/models/minigpt4_lora.h"
#include "tests/support/fixtures.h"

#include <torch/torch.h>

#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

namespace minigpt4::test {

// The options that point configs/tiny_vicuna0.yaml at the fixture's weights by absolute path.
inline std::vector<std::string> tiny_weight_options() {
  const auto dir = data_dir() / "parity/tiny_vicuna0";
  return {"model.vit_model=" + (dir / "eva_vit_g.pth").string(),
          "model.q_former_model=" + (dir / "blip2_pretrained.pth").string(),
          "model.llama_model=" + (dir / "vicuna").string(), "model.ckpt=" + (dir / "pretrained_minigpt4.pth").string()};
}

class TinyAdapters {
 public:
  static const TinyAdapters& get() {
    static const TinyAdapters adapters;
    return adapters;
  }
  std::filesystem::path folder(const std::string& name) const { return dir_ / name; }
  // model.lora_path for both: {lora_a: ..., lora_b: ...}.
  std::string lora_path_option() const {
    return "model.lora_path={lora_a: " + folder("lora_a").string() + ", lora_b: " + folder("lora_b").string() + "}";
  }
  ~TinyAdapters() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

 private:
  TinyAdapters()
      : dir_(std::filesystem::temp_directory_path() / ("minigpt4_tiny_adapters_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(dir_);
    auto options = tiny_weight_options();
    // ConLoRA's components at toy ranks: an adapter named "default" on each.
    for (const char* o :
         {"model.lora.llm.r=4", "model.lora.llm.lora_alpha=8", "model.lora.vit.r=2", "model.lora.qformer.r=2"})
      options.push_back(o);
    const auto config = Config::load((source_dir() / "configs/tiny_vicuna0.yaml").string(), options);
    const auto model = load_minigpt4(MiniGPT4Config::from_config(config), torch::kCPU);
    uint64_t seed = 11;
    for (const char* name : {"lora_a", "lora_b"}) {
      torch::NoGradGuard no_grad;
      torch::manual_seed(seed++);
      for (const auto& component : lora_components())
        for (const auto& l : lora::lora_layers(*lora_component(*model, component))) {
          const auto& a = l.layer->adapter(kTrainedAdapter);
          a.A.normal_(0, 0.3);
          a.B.normal_(0, 0.3);
        }
      save_adapter_folders(*model, kTrainedAdapter, (dir_ / name).string());
    }
  }
  std::filesystem::path dir_;
};

}  // namespace minigpt4::test
