// Beam search as transformers 4.28 runs it for one sequence: `beam_search` (or
// `beam_sample` with do_sample) driving a BeamSearchScorer with early_stopping=False and
// num_beam_hyps_to_keep=1.
#include "minigpt4/common/error.h"
#include "minigpt4/generate/decoding.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <optional>

namespace minigpt4::detail {

namespace {

struct Hypothesis {
  double score = 0;
  std::vector<int64_t> ids;  // HF input_ids of the beam: seeded bos + generated, WITHOUT the final eos
  bool ended_by_eos = false;
};

// HF BeamHypotheses: the n best finished hypotheses, scored sum_logprobs / length^length_penalty
// (the length as GenerationConfig::beam_length_generated_only says).
class BeamHypotheses {
 public:
  BeamHypotheses(int64_t num_beams, double length_penalty) : num_beams_(num_beams), length_penalty_(length_penalty) {}

  void add(const std::vector<int64_t>& ids, int64_t length, double sum_logprobs, bool ended_by_eos) {
    const double score = sum_logprobs / std::pow(static_cast<double>(length), length_penalty_);
    if (size() < num_beams_ || score > worst_score_) {
      beams_.push_back({score, ids, ended_by_eos});
      if (size() > num_beams_) {
        // Python: sorted([(s, idx) ...]) -> drop the lowest (ties: the earliest added).
        std::vector<std::pair<double, size_t>> ranked;
        for (size_t i = 0; i < beams_.size(); ++i) ranked.emplace_back(beams_[i].score, i);
        std::sort(ranked.begin(), ranked.end());
        beams_.erase(beams_.begin() + static_cast<std::ptrdiff_t>(ranked[0].second));
        worst_score_ = ranked[1].first;
      } else {
        worst_score_ = std::min(score, worst_score_);
      }
    }
  }

  // early_stopping=False: done when the best running beam cannot beat the worst kept hypothesis.
  bool is_done(double best_sum_logprobs, int64_t cur_len) const {
    if (size() < num_beams_) return false;
    const double cur_score = best_sum_logprobs / std::pow(static_cast<double>(cur_len), length_penalty_);
    return worst_score_ >= cur_score;
  }

  // Python: sorted(beams, key=score).pop() -> the highest; among equal scores the last added.
  const Hypothesis& best() const {
    std::vector<size_t> order(beams_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return beams_[a].score < beams_[b].score; });
    return beams_.at(order.back());
  }

  int64_t size() const { return static_cast<int64_t>(beams_.size()); }

 private:
  int64_t num_beams_;
  double length_penalty_;
  std::vector<Hypothesis> beams_;
  double worst_score_ = 1e9;
};

}  // namespace

GenerationOutput beam_search(const CausalLM& llm, const torch::Tensor& inputs_embeds, const GenerationConfig& c,
                             const std::function<void(int64_t)>& on_token) {
  torch::NoGradGuard no_grad;
  const int64_t beams = c.num_beams;
  const auto device = inputs_embeds.device();
  const int64_t prefix = c.bos_token_id >= 0 ? 1 : 0;
  const int64_t max_length = c.max_new_tokens + prefix;  // HF max_length counts input_ids

  // _expand_inputs_for_generation: every beam gets the prompt.
  const auto expanded = inputs_embeds.expand({beams, inputs_embeds.size(1), inputs_embeds.size(2)}).contiguous();
  Decoder decoder(
      llm, torch::ones({beams, inputs_embeds.size(1)}, torch::TensorOptions().dtype(torch::kLong).device(device)));

  std::vector<std::vector<int64_t>> running(beams,
                                            prefix ? std::vector<int64_t>{c.bos_token_id} : std::vector<int64_t>{});
  // beam_search starts with only beam 0 alive (the others at -1e9); beam_sample with all at 0.
  std::vector<float> beam_scores(beams, 0.0f);
  if (!c.do_sample)
    for (int64_t b = 1; b < beams; ++b) beam_scores[b] = -1e9f;
  BeamHypotheses hypotheses(beams, c.length_penalty);
  // A hypothesis' length for length_penalty: its input_ids (seeded bos + generated, without
  // the eos that ended it), or, for transformers >= 4.36, the generated ids with that eos.
  auto scored_length = [&](const std::vector<int64_t>& ids, bool ended_by_eos) {
    const auto length = static_cast<int64_t>(ids.size());
    // (At least 1: with max_new_tokens 0 nothing is generated.)
    return c.beam_length_generated_only ? std::max<int64_t>(length - prefix + (ended_by_eos ? 1 : 0), 1) : length;
  };
  std::optional<at::Generator> generator;
  if (c.do_sample) generator = sampling_generator(c.seed);

  bool done = false, stopped = false;
  std::vector<int64_t> last_tokens;
  for (int64_t step = 0; step < c.max_new_tokens; ++step) {
    const auto logits = step == 0 ? decoder.start(expanded) : decoder.step(torch::tensor(last_tokens, torch::kLong));
    const int64_t vocab = logits.size(-1);
    const int64_t cur_len = static_cast<int64_t>(running[0].size());

    auto scores = process_logits(torch::log_softmax(logits, -1), ids_tensor(running, device), c);
    scores = scores + torch::tensor(beam_scores, torch::kFloat32).to(device).unsqueeze(1);
    if (c.do_sample) scores = warp_logits(scores, c, /*min_tokens_to_keep=*/2);
    const auto flat = scores.reshape({1, beams * vocab});

    torch::Tensor top_scores, top_ids;
    if (c.do_sample) {
      const auto probs = torch::softmax(flat, -1).to(torch::kCPU);
      top_ids = torch::multinomial(probs, 2 * beams, /*replacement=*/false, *generator);
      top_scores = flat.to(torch::kCPU).gather(-1, top_ids);
      const auto [sorted, order] = top_scores.sort(-1, /*descending=*/true);
      top_scores = sorted;
      top_ids = top_ids.gather(-1, order);
    } else {
      std::tie(top_scores, top_ids) = flat.topk(2 * beams, -1, /*largest=*/true, /*sorted=*/true);
    }
    top_scores = top_scores.to(torch::kCPU).contiguous().view({-1});
    top_ids = top_ids.to(torch::kCPU).contiguous().view({-1});

    // BeamSearchScorer.process: candidates in rank order; eos among the top `beams` ends a
    // hypothesis, anything else continues until `beams` running beams are chosen.
    std::vector<float> next_scores;
    std::vector<int64_t> next_tokens, next_sources;
    for (int64_t rank = 0; rank < 2 * beams; ++rank) {
      const int64_t id = top_ids[rank].item<int64_t>();
      const float score = top_scores[rank].item<float>();
      const int64_t token = id % vocab, source = id / vocab;
      if (c.eos_token_id >= 0 && token == c.eos_token_id) {
        if (rank >= beams) continue;
        hypotheses.add(running[source], scored_length(running[source], true), score, /*ended_by_eos=*/true);
      } else {
        next_scores.push_back(score);
        next_tokens.push_back(token);
        next_sources.push_back(source);
      }
      if (static_cast<int64_t>(next_tokens.size()) == beams) break;
    }
    if (static_cast<int64_t>(next_tokens.size()) < beams)
      fail("beam search: only {} of {} beams could continue (too many eos candidates)", next_tokens.size(), beams);
    // HF passes the best of all 2 * beams candidates.
    // transformers < 4.36 passes the length of input_ids before this step's token; >= 4.36
    // the length after it, less the prompt.
    const int64_t running_length = c.beam_length_generated_only ? cur_len - prefix + 1 : cur_len;
    done = done || hypotheses.is_done(top_scores.max().item<float>(), running_length);

    std::vector<std::vector<int64_t>> next_running;
    for (int64_t b = 0; b < beams; ++b) {
      next_running.push_back(running[next_sources[b]]);
      next_running.back().push_back(next_tokens[b]);
    }
    running = std::move(next_running);
    beam_scores = next_scores;
    last_tokens = next_tokens;
    decoder.reorder(torch::tensor(next_sources, torch::kLong));
    if (done) break;
    // MiniGPT-4's StoppingCriteriaSub looks at row 0 of input_ids.
    if (ends_with_stop_sequence(running[0], c.stop_token_sequences)) {
      stopped = true;
      break;
    }
  }

  // finalize: unless done, every running beam competes with the finished hypotheses.
  if (!done)
    for (int64_t b = 0; b < beams; ++b)
      hypotheses.add(running[b], scored_length(running[b], false), beam_scores[b], /*ended_by_eos=*/false);
  const Hypothesis& best = hypotheses.best();

  GenerationOutput out;
  out.seeded_bos = c.bos_token_id;
  out.tokens.assign(best.ids.begin() + prefix, best.ids.end());
  // HF writes eos after every hypothesis shorter than max_length: the ones that ended with eos,
  // and also a running beam cut short by a stopping criterion.
  if (c.eos_token_id >= 0 && static_cast<int64_t>(best.ids.size()) < max_length) out.tokens.push_back(c.eos_token_id);
  out.finish_reason = best.ended_by_eos ? "eos" : stopped ? "stop" : "length";
  if (on_token)
    for (const int64_t token : out.tokens) on_token(token);
  return out;
}

}  // namespace minigpt4::detail
