#pragma once
// Text generation from input embeddings, as Hugging Face transformers 4.28 `generate()` runs
// it for MiniGPT-4's `Chat.answer` (`llama_model.generate(inputs_embeds=...)`), on an LLM of
// any family (models/causal_lm.h: LLaMA, Phi):
//  - only embeddings come in, so HF seeds `input_ids` with the bos id. That id is never fed
//    to the model, but the repetition penalty, min_length and stop sequences see it, and HF
//    returns it first (GenerationOutput::hf_output());
//  - the prompt runs once, then one token at a time through the KV cache; position ids are
//    `cumsum(attention_mask) - 1` (left padding in a batch);
//  - logits processors in HF's order: repetition penalty, min-length eos suppression; for
//    sampling then the warpers temperature, top-k, top-p (filtered entries become -inf);
//  - beam search is HF's BeamSearchScorer (early_stopping=False, length_penalty over the
//    hypothesis length including the seeded bos, or as transformers >= 4.36 counts it:
//    GenerationConfig::beam_length_generated_only); with do_sample it is HF's beam_sample.
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace minigpt4 {

struct CausalLM;
struct KVCache;
class Tokenizer;

struct GenerationConfig {  // Hugging Face generate() semantics (transformers 4.28)
  int64_t max_new_tokens = 300;
  // HF MinLengthLogitsProcessor: eos is suppressed while the length of input_ids is below
  // min_length. With inputs_embeds, input_ids is the seeded bos plus the generated ids (the
  // prompt exists only as embeddings), so eos is allowed once 1 + generated >= min_length.
  int64_t min_length = 1;
  int num_beams = 1;
  double length_penalty = 1.0;  // beam hypotheses score sum_logprobs / len(hyp)^length_penalty
  // What len(hyp) counts. false, as transformers < 4.36 (MiniGPT-4's 4.28): the hypothesis'
  // input_ids, i.e. the seeded bos and the generated ids without the eos that ended it.
  // true, as transformers >= 4.36 (TinyGPT-V's 4.36.2): the generated ids, that eos included.
  bool beam_length_generated_only = false;
  bool do_sample = false;
  double temperature = 1.0, top_p = 1.0;
  int64_t top_k = 0;  // 0 = off (HF's own default is 50: MiniGPT-4's demo samples with top_k 50)
  double repetition_penalty = 1.0;
  int64_t bos_token_id = 1;   // seeded into input_ids (generation_config.json); < 0: none
  int64_t eos_token_id = 2;   // < 0: none
  int64_t pad_token_id = -1;  // fed to finished rows of a batch; < 0: eos
  // Generation stops when [bos] + generated ends with one of these (MiniGPT-4's
  // StoppingCriteriaSub); the matched tokens stay in the output.
  std::vector<std::vector<int64_t>> stop_token_sequences;
  uint64_t seed = 0;  // sampling RNG: a CPU torch::Generator seeded with it (probabilities are sampled on the CPU)
  // OpenAI's logit_bias (HF's SequenceBiasLogitsProcessor for one-token sequences): added to
  // these ids' scores before any other processor; -100 all but bans a token.
  std::vector<std::pair<int64_t, double>> logit_bias;
  // >= 0: SequenceGeneration records each chosen token's log-probability and this many most
  // likely alternatives (OpenAI's logprobs / top_logprobs), from the processed scores before
  // the sampling warpers.
  int top_logprobs = -1;
};

struct TokenLogprob {
  int64_t token = 0;
  double logprob = 0;
  std::vector<std::pair<int64_t, double>> top;  // the most likely tokens, most likely first
};

struct GenerationOutput {
  std::vector<int64_t> tokens;  // the generated ids (eos and stop tokens included, as HF returns them)
  std::string finish_reason;    // "stop" (stop sequence), "eos", "length" (max_new_tokens), "cancelled" (on_token)
  int64_t seeded_bos = -1;      // the bos HF put in front (config.bos_token_id)
  std::vector<TokenLogprob> logprobs;  // per token, when config.top_logprobs >= 0 (SequenceGeneration)
  // What HF's generate returns for this row: the seeded bos, then tokens.
  std::vector<int64_t> hf_output() const;
};

// Generates from input embeddings [1, T, H] (MiniGPT-4 passes inputs_embeds, as Chat.answer
// does). on_token (optional) is called with each new token id as it is chosen (greedy and
// sampling; for beam search with the best hypothesis' ids at the end). Runs under NoGradGuard
// on the embeddings' device. Stop sequences are checked on row 0 as in MiniGPT-4.
GenerationOutput generate(const CausalLM& llm, const at::Tensor& inputs_embeds, const GenerationConfig& config,
                          const std::function<void(int64_t)>& on_token = {});

// The same, continuing from `cache`, which holds the keys and values of positions computed
// earlier (a chat's previous rounds): inputs_embeds [1, T, H] are only the positions after
// them. On return the cache holds those positions, the new ones and every generated token
// but the last (which was never fed). Greedy and sampling only (beams reorder the cache).
// on_token returns false to end generation after that token (finish_reason "cancelled").
GenerationOutput generate_with_cache(const CausalLM& llm, const at::Tensor& inputs_embeds, KVCache& cache,
                                     const GenerationConfig& config, const std::function<bool(int64_t)>& on_token = {});

// One sequence's greedy decoding or sampling, a token at a time, for a caller that runs the
// model itself (the server's continuous batching steps many sequences together): the same
// choices as generate_with_cache makes for its one row. Feed it the logits after the last
// position; it chooses, records and says whether generation has ended.
class SequenceGeneration {
 public:
  // Throws minigpt4::Error for a config generation refuses (check_config); num_beams must be 1.
  SequenceGeneration(const GenerationConfig& config, int64_t vocab_size);
  // The next token from the next-token logits ([V] or [1, V], float32): HF's logits
  // processors, then argmax or the warpers and a draw from this sequence's own generator
  // (seeded with config.seed). Call only while !finished(); accept() records it.
  int64_t choose(const at::Tensor& logits);
  // Records the next token (chosen here or elsewhere: generate_batch draws every row's from
  // one generator) and ends generation on eos ("eos"), a stop sequence ("stop"), `go_on`
  // false, the caller's cancel ("cancelled"), or max_new_tokens ("length").
  void accept(int64_t token, bool go_on = true);
  // Ends generation now (finish_reason "cancelled") unless it already ended.
  void cancel();
  bool finished() const { return finished_; }
  // The tokens so far; finish_reason is set once finished().
  const GenerationOutput& output() const { return out_; }
  const std::vector<int64_t>& input_ids() const { return input_ids_; }  // HF's: seeded bos, then the tokens
  const GenerationConfig& config() const { return config_; }

 private:
  GenerationConfig config_;
  bool processed_;  // whether a logits processor applies (else the scores are the logits)
  std::optional<at::Generator> generator_;
  std::optional<TokenLogprob> chosen_;  // choose()'s log-probabilities, recorded by accept()
  std::vector<int64_t> input_ids_;
  GenerationOutput out_;
  bool finished_ = false;
};

// Batched greedy/sampling with left padding: inputs_embeds [B, T, H] + attention_mask [B, T]
// (0 on the left padding); one output per row. Each row ends on its own eos or stop sequence
// (HF's StoppingCriteriaSub would look only at row 0 and stop every row); finished rows are
// fed pad_token_id until all are done. num_beams must be 1.
std::vector<GenerationOutput> generate_batch(const CausalLM& llm, const at::Tensor& inputs_embeds,
                                             const at::Tensor& attention_mask, const GenerationConfig& config);

// HF's logits processors on next-token scores [N, V] (float): the logit bias, repetition penalty over every
// id of input_ids [N, L] (each id once: score < 0 -> score * penalty, else score / penalty),
// then min-length eos suppression (L < min_length -> eos score -inf). Returns a new tensor.
at::Tensor process_logits(const at::Tensor& scores, const at::Tensor& input_ids, const GenerationConfig& config);
// HF's sampling warpers: temperature (if != 1), top-k (if > 0), top-p (if < 1); filtered
// entries are -inf. min_tokens_to_keep is 1, and 2 for beam sampling, as in HF.
at::Tensor warp_logits(const at::Tensor& scores, const GenerationConfig& config, int64_t min_tokens_to_keep = 1);
// The HF class names of the processors (then, with do_sample, the warpers) this config
// activates, in the order they run, e.g. {"MinLengthLogitsProcessor", "TopKLogitsWarper"}.
std::vector<std::string> logits_pipeline(const GenerationConfig& config);

// Chat.answer's token clean-up: drop a leading 0 (early Vicuna configs seeded bos 0), then a
// leading 1 (the seeded bos). `tokens` is HF's output (GenerationOutput::hf_output()).
std::vector<int64_t> answer_tokens(const std::vector<int64_t>& tokens);
// Chat.answer's text: answer_tokens, decode (special tokens kept), split('###')[0],
// split('Assistant:')[-1], Python's strip().
std::string postprocess_answer(const std::vector<int64_t>& tokens, const Tokenizer& tokenizer);

}  // namespace minigpt4
