// Greedy decoding and sampling (HF 4.28 `greedy_search` / `sample`), the logits processors
// and warpers, and Chat.answer's post-processing. Beam search is in beam_search.cpp.
#include "minigpt4/generate/generate.h"

#include "minigpt4/common/error.h"
#include "minigpt4/generate/decoding.h"
#include "minigpt4/tokenizer/tokenizer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace minigpt4 {

namespace detail {

Decoder::Decoder(const CausalLM& llm, const torch::Tensor& attention_mask, KVCache* cache, int64_t new_tokens)
    : llm_(llm),
      cache_(cache ? cache : &own_cache_),
      mask_(attention_mask.to(torch::kLong)),
      padded_(!(mask_ == 1).all().item<bool>()) {
  cache_->reserve = mask_.size(1) + new_tokens;
}

torch::Tensor Decoder::start(const torch::Tensor& inputs_embeds) {
  device_ = inputs_embeds.device();
  CausalLMOptions options;
  if (padded_) {
    mask_ = mask_.to(device_);
    options.attention_mask = mask_;
    // With earlier positions in the cache the prompt's positions come after them.
    options.position_ids = position_ids_from_mask(mask_).slice(1, mask_.size(1) - inputs_embeds.size(1));
  }
  options.cache = cache_;
  options.logits_to_keep = 1;
  return llm_.forward(inputs_embeds, options).logits.select(1, -1);
}

torch::Tensor Decoder::step(const torch::Tensor& tokens) {
  const int64_t n = mask_.size(0);
  CausalLMOptions options;
  if (padded_) {
    mask_ = torch::cat({mask_, torch::ones({n, 1}, mask_.options())}, 1);
    options.attention_mask = mask_;
    // HF: position_ids = cumsum(mask) - 1 (padding at 1), of which the step takes the last column.
    options.position_ids = position_ids_from_mask(mask_).slice(1, mask_.size(1) - 1);
  }
  options.cache = cache_;
  const auto embeds = llm_.embed(tokens.to(device_).view({n, 1}));
  return llm_.forward(embeds, options).logits.select(1, -1);
}

void Decoder::reorder(const torch::Tensor& index) {
  const auto idx = index.to(device_);
  for (auto& k : cache_->keys) k = k.index_select(0, idx);
  for (auto& v : cache_->values) v = v.index_select(0, idx);
  if (padded_) mask_ = mask_.index_select(0, idx);
}

torch::Tensor ids_tensor(const std::vector<std::vector<int64_t>>& rows, torch::Device device) {
  const int64_t n = static_cast<int64_t>(rows.size());
  const int64_t len = rows.empty() ? 0 : static_cast<int64_t>(rows[0].size());
  std::vector<int64_t> flat;
  flat.reserve(n * len);
  for (const auto& row : rows) {
    if (static_cast<int64_t>(row.size()) != len) fail("generate: input_ids rows of different lengths");
    flat.insert(flat.end(), row.begin(), row.end());
  }
  return torch::tensor(flat, torch::kLong).view({n, len}).to(device);
}

bool ends_with_stop_sequence(const std::vector<int64_t>& ids, const std::vector<std::vector<int64_t>>& stops) {
  for (const auto& stop : stops)
    if (!stop.empty() && stop.size() <= ids.size() && std::equal(stop.rbegin(), stop.rend(), ids.rbegin())) return true;
  return false;
}

at::Generator sampling_generator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

void check_config(const GenerationConfig& c, int64_t vocab_size) {
  if (c.max_new_tokens < 0) fail("generate: max_new_tokens must be >= 0, got {}", c.max_new_tokens);
  if (c.num_beams < 1) fail("generate: num_beams must be >= 1, got {}", c.num_beams);
  if (c.top_k < 0) fail("generate: top_k must be >= 0 (0 = off), got {}", c.top_k);
  // The warpers' settings matter (and are checked, as HF does) only when sampling.
  if (c.do_sample && !(c.top_p >= 0.0 && c.top_p <= 1.0)) fail("generate: top_p must be in [0, 1], got {}", c.top_p);
  if (c.do_sample && !(c.temperature > 0.0)) fail("generate: temperature must be > 0, got {}", c.temperature);
  if (!(c.repetition_penalty > 0.0)) fail("generate: repetition_penalty must be > 0, got {}", c.repetition_penalty);
  for (const auto& [name, id] : {std::pair<const char*, int64_t>{"bos_token_id", c.bos_token_id},
                                 {"eos_token_id", c.eos_token_id},
                                 {"pad_token_id", c.pad_token_id}})
    if (id >= vocab_size) fail("generate: {} {} is outside the vocabulary of {} ids", name, id, vocab_size);
  for (const auto& stop : c.stop_token_sequences)
    if (stop.empty()) fail("generate: an empty stop sequence would stop at once");
  for (const auto& [id, bias] : c.logit_bias)
    if (id < 0 || id >= vocab_size || !std::isfinite(bias))
      fail("generate: logit_bias {} -> {} needs an id in 0..{} and a finite bias", id, bias, vocab_size - 1);
}

}  // namespace detail

std::vector<int64_t> GenerationOutput::hf_output() const {
  std::vector<int64_t> out;
  if (seeded_bos >= 0) out.push_back(seeded_bos);
  out.insert(out.end(), tokens.begin(), tokens.end());
  return out;
}

torch::Tensor process_logits(const torch::Tensor& scores_in, const torch::Tensor& input_ids,
                             const GenerationConfig& c) {
  auto scores = scores_in.clone();
  for (const auto& [id, bias] : c.logit_bias) scores.select(1, id).add_(bias);
  const int64_t cur_len = input_ids.defined() ? input_ids.size(-1) : 0;
  if (c.repetition_penalty != 1.0 && cur_len > 0) {
    // RepetitionPenaltyLogitsProcessor: gather, penalise, scatter back (a repeated id is
    // penalised once: every copy gathers the same original score).
    const auto ids = input_ids.to(scores.device(), torch::kLong);
    auto picked = scores.gather(1, ids);
    picked = torch::where(picked < 0, picked * c.repetition_penalty, picked / c.repetition_penalty);
    scores.scatter_(1, ids, picked);
  }
  if (c.min_length > 0 && c.eos_token_id >= 0 && cur_len < c.min_length)
    scores.select(1, c.eos_token_id).fill_(-std::numeric_limits<double>::infinity());
  return scores;
}

torch::Tensor warp_logits(const torch::Tensor& scores_in, const GenerationConfig& c, int64_t min_tokens_to_keep) {
  constexpr double kFiltered = -std::numeric_limits<double>::infinity();
  auto scores = scores_in;
  const int64_t vocab = scores.size(-1);
  if (c.temperature != 1.0) scores = scores / c.temperature;
  if (c.top_k > 0) {
    // TopKLogitsWarper: drop everything below the k-th largest score.
    const int64_t k = std::min(std::max(c.top_k, min_tokens_to_keep), vocab);
    const auto kth = std::get<0>(scores.topk(k, -1)).narrow(-1, k - 1, 1);
    scores = scores.masked_fill(scores < kth, kFiltered);
  }
  if (c.top_p < 1.0) {
    // TopPLogitsWarper: ascending sort, drop the low tail whose cumulative probability is <= 1 - top_p.
    const auto [sorted, order] = scores.sort(/*stable=*/true, -1, /*descending=*/false);
    const auto cumulative = sorted.softmax(-1).cumsum(-1);
    auto remove = cumulative <= (1.0 - c.top_p);
    if (min_tokens_to_keep > 1) remove.narrow(-1, vocab - min_tokens_to_keep, min_tokens_to_keep).fill_(false);
    remove = remove.scatter(-1, order, remove);
    scores = scores.masked_fill(remove, kFiltered);
  }
  return scores;
}

std::vector<std::string> logits_pipeline(const GenerationConfig& c) {
  std::vector<std::string> names;
  if (!c.logit_bias.empty()) names.emplace_back("SequenceBiasLogitsProcessor");
  if (c.repetition_penalty != 1.0) names.emplace_back("RepetitionPenaltyLogitsProcessor");
  if (c.min_length > 0 && c.eos_token_id >= 0) names.emplace_back("MinLengthLogitsProcessor");
  if (c.do_sample) {
    if (c.temperature != 1.0) names.emplace_back("TemperatureLogitsWarper");
    if (c.top_k > 0) names.emplace_back("TopKLogitsWarper");
    if (c.top_p < 1.0) names.emplace_back("TopPLogitsWarper");
  }
  return names;
}

SequenceGeneration::SequenceGeneration(const GenerationConfig& config, int64_t vocab_size)
    : config_(config), processed_(!logits_pipeline(config).empty()) {
  detail::check_config(config_, vocab_size);
  if (config_.num_beams != 1) fail("generate: beam search runs whole sequences (generate), not a token at a time");
  out_.seeded_bos = config_.bos_token_id;
  if (config_.bos_token_id >= 0) input_ids_.push_back(config_.bos_token_id);
  if (config_.max_new_tokens == 0) finished_ = true, out_.finish_reason = "length";
}

int64_t SequenceGeneration::choose(const torch::Tensor& logits_in) {
  if (finished_) fail("generate: a token was asked of a finished sequence");
  const auto logits = logits_in.reshape({1, -1});
  const auto scores =
      processed_ ? process_logits(logits, detail::ids_tensor({input_ids_}, logits.device()), config_) : logits;
  int64_t token = 0;
  if (config_.do_sample) {
    if (!generator_) generator_ = detail::sampling_generator(config_.seed);
    const auto probs = torch::softmax(warp_logits(scores, config_, 1), -1).to(torch::kCPU);
    token = torch::multinomial(probs, 1, /*replacement=*/false, *generator_).item<int64_t>();
  } else {
    token = scores.argmax(-1).item<int64_t>();
  }
  chosen_.reset();
  if (config_.top_logprobs >= 0) {
    const auto log_probs = torch::log_softmax(scores.to(torch::kCPU, torch::kDouble).view({-1}), -1);
    TokenLogprob t;
    t.token = token;
    t.logprob = log_probs[token].item<double>();
    if (config_.top_logprobs > 0) {
      const auto [values, ids] = log_probs.topk(std::min<int64_t>(config_.top_logprobs, log_probs.size(0)));
      for (int64_t i = 0; i < ids.size(0); ++i) t.top.emplace_back(ids[i].item<int64_t>(), values[i].item<double>());
    }
    chosen_ = std::move(t);
  }
  return token;
}

void SequenceGeneration::accept(int64_t token, bool go_on) {
  if (finished_) fail("generate: a token was given to a finished sequence");
  input_ids_.push_back(token);
  out_.tokens.push_back(token);
  if (chosen_ && chosen_->token == token) out_.logprobs.push_back(std::move(*chosen_));
  chosen_.reset();
  if (config_.eos_token_id >= 0 && token == config_.eos_token_id) {
    finished_ = true, out_.finish_reason = "eos";
  } else if (detail::ends_with_stop_sequence(input_ids_, config_.stop_token_sequences)) {
    finished_ = true, out_.finish_reason = "stop";
  } else if (!go_on) {
    finished_ = true, out_.finish_reason = "cancelled";
  } else if (static_cast<int64_t>(out_.tokens.size()) >= config_.max_new_tokens) {
    finished_ = true, out_.finish_reason = "length";
  }
}

void SequenceGeneration::cancel() {
  if (!finished_) finished_ = true, out_.finish_reason = "cancelled";
}

namespace {

// HF `greedy_search` / `sample` over a batch: every row starts with the seeded bos; a row
// that produced eos or a stop sequence is finished and is fed the pad id from then on (its
// HF input_ids grow by that id, which the repetition penalty sees). Sampling draws every
// row's token from one generator, as HF's multinomial over the batch does.
std::vector<GenerationOutput> decode_rows(const CausalLM& llm, const torch::Tensor& inputs_embeds,
                                          const torch::Tensor& attention_mask, const GenerationConfig& c,
                                          const std::function<bool(int64_t)>& on_token, KVCache* cache = nullptr) {
  torch::NoGradGuard no_grad;
  const int64_t rows = inputs_embeds.size(0);
  const auto device = inputs_embeds.device();
  const int64_t filler = c.pad_token_id >= 0 ? c.pad_token_id : (c.eos_token_id >= 0 ? c.eos_token_id : 0);

  std::vector<SequenceGeneration> sequences(static_cast<size_t>(rows), SequenceGeneration(c, llm.vocab_size()));
  const auto all_finished = [&] {
    return std::all_of(sequences.begin(), sequences.end(), [](const auto& s) { return s.finished(); });
  };
  // HF's input_ids [rows, L]: each row's, finished rows padded with the filler they were fed.
  const auto input_ids = [&] {
    size_t length = 0;
    for (const auto& s : sequences) length = std::max(length, s.input_ids().size());
    std::vector<std::vector<int64_t>> ids;
    for (const auto& s : sequences) {
      ids.push_back(s.input_ids());
      ids.back().resize(length, filler);
    }
    return detail::ids_tensor(ids, device);
  };
  std::optional<at::Generator> generator;
  if (c.do_sample) generator = detail::sampling_generator(c.seed);

  // Without a processor to apply, the scores are the logits (no copy, no ids tensor per step).
  const bool processed = !logits_pipeline(c).empty();
  detail::Decoder decoder(llm, attention_mask, cache, c.max_new_tokens);
  torch::Tensor fed;
  for (int64_t step = 0; !all_finished(); ++step) {
    const auto logits = step == 0 ? decoder.start(inputs_embeds) : decoder.step(fed);
    const auto scores = processed ? process_logits(logits, input_ids(), c) : logits;
    torch::Tensor next;
    if (c.do_sample) {
      const auto probs = torch::softmax(warp_logits(scores, c, 1), -1).to(torch::kCPU);
      next = torch::multinomial(probs, 1, /*replacement=*/false, *generator).view({rows});
    } else {
      next = scores.argmax(-1).to(torch::kCPU);
    }
    next = next.contiguous();
    std::vector<int64_t> tokens(next.data_ptr<int64_t>(), next.data_ptr<int64_t>() + rows);
    for (int64_t b = 0; b < rows; ++b) {
      auto& sequence = sequences[static_cast<size_t>(b)];
      if (sequence.finished()) {
        tokens[b] = filler;
        continue;
      }
      sequence.accept(tokens[b], !on_token || on_token(tokens[b]));
    }
    fed = torch::tensor(tokens, torch::kLong);
  }
  std::vector<GenerationOutput> out;
  for (const auto& s : sequences) out.push_back(s.output());
  return out;
}

}  // namespace

GenerationOutput generate(const CausalLM& llm, const torch::Tensor& inputs_embeds, const GenerationConfig& config,
                          const std::function<void(int64_t)>& on_token) {
  if (inputs_embeds.dim() != 3 || inputs_embeds.size(0) != 1)
    fail("generate: inputs_embeds must be [1, T, H], got [{}]", fmt::join(inputs_embeds.sizes(), ", "));
  detail::check_config(config, llm.vocab_size());
  if (config.num_beams > 1) return detail::beam_search(llm, inputs_embeds, config, on_token);
  const auto mask = torch::ones({1, inputs_embeds.size(1)},
                                torch::TensorOptions().dtype(torch::kLong).device(inputs_embeds.device()));
  std::function<bool(int64_t)> callback;
  if (on_token) callback = [&on_token](int64_t token) { return on_token(token), true; };
  return decode_rows(llm, inputs_embeds, mask, config, callback).front();
}

GenerationOutput generate_with_cache(const CausalLM& llm, const torch::Tensor& inputs_embeds, KVCache& cache,
                                     const GenerationConfig& config, const std::function<bool(int64_t)>& on_token) {
  if (inputs_embeds.dim() != 3 || inputs_embeds.size(0) != 1 || inputs_embeds.size(1) < 1)
    fail("generate_with_cache: inputs_embeds must be [1, T>=1, H], got [{}]", fmt::join(inputs_embeds.sizes(), ", "));
  detail::check_config(config, llm.vocab_size());
  if (config.num_beams > 1) fail("generate_with_cache: beam search recomputes the prompt; use generate()");
  if (cache.length() > 0 && cache.keys[0].size(0) != 1) fail("generate_with_cache: the cache must hold one sequence");
  const auto mask = torch::ones({1, cache.length() + inputs_embeds.size(1)},
                                torch::TensorOptions().dtype(torch::kLong).device(inputs_embeds.device()));
  return decode_rows(llm, inputs_embeds, mask, config, on_token, &cache).front();
}

std::vector<GenerationOutput> generate_batch(const CausalLM& llm, const torch::Tensor& inputs_embeds,
                                             const torch::Tensor& attention_mask, const GenerationConfig& config) {
  if (inputs_embeds.dim() != 3)
    fail("generate_batch: inputs_embeds must be [B, T, H], got [{}]", fmt::join(inputs_embeds.sizes(), ", "));
  if (attention_mask.dim() != 2 || attention_mask.size(0) != inputs_embeds.size(0) ||
      attention_mask.size(1) != inputs_embeds.size(1))
    fail("generate_batch: attention_mask has shape [{}], expected [{}, {}]", fmt::join(attention_mask.sizes(), ", "),
         inputs_embeds.size(0), inputs_embeds.size(1));
  detail::check_config(config, llm.vocab_size());
  if (config.num_beams != 1) fail("generate_batch: beam search is only available for one sequence (generate)");
  return decode_rows(llm, inputs_embeds, attention_mask, config, {});
}

std::vector<int64_t> answer_tokens(const std::vector<int64_t>& tokens) {
  size_t begin = 0;
  if (begin < tokens.size() && tokens[begin] == 0) ++begin;
  if (begin < tokens.size() && tokens[begin] == 1) ++begin;
  return {tokens.begin() + static_cast<std::ptrdiff_t>(begin), tokens.end()};
}

namespace {

// Python's str.isspace for one code point.
bool is_python_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Length of the UTF-8 sequence starting with `lead` (0 for a continuation or invalid byte).
size_t utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 0;
}

uint32_t utf8_code_point(const std::string& s, size_t pos, size_t len) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(s[pos + i]); };
  if (len == 1) return byte(0);
  uint32_t cp = byte(0) & (0x7F >> len);
  for (size_t i = 1; i < len; ++i) cp = (cp << 6) | (byte(i) & 0x3F);
  return cp;
}

// Python's str.strip() on UTF-8 text.
std::string python_strip(const std::string& s) {
  size_t begin = 0, end = s.size();
  while (begin < end) {
    const size_t len = utf8_length(static_cast<unsigned char>(s[begin]));
    if (len == 0 || begin + len > end || !is_python_space(utf8_code_point(s, begin, len))) break;
    begin += len;
  }
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    const size_t len = utf8_length(static_cast<unsigned char>(s[start]));
    if (len != end - start || !is_python_space(utf8_code_point(s, start, len))) break;
    end = start;
  }
  return s.substr(begin, end - begin);
}

}  // namespace

std::string postprocess_answer(const std::vector<int64_t>& tokens, const Tokenizer& tokenizer) {
  std::string text = tokenizer.decode(answer_tokens(tokens), /*skip_special_tokens=*/false);
  if (const auto stop = text.find("###"); stop != std::string::npos) text.resize(stop);
  const std::string role = "Assistant:";
  if (const auto last = text.rfind(role); last != std::string::npos) text = text.substr(last + role.size());
  return python_strip(text);
}

}  // namespace minigpt4
