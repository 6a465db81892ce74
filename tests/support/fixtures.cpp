#include "tests/support/fixtures.h"

#include "minigpt4/io/checkpoint.h"

#include <torch/torch.h>
#include <fmt/ranges.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

namespace minigpt4::test {

fs::path data_dir() { return MINIGPT4_TEST_DATA_DIR; }
fs::path source_dir() { return MINIGPT4_SOURCE_DIR; }

// Manifests hold Python's Infinity/NaN literals; io::read_json_file reads them.
nlohmann::json read_json(const fs::path& path) { return io::read_json_file(path.string()); }

fs::path hf_model_dir(const fs::path& case_dir, const nlohmann::json& manifest, const std::string& model_type) {
  if (!manifest.contains("files")) return {};
  for (const auto& file : manifest["files"]) {
    const fs::path path = file.value("path", "");
    if (path.filename() != "config.json" || !path.has_parent_path()) continue;
    const auto config = read_json(case_dir / path);
    if (config.value("model_type", "") == model_type) return case_dir / path.parent_path();
  }
  return {};
}

std::string parity_case_yaml(const fs::path& dir, const nlohmann::json& manifest) {
  const auto& c = manifest["config"];
  const auto& v = c["vision"];
  const std::string llm_dir = c["llama"].value("hf_dir", "vicuna");
  std::string yaml = fmt::format(
      "model:\n  arch: minigpt4\n  image_size: {}\n  vit_patch_size: {}\n"
      "  vit_width: {}\n  vit_depth: {}\n  vit_num_heads: {}\n  vit_mlp_ratio: {}\n  vit_precision: fp32\n"
      "  llm_precision: fp32\n  vit_model: '{}'\n  llama_model: '{}'\n  ckpt: '{}'\n",
      c["image_size"].get<int64_t>(), v["patch_size"].get<int64_t>(), v["width"].get<int64_t>(),
      v["depth"].get<int64_t>(), v["heads"].get<int64_t>(), v["mlp_ratio"].get<double>(),
      (dir / "eva_vit_g.pth").string(), (dir / llm_dir).string(), (dir / "pretrained_minigpt4.pth").string());
  if (!c.contains("qformer"))  // the LLaMA-2 variant: patches straight to the projector
    return yaml + "  model_type: pretrain_llama2\n  has_qformer: False\n";
  const auto& q = c["qformer"];
  return yaml + fmt::format(
                    "  model_type: pretrain_vicuna0\n  num_query_token: {}\n  qformer_hidden_size: {}\n  "
                    "qformer_num_layers: {}\n"
                    "  qformer_num_heads: {}\n  qformer_intermediate_size: {}\n  cross_attention_freq: {}\n  "
                    "q_former_model: '{}'\n",
                    q["num_query_token"].get<int64_t>(), q["hidden_size"].get<int64_t>(),
                    q["num_hidden_layers"].get<int64_t>(), q["num_attention_heads"].get<int64_t>(),
                    q["intermediate_size"].get<int64_t>(), q["cross_attention_freq"].get<int64_t>(),
                    (dir / "blip2_pretrained.pth").string());
}

static bool is_case_dir(const fs::path& dir) {
  const fs::path manifest = dir / "manifest.json";
  if (!fs::is_regular_file(manifest)) return false;
  const auto m = read_json(manifest);
  return m.value("format", "") == "minigpt4-parity-fixture";
}

static void add_cases_under(const fs::path& root, std::vector<fs::path>& out) {
  if (!fs::is_directory(root)) return;
  if (is_case_dir(root)) {
    out.push_back(root);
    return;
  }
  std::vector<fs::path> children;
  for (const auto& entry : fs::directory_iterator(root))
    if (entry.is_directory() && is_case_dir(entry.path())) children.push_back(entry.path());
  std::sort(children.begin(), children.end());
  out.insert(out.end(), children.begin(), children.end());
}

std::vector<fs::path> parity_cases(const std::string& with_file) {
  std::vector<fs::path> all;
  add_cases_under(data_dir() / "parity", all);
  if (const char* env = std::getenv("MINIGPT4_PARITY_DIRS")) {
    std::stringstream ss(env);
    std::string entry;
    while (std::getline(ss, entry, ':')) {
      if (entry.empty()) continue;
      // A mistyped entry must not pass vacuously.
      const size_t before = all.size();
      add_cases_under(entry, all);
      if (all.size() == before)
        throw std::runtime_error("MINIGPT4_PARITY_DIRS entry '" + entry +
                                 "' is neither a parity case directory nor a directory of cases");
    }
  }
  std::vector<fs::path> out;
  std::set<fs::path> seen;
  for (const auto& dir : all) {
    const auto canonical = fs::weakly_canonical(dir);
    if (!seen.insert(canonical).second) continue;
    if (with_file.empty() || fs::exists(dir / with_file)) out.push_back(dir);
  }
  return out;
}

// Glob match where '*' is any run of characters.
static bool glob_match(const std::string& pattern, const std::string& text) {
  size_t p = 0, t = 0, star = std::string::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && pattern[p] == text[t]) {
      ++p, ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (star != std::string::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

Tolerance tolerance_for(const nlohmann::json& manifest, const std::string& name) {
  Tolerance tol;
  if (!manifest.contains("tolerance")) return tol;
  const auto& section = manifest["tolerance"];
  if (section.contains("default")) {
    tol.atol = section["default"].value("atol", tol.atol);
    tol.rtol = section["default"].value("rtol", tol.rtol);
  }
  if (!section.contains("per_tensor")) return tol;
  for (const auto& [pattern, value] : section["per_tensor"].items()) {
    if (!value.is_object()) continue;  // prose entries such as "*ids / *targets / *mask"
    if (!glob_match(pattern, name)) continue;
    tol.atol = value.value("atol", tol.atol);
    tol.rtol = value.value("rtol", tol.rtol);
    return tol;
  }
  return tol;
}

Comparison compare(const std::string& name, const at::Tensor& actual_in, const at::Tensor& expected_in,
                   const Tolerance& tol) {
  Comparison result;
  const auto actual = actual_in.detach().to(torch::kCPU);
  const auto expected = expected_in.detach().to(torch::kCPU);
  if (actual.sizes() != expected.sizes()) {
    result.message = fmt::format("{}: shape {} != expected {}", name, fmt::join(actual.sizes(), "x"),
                                 fmt::join(expected.sizes(), "x"));
    return result;
  }
  const bool integral = !at::isFloatingType(expected.scalar_type());
  if (integral || tol.exact) {
    const auto a = actual.to(torch::kLong), e = expected.to(torch::kLong);
    const auto mismatch = (a != e);
    const int64_t count = mismatch.sum().item<int64_t>();
    result.ok = count == 0;
    if (!result.ok) {
      const int64_t first = mismatch.flatten().nonzero()[0].item<int64_t>();
      result.message =
          fmt::format("{}: {} of {} elements differ; first at flat index {}: {} != expected {}", name, count, e.numel(),
                      first, a.flatten()[first].item<int64_t>(), e.flatten()[first].item<int64_t>());
    }
    return result;
  }
  const auto a = actual.to(torch::kDouble), e = expected.to(torch::kDouble);
  const auto both_inf = torch::isinf(a) & torch::isinf(e) & (torch::sign(a) == torch::sign(e));
  auto diff = torch::where(both_inf, torch::zeros_like(a), (a - e).abs());
  diff = torch::nan_to_num(diff, /*nan=*/1e30);
  const auto limit = tol.atol + tol.rtol * torch::where(both_inf, torch::zeros_like(e), e.abs());
  const auto excess = diff - limit;
  result.max_abs_diff = e.numel() ? diff.max().item<double>() : 0.0;
  const int64_t worst = e.numel() ? excess.flatten().argmax().item<int64_t>() : 0;
  result.ok = e.numel() == 0 || excess.flatten()[worst].item<double>() <= 0;
  if (!result.ok) {
    result.message = fmt::format(
        "{}: max |diff| {:.3g}; worst at flat index {}: {:.8g} vs expected {:.8g} "
        "(atol {}, rtol {})",
        name, result.max_abs_diff, worst, a.flatten()[worst].item<double>(), e.flatten()[worst].item<double>(),
        tol.atol, tol.rtol);
  }
  return result;
}

}  // namespace minigpt4::test
