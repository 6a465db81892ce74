#pragma once
// Helpers shared by the tests: where the data is, which parity cases exist, and how a
// tensor is compared against its golden value with the case's tolerance.
#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace minigpt4::test {

namespace fs = std::filesystem;

fs::path data_dir();    // tests/data
fs::path source_dir();  // the repository root

// Every parity case directory (one holding a manifest.json with format
// "minigpt4-parity-fixture"): those under tests/data/parity plus every entry of
// MINIGPT4_PARITY_DIRS (colon-separated; each a case directory or a directory of cases; an
// entry holding no case is an error).
// `with_file` keeps only cases that contain that file (e.g. "minigpt4_full.safetensors").
std::vector<fs::path> parity_cases(const std::string& with_file = "");

nlohmann::json read_json(const fs::path& path);

// The Hugging Face model directory of a case whose config.json says `model_type` (e.g.
// "phi" for tiny_phi2's phi2/), found through the manifest's file list; empty if none.
fs::path hf_model_dir(const fs::path& case_dir, const nlohmann::json& manifest, const std::string& model_type);

// The run config a user would write for a MiniGPT-4 case (one with minigpt4_full.safetensors):
// sizes from the manifest, weights from the case's split files, fp32 everywhere. Load it
// with Config::from_yaml, whose options override keys (e.g. model.low_resource=True).
std::string parity_case_yaml(const fs::path& dir, const nlohmann::json& manifest);

struct Tolerance {
  double atol = 1e-4;
  double rtol = 1e-4;
  bool exact = false;  // integer tensors: every element equal
};

// The tolerance the case's manifest gives for a tensor name (its "tolerance" section:
// default, then the first matching per_tensor pattern; '*' matches any run of characters).
Tolerance tolerance_for(const nlohmann::json& manifest, const std::string& tensor_name);

struct Comparison {
  bool ok = false;
  double max_abs_diff = 0;
  std::string message;  // names the tensor, the shapes or the worst element
};

// |actual - expected| <= atol + rtol * |expected| everywhere, shapes equal; integer
// tensors (or tol.exact) must be equal. Compares in float64 on the CPU.
Comparison compare(const std::string& name, const at::Tensor& actual, const at::Tensor& expected, const Tolerance& tol);

}  // namespace minigpt4::test
