// Unit tests of generation on the first fixture model: stopping (length, stop sequences,
// eos, min_length), batching with left padding, seeded sampling, beam search plumbing, the
// processors' arithmetic and Chat.answer's post-processing.
#include "minigpt4/common/error.h"
#include "tests/generate/generate_fixture.h"

#include <catch2/catch.hpp>

#include <limits>

using namespace minigpt4;

namespace {

const test::GenerationFixture& fixture() {
  // Generation mechanics on the repository's Vicuna-v0 case, whose greedy answer runs to
  // max_new_tokens without an eos (the parity of every case is in test_generate_parity.cpp).
  static const test::GenerationFixture fx(test::data_dir() / "parity" / "tiny_vicuna0");
  return fx;
}

const torch::Tensor& prompt() { return fixture().io.at("chat_embs"); }

GenerationConfig greedy_config() {
  auto c = fixture().base_config();
  c.max_new_tokens = fixture().generation().at("max_new_tokens").get<int64_t>();
  return c;
}

std::vector<int64_t> prefix(const std::vector<int64_t>& v, size_t n) {
  return {v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n)};
}

// Index (into the generated ids) of the token that completes `stop` first, over [bos] + ids.
size_t first_stop_end(int64_t bos, const std::vector<int64_t>& ids, const std::vector<int64_t>& stop) {
  std::vector<int64_t> seq{bos};
  for (size_t i = 0; i < ids.size(); ++i) {
    seq.push_back(ids[i]);
    if (seq.size() >= stop.size() && std::equal(stop.rbegin(), stop.rend(), seq.rbegin())) return i;
  }
  return ids.size();
}

}  // namespace

TEST_CASE("generation: max_new_tokens is respected") {
  const auto config = greedy_config();
  const auto full = generate(fixture().llm(), prompt(), config);
  REQUIRE(static_cast<int64_t>(full.tokens.size()) == config.max_new_tokens);
  CHECK(full.finish_reason == "length");
  for (const int64_t n : {int64_t{0}, int64_t{1}, config.max_new_tokens / 2}) {
    auto c = config;
    c.max_new_tokens = n;
    const auto out = generate(fixture().llm(), prompt(), c);
    CHECK(out.tokens == prefix(full.tokens, n));
    CHECK(out.finish_reason == "length");
  }
}

TEST_CASE("generation: a stop sequence ends generation and stays in the output") {
  auto config = greedy_config();
  const auto full = generate(fixture().llm(), prompt(), config).tokens;
  REQUIRE(full.size() >= 5);

  const std::vector<int64_t> pair{full[2], full[3]};
  const size_t end = first_stop_end(config.bos_token_id, full, pair);
  REQUIRE(end <= 3);
  config.stop_token_sequences = {{-5, -6}, pair};  // ids that never occur, then the pair
  auto out = generate(fixture().llm(), prompt(), config);
  CHECK(out.tokens == prefix(full, end + 1));
  CHECK(out.finish_reason == "stop");

  // The earliest of several sequences wins.
  config.stop_token_sequences = {pair, {full[1]}};
  out = generate(fixture().llm(), prompt(), config);
  CHECK(out.tokens == prefix(full, std::min(end, first_stop_end(config.bos_token_id, full, {full[1]})) + 1));

  // Like StoppingCriteriaSub, the match runs over input_ids, which start with the seeded bos.
  config.stop_token_sequences = {{config.bos_token_id, full[0]}};
  out = generate(fixture().llm(), prompt(), config);
  CHECK(out.tokens == prefix(full, 1));
  CHECK(out.finish_reason == "stop");

  // Beam search checks row 0, the best beam: after one step that is the greedy first token.
  // HF's finalize then writes eos after the (shorter than max_length) hypothesis.
  config.num_beams = 3;
  config.stop_token_sequences = {{full[0]}};
  out = generate(fixture().llm(), prompt(), config);
  CHECK(out.tokens == std::vector<int64_t>{full[0], config.eos_token_id});
  CHECK(out.finish_reason == "stop");
}

TEST_CASE("generation: eos ends generation; min_length holds it back") {
  auto config = greedy_config();
  const auto full = generate(fixture().llm(), prompt(), config).tokens;
  REQUIRE(full.size() >= 4);
  // Any id can play eos: take the 4th greedy token.
  config.eos_token_id = full[3];
  const size_t first = static_cast<size_t>(std::find(full.begin(), full.end(), full[3]) - full.begin());
  auto out = generate(fixture().llm(), prompt(), config);
  CHECK(out.tokens == prefix(full, first + 1));
  CHECK(out.finish_reason == "eos");

  // min_length counts input_ids (the seeded bos + generated): eos is masked while shorter.
  config.min_length = static_cast<int64_t>(first) + 3;
  out = generate(fixture().llm(), prompt(), config);
  REQUIRE(out.tokens.size() > first);
  CHECK(prefix(out.tokens, first) == prefix(full, first));
  for (size_t i = 0; i < out.tokens.size() && static_cast<int64_t>(i) + 1 < config.min_length; ++i)
    CHECK(out.tokens[i] != config.eos_token_id);
}

TEST_CASE("generation: batched left-padded greedy equals one-by-one greedy") {
  auto config = greedy_config();
  const auto embs = prompt();
  const int64_t T = embs.size(1), H = embs.size(2);
  // Rows of different lengths: the prompt cut from the left (as Chat.answer crops), padded on
  // the left with random embeddings that the mask must hide.
  const std::vector<int64_t> lengths{T, T - T / 4, T - T / 2};
  torch::manual_seed(0);
  std::vector<torch::Tensor> rows, masks;
  for (const int64_t len : lengths) {
    const auto pad = torch::randn({1, T - len, H}) * embs.abs().max();
    rows.push_back(torch::cat({pad, embs.slice(1, T - len)}, 1));
    masks.push_back(torch::cat({torch::zeros({1, T - len}, torch::kLong), torch::ones({1, len}, torch::kLong)}, 1));
  }
  const auto batch = torch::cat(rows, 0), mask = torch::cat(masks, 0);

  auto compare = [&](const GenerationConfig& c) {
    const auto outs = generate_batch(fixture().llm(), batch, mask, c);
    REQUIRE(outs.size() == lengths.size());
    for (size_t r = 0; r < lengths.size(); ++r) {
      INFO("row " << r << " of length " << lengths[r]);
      const auto single = generate(fixture().llm(), embs.slice(1, T - lengths[r]), c);
      CHECK(outs[r].tokens == single.tokens);
      CHECK(outs[r].finish_reason == single.finish_reason);
      CHECK(outs[r].hf_output() == single.hf_output());
    }
  };
  compare(config);

  // Rows that stop early are fed padding while the others go on.
  const auto middle = generate(fixture().llm(), embs.slice(1, T - lengths[1]), config).tokens;
  REQUIRE(middle.size() >= 4);
  config.stop_token_sequences = {{middle[2], middle[3]}};
  compare(config);
}

TEST_CASE("generation: sampling with a fixed seed is reproducible") {
  auto config = greedy_config();
  config.do_sample = true;
  config.top_k = 50;
  config.top_p = 0.9;
  config.seed = 1234;
  const auto a = generate(fixture().llm(), prompt(), config);
  const auto b = generate(fixture().llm(), prompt(), config);
  CHECK(a.tokens == b.tokens);
  CHECK(a.tokens.size() == static_cast<size_t>(config.max_new_tokens));

  // Other seeds draw other answers.
  bool any_different = false;
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    auto c = config;
    c.seed = seed;
    any_different = any_different || generate(fixture().llm(), prompt(), c).tokens != a.tokens;
  }
  CHECK(any_different);

  // top_k = 1 leaves one candidate: sampling is then greedy.
  auto greedy = greedy_config();
  config.top_k = 1;
  CHECK(generate(fixture().llm(), prompt(), config).tokens == generate(fixture().llm(), prompt(), greedy).tokens);

  // The batch entry point is seeded the same way.
  config.top_k = 50;
  const auto embs = prompt().repeat({2, 1, 1});
  const auto mask = torch::ones({2, embs.size(1)}, torch::kLong);
  const auto x = generate_batch(fixture().llm(), embs, mask, config);
  const auto y = generate_batch(fixture().llm(), embs, mask, config);
  CHECK(x[0].tokens == y[0].tokens);
  CHECK(x[1].tokens == y[1].tokens);
}

TEST_CASE("generation: on_token streams each token as it is chosen") {
  auto config = greedy_config();
  std::vector<int64_t> streamed;
  const auto out = generate(fixture().llm(), prompt(), config, [&](int64_t t) { streamed.push_back(t); });
  CHECK(streamed == out.tokens);

  config.num_beams = 3;
  streamed.clear();
  const auto beam = generate(fixture().llm(), prompt(), config, [&](int64_t t) { streamed.push_back(t); });
  CHECK(streamed == beam.tokens);
  CHECK(static_cast<int64_t>(beam.tokens.size()) <= config.max_new_tokens + 1);
}

TEST_CASE("generation: beam sampling with a fixed seed is reproducible") {
  auto config = greedy_config();
  config.num_beams = 3;
  config.do_sample = true;
  config.top_k = 50;
  config.top_p = 0.9;
  config.seed = 99;
  const auto a = generate(fixture().llm(), prompt(), config);
  const auto b = generate(fixture().llm(), prompt(), config);
  CHECK(a.tokens == b.tokens);
  CHECK(!a.tokens.empty());
}

TEST_CASE("generation: bad settings are refused") {
  auto config = greedy_config();
  const auto embs = prompt();
  config.num_beams = 2;
  CHECK_THROWS_AS(generate_batch(fixture().llm(), embs, torch::ones({1, embs.size(1)}, torch::kLong), config), Error);
  config = greedy_config();
  CHECK_THROWS_AS(generate_batch(fixture().llm(), embs, torch::ones({1, embs.size(1) + 1}, torch::kLong), config),
                  Error);
  CHECK_THROWS_AS(generate(fixture().llm(), embs.repeat({2, 1, 1}), config), Error);
  config.eos_token_id = fixture().llm().vocab_size();
  CHECK_THROWS_AS(generate(fixture().llm(), embs, config), Error);
  config = greedy_config();
  config.stop_token_sequences = {{}};
  CHECK_THROWS_AS(generate(fixture().llm(), embs, config), Error);
}

TEST_CASE("logits processors and warpers follow Hugging Face") {
  const float inf = std::numeric_limits<float>::infinity();
  GenerationConfig c;
  c.eos_token_id = 3;
  c.min_length = 0;

  // Repetition penalty: every id of input_ids once, negative scores multiplied.
  c.repetition_penalty = 2.0;
  auto scores = process_logits(torch::tensor({{1.0f, -2.0f, 3.0f, 0.5f}}),
                               torch::tensor({{int64_t{1}, int64_t{2}, int64_t{2}}}), c);
  CHECK(torch::equal(scores, torch::tensor({{1.0f, -4.0f, 1.5f, 0.5f}})));
  // min_length: eos is -inf while input_ids is shorter.
  c.repetition_penalty = 1.0;
  c.min_length = 4;
  scores = process_logits(torch::tensor({{1.0f, 2.0f, 3.0f, 4.0f}}),
                          torch::tensor({{int64_t{1}, int64_t{2}, int64_t{2}}}), c);
  CHECK(torch::equal(scores, torch::tensor({{1.0f, 2.0f, 3.0f, -inf}})));
  scores = process_logits(torch::tensor({{1.0f, 2.0f, 3.0f, 4.0f}}), torch::ones({1, 4}, torch::kLong), c);
  CHECK(torch::equal(scores, torch::tensor({{1.0f, 2.0f, 3.0f, 4.0f}})));
  CHECK(logits_pipeline(c) == std::vector<std::string>{"MinLengthLogitsProcessor"});

  // Warpers: temperature, top-k, top-p (cumulative probability of the dropped tail <= 1 - top_p).
  const auto logits = torch::tensor({{0.5f, 0.3f, 0.15f, 0.05f}}).log();
  c.do_sample = true;
  c.temperature = 2.0;
  CHECK(torch::allclose(warp_logits(logits, c), logits / 2.0));
  c.temperature = 1.0;
  c.top_k = 2;
  CHECK(torch::equal(torch::isinf(warp_logits(logits, c)), torch::tensor({{false, false, true, true}})));
  c.top_k = 0;
  c.top_p = 0.75;
  CHECK(torch::equal(torch::isinf(warp_logits(logits, c)), torch::tensor({{false, false, true, true}})));
  c.top_p = 0.3;
  CHECK(torch::equal(torch::isinf(warp_logits(logits, c)), torch::tensor({{false, true, true, true}})));
  CHECK(torch::equal(torch::isinf(warp_logits(logits, c, 2)), torch::tensor({{false, false, true, true}})));
  c.top_k = 50;
  c.temperature = 0.7;
  c.repetition_penalty = 1.1;
  CHECK(logits_pipeline(c) == std::vector<std::string>{"RepetitionPenaltyLogitsProcessor", "MinLengthLogitsProcessor",
                                                       "TemperatureLogitsWarper", "TopKLogitsWarper",
                                                       "TopPLogitsWarper"});
}

TEST_CASE("postprocess_answer does what Chat.answer does") {
  CHECK(answer_tokens({0, 1, 5}) == std::vector<int64_t>{5});
  CHECK(answer_tokens({1, 0, 5}) == std::vector<int64_t>{0, 5});
  CHECK(answer_tokens({1, 1, 5}) == std::vector<int64_t>{1, 5});
  CHECK(answer_tokens({5, 1}) == std::vector<int64_t>{5, 1});
  CHECK(answer_tokens({}).empty());

  const auto& tok = fixture().tokenizer;
  auto answer = [&](const std::string& text) {
    std::vector<int64_t> ids{tok.bos_id()};
    for (const int64_t id : tok.encode(text, false)) ids.push_back(id);
    return postprocess_answer(ids, tok);
  };
  CHECK(answer("a cat on a mat###Human: more") == "a cat on a mat");
  CHECK(answer("Human: hi Assistant: one Assistant:  two \n###") == "two");
  CHECK(answer(" \t plain \n") == "plain");
  CHECK(answer("###") == "");
}
