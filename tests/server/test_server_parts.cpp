// The server's moving parts without a model: stop strings over streamed pieces, the
// session store's LRU and expiry, the worker's bounded FIFO queue, the reply channel, the
// image and prefix caches.
#include "minigpt4/server/caches.h"
#include "minigpt4/server/sessions.h"
#include "minigpt4/server/stop_strings.h"
#include "minigpt4/server/worker.h"

#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <atomic>
#include <future>

using namespace minigpt4;
using namespace minigpt4::server;

namespace {

// Feeds pieces and returns what would be shown, in order.
std::string shown(StopStrings& stops, const std::vector<std::string>& pieces) {
  std::string out;
  for (const auto& piece : pieces) out += stops.feed(piece);
  return out + stops.flush();
}

}  // namespace

TEST_CASE("stop strings end the streamed text before them, even split across pieces", "[server]") {
  StopStrings a({"STOP", "\n\n"});
  CHECK(shown(a, {"Hello ", "wor", "ld S", "TO", "P and more"}) == "Hello world ");
  CHECK(a.stopped());

  StopStrings b({"STOP"});
  std::vector<std::string> out;
  for (const auto* piece : {"a S", "T", "x", "yz"}) out.push_back(b.feed(piece));
  CHECK(out == std::vector<std::string>{"a ", "", "STx", "yz"});  // "ST" held back until it is not "STOP"
  CHECK_FALSE(b.stopped());
  CHECK(b.flush().empty());

  StopStrings c({"STOP"});
  CHECK(shown(c, {"ends with ST"}) == "ends with ST");  // held text comes out at the end
  CHECK_FALSE(c.stopped());

  StopStrings d({"xyz", "y"});
  CHECK(shown(d, {"axyz"}) == "a");  // the stop string that starts first wins
  CHECK(d.cut("abyc xyz") == "ab");
  StopStrings none({});
  CHECK(shown(none, {"any", "thing"}) == "anything");
}

TEST_CASE("the session store keeps the most recently used sessions and drops idle ones", "[server]") {
  using Clock = SessionStore<int>::Clock;
  Clock::time_point now{};
  SessionStore<int> store(2, std::chrono::seconds(60), [&] { return now; });
  const auto a = store.add(std::make_shared<int>(1));
  const auto b = store.add(std::make_shared<int>(2));
  CHECK(a.size() == 32);
  CHECK(a != b);
  REQUIRE(store.find(a));  // a is now the most recent: adding a third drops b
  const auto c = store.add(std::make_shared<int>(3));
  CHECK(store.find(b) == nullptr);
  CHECK(*store.find(a) == 1);
  CHECK(*store.find(c) == 3);
  CHECK(store.size() == 2);

  now += std::chrono::seconds(45);
  REQUIRE(store.find(c));
  now += std::chrono::seconds(30);  // a idle 75 s, c 30 s
  CHECK(store.find(a) == nullptr);
  CHECK(store.find(c));
  CHECK(store.erase(c));
  CHECK_FALSE(store.erase(c));
  CHECK(store.size() == 0);
  CHECK(store.find("not-an-id") == nullptr);
}

TEST_CASE("the model worker runs jobs in order, with a bounded queue", "[server]") {
  // (A free slot takes one job more than max_waiting; a running job holds its slot.)
  // Jobs that answer by themselves need no model: the worker only steps answers.
  ModelWorker worker(nullptr, WorkerOptions{2, 1, 0});
  std::promise<void> release;
  auto gate = release.get_future().share();
  std::vector<int> order;
  std::mutex order_mutex;
  std::atomic<int> running{0}, most_running{0};
  std::atomic<bool> started{false};
  const auto job = [&](int id) {
    return [&, id](bool run) -> std::optional<RunningAnswer> {
      if (!run) return std::nullopt;
      most_running = std::max(most_running.load(), ++running);
      started = true;
      if (id == 0) gate.wait();
      {
        std::lock_guard<std::mutex> lock(order_mutex);
        order.push_back(id);
      }
      --running;
      return std::nullopt;
    };
  };
  REQUIRE(worker.submit(job(0)));
  while (!started) std::this_thread::yield();  // job 0 runs and blocks
  CHECK(worker.submit(job(1)));
  CHECK(worker.submit(job(2)));
  CHECK_FALSE(worker.submit(job(3)));  // the slot is held by job 0, and two already wait
  CHECK(worker.waiting() == 2);
  release.set_value();
  while (worker.stats().jobs_done < 3) std::this_thread::yield();
  CHECK(order == std::vector<int>{0, 1, 2});
  CHECK(most_running == 1);

  // stop(): waiting jobs are called with run = false, and later submits are refused.
  std::promise<void> release2;
  auto gate2 = release2.get_future().share();
  std::atomic<int> dropped{0};
  started = false;
  REQUIRE(worker.submit([&](bool run) -> std::optional<RunningAnswer> {
    if (run) started = true, gate2.wait();
    return std::nullopt;
  }));
  while (!started) std::this_thread::yield();
  REQUIRE(worker.submit([&](bool run) -> std::optional<RunningAnswer> {
    dropped += run ? 0 : 1;
    return std::nullopt;
  }));
  std::thread stopper([&] { worker.stop(); });
  while (dropped == 0) std::this_thread::yield();
  release2.set_value();
  stopper.join();
  CHECK(dropped == 1);
  CHECK_FALSE(worker.submit([](bool) -> std::optional<RunningAnswer> { return std::nullopt; }));
}

TEST_CASE("a reply channel hands pieces and the end across threads, and carries a cancel back", "[server]") {
  ReplyChannel channel;
  CHECK(channel.take(std::chrono::milliseconds(10)).pieces.empty());
  std::thread producer([&] {
    channel.send({"a", {}});
    channel.send({"b", {}});
    ChatReply reply;
    reply.text = "ab";
    channel.finish(reply);
    channel.fail(ApiError(500, "ignored: the channel already ended"));
  });
  std::string text;
  ReplyChannel::Batch batch;
  do {
    batch = channel.take(std::chrono::seconds(5));
    for (const auto& p : batch.pieces) text += p.text;
  } while (!batch.ended);
  producer.join();
  CHECK(text == "ab");
  REQUIRE(batch.reply);
  CHECK(batch.reply->text == "ab");
  CHECK_FALSE(batch.error);
  CHECK_FALSE(channel.cancelled());
  channel.cancel();
  CHECK(channel.cancelled());
}

TEST_CASE("the image cache matches whole bytes and adapter, keeps its budget, and gives identities",
          "[server][cache]") {
  const auto embeds = torch::ones({1, 4, 8});  // 128 bytes
  ImageCache cache(3 * (128 + 16 + 8));
  CHECK_FALSE(cache.find("original", "image-a"));
  const auto a = cache.add("original", "image-a", embeds);
  const auto b = cache.add("original", "image-b", embeds * 2);
  CHECK(a.identity != b.identity);
  REQUIRE(cache.find("original", "image-a"));
  CHECK(cache.find("original", "image-a")->identity == a.identity);
  CHECK(torch::equal(cache.find("original", "image-b")->embeds, embeds * 2));
  CHECK_FALSE(cache.find("task", "image-a"));  // another adapter's encoding
  cache.add("original", "image-c", embeds);
  cache.add("original", "image-d", embeds);  // over budget: the least recently used (a) goes
  CHECK_FALSE(cache.find("original", "image-a"));
  CHECK(cache.find("original", "image-d"));
  const auto st = cache.stats();
  CHECK(st.entries == 3);
  CHECK(st.bytes <= st.budget);
  CHECK(st.hits >= 4);
}

TEST_CASE("the prefix cache hands out copies of the longest matching prefix", "[server][cache]") {
  // A one-layer cache whose position t holds the value t.
  const auto cache_of = [](int64_t length) {
    KVCache c;
    auto k = torch::arange(length, torch::kFloat).view({1, 1, length, 1}).repeat({1, 2, 1, 4});
    auto v = k.clone();
    c.append(0, k, v);
    return c;
  };
  PrefixCache cache(1 << 20);
  CHECK_FALSE(cache.find("original", {1, 2, 3}));
  cache.add("original", {1, 2, 3, 4, 5}, cache_of(5));
  cache.add("original", {1, 2, 9, 9}, cache_of(4));
  auto hit = cache.find("original", {1, 2, 3, 4, 7, 8});
  REQUIRE(hit);
  CHECK(hit->keys == std::vector<int64_t>{1, 2, 3, 4});
  CHECK(hit->cache.length() == 4);
  CHECK(hit->cache.keys[0][0][1][3][0].item<float>() == 3);
  hit->cache.keys[0].fill_(-1);  // a copy: the held cache is untouched
  CHECK(cache.find("original", {1, 2, 3, 4, 5})->cache.keys[0][0][0][4][0].item<float>() == 4);
  CHECK_FALSE(cache.find("task", {1, 2, 3}));  // another adapter's caches never match
  CHECK_FALSE(cache.find("original", {1, 2, 3}, /*min_positions=*/4));
  // An entry that extends another replaces it.
  cache.add("original", {1, 2, 3, 4, 5, 6}, cache_of(6));
  CHECK(cache.stats().entries == 2);
  // The budget holds.
  PrefixCache small(cache_of(5).copy(5).bytes() + 5 * sizeof(int64_t));
  small.add("original", {1, 2, 3, 4, 5}, cache_of(5));
  small.add("original", {7, 8, 9, 10, 11}, cache_of(5));
  CHECK(small.stats().entries == 1);
  CHECK_FALSE(small.find("original", {1, 2}));
  CHECK(small.find("original", {7, 8}));
}
