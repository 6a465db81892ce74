#include "minigpt4/train/vpgtrans.h"

#include "minigpt4/common/error.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/tokenizer/tokenizer.h"

#include <torch/torch.h>

#include <fstream>

namespace minigpt4::train {

TokenPairs token_pairs_from_captions(const std::vector<std::string>& captions, const Tokenizer& source,
                                     const Tokenizer& target) {
  TokenPairs pairs;
  for (const auto& caption : captions) {
    const auto s = source.encode(caption, /*add_special_tokens=*/false);
    const auto t = target.encode(caption, /*add_special_tokens=*/false);
    if (s.empty() || s.size() != t.size()) {
      ++pairs.captions_skipped;
      continue;
    }
    pairs.source.insert(pairs.source.end(), s.begin(), s.end());
    pairs.target.insert(pairs.target.end(), t.begin(), t.end());
    ++pairs.captions_used;
  }
  return pairs;
}

WordConverter train_word_converter(const at::Tensor& source_embeddings, const at::Tensor& target_embeddings,
                                   const TokenPairs& pairs, const WordConverterOptions& options,
                                   const std::function<void(int64_t, double)>& on_epoch) {
  if (pairs.source.empty())
    fail("word converter: no token pairs (no caption tokenises to equal lengths under both tokenizers)");
  if (pairs.source.size() != pairs.target.size()) fail("word converter: unequal pair lists");
  const auto src_vocab = source_embeddings.size(0), tgt_vocab = target_embeddings.size(0);
  for (size_t i = 0; i < pairs.source.size(); ++i)
    if (pairs.source[i] < 0 || pairs.source[i] >= src_vocab || pairs.target[i] < 0 || pairs.target[i] >= tgt_vocab)
      fail(
          "word converter: token pair ({}, {}) is outside the vocabularies ({}, {}): do the tokenizers belong to "
          "these LLMs?",
          pairs.source[i], pairs.target[i], src_vocab, tgt_vocab);

  torch::manual_seed(options.seed);
  const auto src = source_embeddings.detach().to(torch::kFloat32);
  const auto tgt = target_embeddings.detach().to(torch::kFloat32);
  auto src_ids = torch::tensor(pairs.source, torch::kInt64);
  auto tgt_ids = torch::tensor(pairs.target, torch::kInt64);
  torch::nn::Linear converter(src.size(1), tgt.size(1));  // PyTorch's default init, as nn.Linear
  torch::optim::SGD sgd(converter->parameters(), torch::optim::SGDOptions(options.lr));
  const int64_t n = src_ids.size(0);
  auto mean_loss = [&] {
    torch::NoGradGuard no_grad;
    return (1 - torch::cosine_similarity(converter(src.index_select(0, src_ids)), tgt.index_select(0, tgt_ids), 1))
        .mean()
        .item<double>();
  };
  for (int64_t epoch = 0; epoch < options.epochs; ++epoch) {
    const auto order = torch::randperm(n, torch::kInt64);
    for (int64_t start = 0; start < n; start += options.batch_size) {
      const auto batch = order.narrow(0, start, std::min(options.batch_size, n - start));
      const auto predicted = converter(src.index_select(0, src_ids.index_select(0, batch)));
      const auto wanted = tgt.index_select(0, tgt_ids.index_select(0, batch));
      const auto loss = (1 - torch::cosine_similarity(predicted, wanted, 1)).mean();
      sgd.zero_grad();
      loss.backward();
      sgd.step();
    }
    if (on_epoch) on_epoch(epoch, mean_loss());
  }
  WordConverter out{converter->weight.detach().clone(), converter->bias.detach().clone(), 0, 0};
  // The span of the distinct paired source embeddings: an orthonormal basis from the SVD.
  const auto distinct = std::get<0>(at::_unique(src_ids, /*sorted=*/true));
  const auto svd = torch::linalg_svd(src.index_select(0, distinct), /*full_matrices=*/false);
  const auto sv = std::get<1>(svd);
  const auto keep = (sv > sv.max() * 1e-5).sum().item<int64_t>();
  out.source_span = keep;
  if (options.span_only) {
    const auto basis = std::get<2>(svd).narrow(0, 0, keep);  // [keep, d_src]
    out.weight = out.weight.matmul(basis.t().matmul(basis));
    torch::NoGradGuard no_grad;
    converter->weight.copy_(out.weight);
  }
  out.final_loss = mean_loss();
  return out;
}

std::pair<at::Tensor, at::Tensor> merge_projector(const WordConverter& converter, const at::Tensor& projector_weight,
                                                  const at::Tensor& projector_bias) {
  const auto wc = converter.weight.to(torch::kFloat32), bc = converter.bias.to(torch::kFloat32);
  const auto wp = projector_weight.to(torch::kFloat32), bp = projector_bias.to(torch::kFloat32);
  if (wc.size(1) != wp.size(0))
    fail(
        "VPGTrans: the source projector outputs {} features but the converter expects the source LLM's {}: is the "
        "checkpoint from the source LLM's model?",
        wp.size(0), wc.size(1));
  return {wc.matmul(wp), wc.matmul(bp) + bc};
}

namespace {

at::Tensor input_embeddings(const std::string& llm_dir) {
  const auto weights = io::load_state_dict(llm_dir);
  for (const auto& [name, tensor] : weights)
    if (name == "model.embed_tokens.weight" || name == "embed_tokens.weight") return tensor;
  fail("{}: no model.embed_tokens.weight (the LLM's input embeddings)", llm_dir);
}

at::Tensor required(const StateDict& weights, const std::string& name, const std::string& path) {
  const auto it = weights.find(name);
  if (it == weights.end())
    fail("{}: no '{}' (a MiniGPT-4 checkpoint with the trained projector is expected)", path, name);
  return it->second;
}

}  // namespace

ProjectorTransfer transfer_projector(const std::string& source_llm, const std::string& target_llm,
                                     const std::string& source_checkpoint, const std::vector<std::string>& captions,
                                     const WordConverterOptions& options,
                                     const std::function<void(int64_t, double)>& on_epoch) {
  ProjectorTransfer out;
  out.pairs = token_pairs_from_captions(captions, *load_tokenizer(source_llm), *load_tokenizer(target_llm));
  out.converter =
      train_word_converter(input_embeddings(source_llm), input_embeddings(target_llm), out.pairs, options, on_epoch);
  const auto n = static_cast<int64_t>(out.pairs.source.size());
  out.sgd_steps = options.epochs * ((n + options.batch_size - 1) / options.batch_size);
  const auto checkpoint = io::load_state_dict(source_checkpoint);
  std::tie(out.weight, out.bias) =
      merge_projector(out.converter, required(checkpoint, "llama_proj.weight", source_checkpoint),
                      required(checkpoint, "llama_proj.bias", source_checkpoint));
  return out;
}

std::vector<std::string> read_captions(const std::string& path) {
  std::vector<std::string> captions;
  auto add = [&](const nlohmann::json& caption) {
    if (caption.is_string())
      captions.push_back(caption.get<std::string>());
    else if (caption.is_array())
      for (const auto& c : caption)
        if (c.is_string()) captions.push_back(c.get<std::string>());
  };
  if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) {
    const auto j = io::read_json_file(path);
    const auto& items = j.is_object() && j.contains("annotations") ? j.at("annotations") : j;
    if (!items.is_array()) fail("{}: expected a list of captions or {{\"annotations\": [...]}}", path);
    for (const auto& item : items)
      if (item.is_object() && item.contains("caption")) add(item.at("caption"));
  } else {
    std::ifstream in(path);
    if (!in) fail("cannot read captions from {}", path);
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) captions.push_back(line);
  }
  if (captions.empty()) fail("{} holds no captions", path);
  return captions;
}

}  // namespace minigpt4::train
