// Continuous batching (worker.h) on the tiny fixture model: answers that share decode steps
// give the tokens they give alone, whatever joins, leaves or is cancelled beside them.
#include "minigpt4/chat/chat.h"
#include "minigpt4/common/config.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/server/worker.h"
#include "tests/server/running_server.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <atomic>
#include <future>
#include <mutex>

using namespace minigpt4;
using namespace minigpt4::server;

namespace {

std::shared_ptr<const ChatModel> tiny_model() { return test::tiny_chat_model(); }

// A chat request: an image or not, earlier rounds, a question, its length and penalty, and
// a cancel after `cancel_after` streamed pieces (the client's on_text saying stop).
struct Request {
  int image_seed = -1;  // < 0: no image
  std::vector<std::string> questions;
  int64_t max_tokens = 12;
  double repetition_penalty = 1.0;
  int cancel_after = -1;
};

at::Tensor image_embeds(int seed) {
  torch::manual_seed(seed);
  const auto rgb = torch::randint(0, 256, {40 + seed, 56, 3}, torch::kUInt8);
  return tiny_model()->encode_image_rgb(rgb);
}

AnswerOptions options_of(const Request& r) {
  AnswerOptions o;
  o.temperature = 0;
  o.max_new_tokens = r.max_tokens;
  o.repetition_penalty = r.repetition_penalty;
  return o;
}

// The session up to its last question; earlier questions are answered (alone) first.
std::shared_ptr<ChatSession> session_for(const Request& r) {
  auto session = std::make_shared<ChatSession>(tiny_model());
  if (r.image_seed >= 0) session->upload_image(image_embeds(r.image_seed));
  for (size_t i = 0; i + 1 < r.questions.size(); ++i) {
    session->ask(r.questions[i]);
    session->answer(options_of(r));
  }
  session->ask(r.questions.back());
  return session;
}

std::function<bool(const std::string&)> canceller(int cancel_after) {
  auto pieces = std::make_shared<int>(0);
  return [pieces, cancel_after](const std::string&) { return cancel_after < 0 || ++*pieces < cancel_after; };
}

ChatReply alone(const Request& r) { return session_for(r)->answer(options_of(r), canceller(r.cancel_after)); }

struct Outcome {
  std::vector<ChatReply> replies;
  WorkerStats stats;
};

// The requests in a worker with `parallel` slots, all queued before the first runs (a job
// holds the worker until then), so that they share decode steps. `cancel_from_worker[i]`:
// the worker cancels answer i once it has that many tokens (keep_going false). A chunk of
// 13 (<= kMaxRidingRows) rides in the decode steps once an answer decodes.
Outcome batched(const std::vector<Request>& requests, size_t parallel, std::vector<int> cancel_from_worker = {},
                int64_t prefill_chunk = 13) {
  cancel_from_worker.resize(requests.size(), -1);
  ModelWorker worker(tiny_model(), WorkerOptions{requests.size() + 1, parallel, prefill_chunk});
  std::promise<void> release;
  auto gate = release.get_future().share();
  REQUIRE(worker.submit([gate](bool) -> std::optional<RunningAnswer> {
    gate.wait();
    return std::nullopt;
  }));
  Outcome out;
  out.replies.resize(requests.size());
  std::atomic<size_t> done{0};
  for (size_t i = 0; i < requests.size(); ++i) {
    REQUIRE(worker.submit([&, i](bool run) -> std::optional<RunningAnswer> {
      if (!run) return std::nullopt;
      const auto& r = requests[i];
      auto session = session_for(r);
      RunningAnswer a;
      a.owner = session;
      a.answer = session->start_answer(options_of(r), canceller(r.cancel_after));
      a.label = "test";
      a.adapter = "original";
      auto* answer = a.answer.get();
      const int limit = cancel_from_worker[i];
      a.keep_going = [answer, limit] { return limit < 0 || answer->generated() < limit; };
      a.done = [&, i](AnswerInProgress& answer, std::exception_ptr error) {
        try {
          if (error) std::rethrow_exception(error);
          out.replies[i] = answer.finish();
        } catch (const std::exception& e) {
          out.replies[i].text = std::string("failed: ") + e.what();
        }
        ++done;
      };
      return a;
    }));
  }
  release.set_value();
  while (done < requests.size()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  out.stats = worker.stats();
  return out;
}

const std::vector<Request>& mixed_requests() {
  static const std::vector<Request> requests = {
      {0, {"What is in this image?"}, 14, 1.0, -1},
      {-1, {"Tell me a story about a cat and a very long road."}, 9, 0.7, -1},
      {1, {"Describe it.", "And the colours?"}, 17, 1.3, -1},
      {2, {"Why?"}, 5, 1.0, 3},  // the client stops reading after three pieces
      {0, {"What is in this image?", "Again, briefly."}, 11, 0.8, -1},
  };
  return requests;
}

}  // namespace

TEST_CASE("batched greedy answers equal the same requests answered alone", "[server][batching]") {
  const auto& requests = mixed_requests();
  const auto out = batched(requests, 4);
  for (size_t i = 0; i < requests.size(); ++i) {
    INFO("request " << i);
    const auto expected = alone(requests[i]);
    CHECK(out.replies[i].tokens == expected.tokens);
    CHECK(out.replies[i].text == expected.text);
    CHECK(out.replies[i].finish_reason == expected.finish_reason);
  }
  // The answers did share steps: more rows than steps.
  INFO("decode steps " << out.stats.decode_steps << ", rows " << out.stats.decode_rows);
  CHECK(out.stats.decode_rows > out.stats.decode_steps);
  CHECK(out.stats.answers_done == requests.size());
}

TEST_CASE("a slot that ends frees its place for a waiting request", "[server][batching]") {
  const auto& requests = mixed_requests();
  const auto out = batched(requests, 2);  // five requests through two slots
  for (size_t i = 0; i < requests.size(); ++i) {
    INFO("request " << i);
    CHECK(out.replies[i].tokens == alone(requests[i]).tokens);
  }
  CHECK(out.stats.decode_rows <= 2 * out.stats.decode_steps);
}

TEST_CASE("an answer cancelled mid-batch leaves the others' answers unchanged", "[server][batching]") {
  const auto& requests = mixed_requests();
  const auto out = batched(requests, 5, {-1, -1, 4, -1, -1});
  CHECK(out.replies[2].finish_reason == "cancelled");
  CHECK(out.replies[2].tokens.size() <= 5);
  for (size_t i : {0, 1, 3, 4}) {
    INFO("request " << i);
    CHECK(out.replies[i].tokens == alone(requests[i]).tokens);
  }
}

TEST_CASE("with the automatic prefill chunk, batched answers still equal the answers alone", "[server][batching]") {
  const auto& requests = mixed_requests();
  const auto out = batched(requests, 2, {}, kAutoPrefillChunk);
  for (size_t i = 0; i < requests.size(); ++i) {
    INFO("request " << i);
    CHECK(out.replies[i].tokens == alone(requests[i]).tokens);
  }
  CHECK(out.stats.prefill_chunk >= PrefillPacer::kMinChunk);
  CHECK(out.stats.prefill_chunk <= PrefillPacer::kMaxChunk);
}

TEST_CASE("a worker refuses a negative prefill chunk other than automatic", "[server][batching]") {
  CHECK_THROWS_WITH(ModelWorker(nullptr, WorkerOptions{1, 1, -5}), Catch::Contains("prefill chunk"));
}

// The pacer against a model whose chunk of c positions costs fixed + per_position * c seconds.
namespace {
int64_t settle(PrefillPacer& pacer, double step, double fixed, double per_position, int rounds = 40) {
  for (int i = 0; i < rounds; ++i) {
    pacer.decoded(step);
    const int64_t c = pacer.chunk(true);
    pacer.prefilled(c, fixed + per_position * static_cast<double>(c));
  }
  return pacer.current();
}
}  // namespace

TEST_CASE("the prefill pacer sizes a chunk to cost about a share of one decode step", "[server][batching]") {
  SECTION("nothing decoding: the whole prompt runs") {
    PrefillPacer pacer;
    CHECK(pacer.chunk(false) == 0);
    CHECK(pacer.chunk(true) == PrefillPacer::kFirstChunk);
  }
  SECTION("no decode step timed yet: the first chunk stays") {
    PrefillPacer pacer;
    pacer.prefilled(PrefillPacer::kFirstChunk, 5.0);
    CHECK(pacer.current() == PrefillPacer::kFirstChunk);
  }
  SECTION("a big model: a step of 0.3 s, a chunk 0.05 s + 4 ms per position") {
    PrefillPacer pacer;
    const int64_t c = settle(pacer, 0.3, 0.05, 0.004);
    const double cost = 0.05 + 0.004 * static_cast<double>(c);
    CHECK(cost <= 1.05 * PrefillPacer::kShareOfStep * 0.3);  // the streams' gap stays under twice a step
    CHECK(cost >= 0.7 * PrefillPacer::kShareOfStep * 0.3);
  }
  SECTION("a small model: a step of 0.1 ms, a chunk 1 ms + 40 us per position: the floor of 20 ms is the target") {
    PrefillPacer pacer;
    const int64_t c = settle(pacer, 1e-4, 1e-3, 4e-5);
    const double cost = 1e-3 + 4e-5 * static_cast<double>(c);
    CHECK(cost <= PrefillPacer::kFloorSeconds);
    CHECK(cost >= 0.5 * PrefillPacer::kFloorSeconds);
  }
  SECTION("a tiny model whose whole chunk costs less than the floor: the chunk grows to its bound") {
    PrefillPacer pacer;
    CHECK(settle(pacer, 0.01, 0.0, 1e-7) == PrefillPacer::kMaxChunk);
  }
  SECTION("a fixed part above the step: one position per round") {
    PrefillPacer pacer;
    CHECK(settle(pacer, 0.1, 0.5, 0.001) == PrefillPacer::kMinChunk);
  }
  SECTION("the tail of a prompt (under half a chunk) does not shrink the chunk") {
    PrefillPacer pacer;
    pacer.decoded(0.1);
    pacer.prefilled(3, 0.5);
    CHECK(pacer.current() == PrefillPacer::kFirstChunk);
  }
  SECTION("riding in a decode step, a chunk costs what it adds to the step") {
    PrefillPacer pacer;
    pacer.decoded(0.1);  // the step alone
    for (int i = 0; i < 40; ++i) {
      const int64_t c = pacer.chunk(true);
      pacer.rode_along(c, 0.1 + 0.0099 * static_cast<double>(c));  // 9.9 ms a riding position
    }
    CHECK(pacer.current() == 6);  // 0.6 of a 0.1 s step
    PrefillPacer free_rows;
    free_rows.decoded(0.1);
    free_rows.rode_along(PrefillPacer::kFirstChunk, 0.09);  // no slower than the step: it grows, by a quarter
    CHECK(free_rows.current() == PrefillPacer::kFirstChunk * 5 / 4);
  }
  SECTION("one slow chunk shrinks it by half at most") {
    PrefillPacer pacer;
    pacer.decoded(0.1);
    pacer.prefilled(PrefillPacer::kFirstChunk, 100.0);
    CHECK(pacer.current() == PrefillPacer::kFirstChunk / 2);
  }
}

TEST_CASE("prompt chunks run on their own (longer than kMaxRidingRows) give the same answers", "[server][batching]") {
  const auto& requests = mixed_requests();
  const auto out = batched(requests, 3, {}, kMaxRidingRows + 5);
  for (size_t i = 0; i < requests.size(); ++i) {
    INFO("request " << i);
    CHECK(out.replies[i].tokens == alone(requests[i]).tokens);
  }
}
