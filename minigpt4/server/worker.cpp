#include "minigpt4/server/worker.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/models/minigpt4.h"

#include <torch/torch.h>

#include <algorithm>

namespace minigpt4::server {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

void PrefillPacer::prefilled(int64_t positions, double seconds) {
  // Nothing to scale against yet; and the last few positions of a prompt are mostly the fixed
  // part, so they would shrink the chunk for nothing.
  if (step_seconds_ <= 0 || seconds <= 0 || positions * 2 < chunk_) return;
  const double target = std::max(kShareOfStep * step_seconds_, kFloorSeconds);
  const double wanted = static_cast<double>(positions) * target / seconds;
  // Quick to shrink, slow to grow: one step that happens to run fast (the timings are noisy)
  // must not double the next chunk into a long stall.
  const double bounded = std::clamp(wanted, chunk_ / 2.0, std::max(chunk_ * 1.25, chunk_ + 1.0));
  chunk_ = std::clamp(static_cast<int64_t>(bounded), kMinChunk, kMaxChunk);
}

void PrefillPacer::rode_along(int64_t positions, double step_seconds) {
  // What the chunk's rows added to the step; a step no slower than the average cost them
  // nothing measurable, which lets the chunk grow.
  prefilled(positions, std::max(step_seconds - step_seconds_, 1e-3 * step_seconds_));
}

void PrefillPacer::decoded(double seconds) {
  step_seconds_ = step_seconds_ <= 0 ? seconds : 0.75 * step_seconds_ + 0.25 * seconds;
}

ModelWorker::ModelWorker(std::shared_ptr<const ChatModel> model, WorkerOptions options)
    : model_(std::move(model)), options_(options) {
  if (options_.parallel < 1) fail("the server needs at least one slot (--parallel), got {}", options_.parallel);
  if (options_.prefill_chunk < 0 && options_.prefill_chunk != kAutoPrefillChunk)
    fail("the prefill chunk must be a number of positions, 0 (whole prompts) or automatic, got {}",
         options_.prefill_chunk);
  stats_.parallel = options_.parallel;
  stats_.prefill_chunk = automatic_chunk() ? pacer_.current() : options_.prefill_chunk;
  thread_ = std::thread([this] { loop(); });
}

ModelWorker::~ModelWorker() { stop(); }

bool ModelWorker::submit(Job job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // Jobs bound for free slots do not count as waiting: a burst of `parallel` requests is
    // taken whole even while the model thread is in the middle of a round.
    const size_t free_slots = options_.parallel - std::min(options_.parallel, occupied_);
    if (stopping_ || jobs_.size() >= options_.max_waiting + free_slots) return false;
    jobs_.push_back(std::move(job));
  }
  wake_.notify_one();
  return true;
}

void ModelWorker::stop() {
  std::deque<Job> dropped;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    dropped.swap(jobs_);
  }
  wake_.notify_all();
  for (auto& job : dropped) job(false);
  if (thread_.joinable()) thread_.join();
}

size_t ModelWorker::waiting() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return jobs_.size();
}

size_t ModelWorker::running() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_.slots.size();
}

size_t ModelWorker::occupied() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return occupied_;
}

WorkerStats ModelWorker::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto s = stats_;
  s.waiting = jobs_.size();
  return s;
}

void ModelWorker::loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_.wait(lock, [this] { return stopping_ || !jobs_.empty() || !slots_.empty(); });
    if (stopping_) break;
    admit(lock);
    publish();
    if (slots_.empty()) continue;
    lock.unlock();
    round();
    lock.lock();
    publish();
  }
  lock.unlock();
  // The server stops: the running answers end as they are, and their clients hear so.
  for (auto& slot : slots_) {
    slot.run.answer->cancel();
    retire(slot, nullptr);
  }
  slots_.clear();
  lock.lock();
  publish();
}

// Runs waiting jobs while a slot is free (FIFO: a job waits behind the one before it).
void ModelWorker::admit(std::unique_lock<std::mutex>& lock) {
  while (slots_.size() < options_.parallel && !jobs_.empty() && !stopping_) {
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    ++occupied_;  // until the job turns out to start no answer
    lock.unlock();
    // Jobs report their own errors to their clients; anything escaping is a bug, but it
    // must not take the server's only model thread with it.
    bool answering = false;
    try {
      if (auto run = job(true)) slots_.push_back({next_slot_id_++, std::move(*run)}), answering = true;
    } catch (const std::exception& e) {
      log::error("model job failed: {}", e.what());
    }
    lock.lock();
    if (!answering) --occupied_;
    ++stats_.jobs_done;
  }
}

void ModelWorker::round() {
  for (auto& slot : slots_)
    if (!slot.run.answer->finished() && slot.run.keep_going && !slot.run.keep_going()) slot.run.answer->cancel();

  // The adapter whose answers run this round: the only one in use, or each in turn.
  std::vector<std::string> adapters;
  for (const auto& slot : slots_)
    if (!slot.run.answer->finished() && std::find(adapters.begin(), adapters.end(), slot.run.adapter) == adapters.end())
      adapters.push_back(slot.run.adapter);
  std::vector<std::exception_ptr> errors(slots_.size());
  if (!adapters.empty()) {
    const auto& adapter = adapters[turn_++ % adapters.size()];
    std::vector<size_t> group;
    for (size_t i = 0; i < slots_.size(); ++i)
      if (!slots_[i].run.answer->finished() && slots_[i].run.adapter == adapter) group.push_back(i);
    try {
      model_->use_adapter(adapter);
    } catch (...) {
      for (const size_t i : group) errors[i] = std::current_exception();
      group.clear();
    }

    // One chunk of the first answer still reading its prompt: while others decode, a small
    // chunk rides in their decode step as extra rows of the same pass over the weights;
    // otherwise it runs on its own first.
    const bool others_decoding =
        std::any_of(group.begin(), group.end(), [&](size_t i) { return slots_[i].run.answer->decoding(); });
    const auto joining =
        std::find_if(group.begin(), group.end(), [&](size_t i) { return slots_[i].run.answer->prompt_left() > 0; });
    const int64_t chunk = automatic_chunk() ? pacer_.chunk(others_decoding) : options_.prefill_chunk;
    const bool ride_along = joining != group.end() && others_decoding && chunk > 0 && chunk <= kMaxRidingRows;
    if (joining != group.end() && !ride_along) {
      const size_t i = *joining;
      auto& answer = *slots_[i].run.answer;
      const auto start = Clock::now();
      const int64_t before = answer.prompt_left();
      try {
        answer.prefill(chunk);
      } catch (...) {
        errors[i] = std::current_exception();
      }
      const double seconds = seconds_since(start);
      if (automatic_chunk() && others_decoding && !errors[i]) pacer_.prefilled(before - answer.prompt_left(), seconds);
      std::lock_guard<std::mutex> lock(mutex_);
      stats_.prompt_positions_total += static_cast<uint64_t>(before - answer.prompt_left());
      stats_.generated_tokens_total += answer.generated() > 0 && answer.prompt_left() == 0 ? 1 : 0;
      stats_.prefill_seconds += seconds;
      if (automatic_chunk()) stats_.prefill_chunk = pacer_.current();
    }

    // One token for every answer that is decoding, in one step (with the riding chunk).
    std::vector<size_t> rows;
    for (const size_t i : group)
      if (!errors[i] && slots_[i].run.answer->decoding()) rows.push_back(i);
    if (!rows.empty()) {
      const auto start = Clock::now();
      int64_t prompt_rows = 0;
      try {
        std::vector<at::Tensor> inputs;
        std::vector<KVCache*> caches;
        for (const size_t i : rows) {
          inputs.push_back(slots_[i].run.answer->next_input());
          caches.push_back(&slots_[i].run.answer->cache());
        }
        if (ride_along) {
          auto& answer = *slots_[*joining].run.answer;
          inputs.push_back(answer.prompt_rows(chunk));
          prompt_rows = inputs.back().size(0);
          caches.insert(caches.end(), static_cast<size_t>(prompt_rows), &answer.cache());
        }
        torch::NoGradGuard no_grad;
        const auto logits = model_->model->llama_model->step_sequences(torch::cat(inputs, 0), caches);
        for (size_t r = 0; r < rows.size(); ++r) {
          try {
            slots_[rows[r]].run.answer->take(logits[static_cast<int64_t>(r)]);
          } catch (...) {
            errors[rows[r]] = std::current_exception();
          }
        }
        if (ride_along) {
          try {
            slots_[*joining].run.answer->prompt_rows_ran(prompt_rows, logits[logits.size(0) - 1]);
          } catch (...) {
            errors[*joining] = std::current_exception();
          }
        }
      } catch (...) {
        for (const size_t i : rows) errors[i] = std::current_exception();
        if (ride_along) errors[*joining] = std::current_exception();
      }
      const double seconds = seconds_since(start);
      if (prompt_rows == 0)
        pacer_.decoded(seconds);
      else if (automatic_chunk() && !errors[*joining])
        pacer_.rode_along(prompt_rows, seconds);
      std::lock_guard<std::mutex> lock(mutex_);
      stats_.generated_tokens_total += rows.size();
      stats_.decode_steps += 1;
      stats_.decode_rows += rows.size();
      stats_.decode_seconds += seconds;
      if (prompt_rows > 0) {
        const auto& answer = *slots_[*joining].run.answer;
        stats_.prompt_positions_total += static_cast<uint64_t>(prompt_rows);
        stats_.generated_tokens_total += answer.generated() > 0 && answer.prompt_left() == 0 ? 1 : 0;
        if (automatic_chunk()) stats_.prefill_chunk = pacer_.current();
      }
    }
  }

  // Answers that ended (or failed) leave their slots.
  std::vector<Slot> kept;
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (errors[i] || slots_[i].run.answer->finished())
      retire(slots_[i], errors[i]);
    else
      kept.push_back(std::move(slots_[i]));
  }
  slots_ = std::move(kept);
}

void ModelWorker::retire(Slot& slot, std::exception_ptr error) {
  try {
    if (slot.run.done) slot.run.done(*slot.run.answer, error);
  } catch (const std::exception& e) {
    log::error("finishing an answer failed: {}", e.what());
  }
  slot.run.answer.reset();  // before its owner: the answer holds the session's cache
  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.answers_done;
  --occupied_;
}

void ModelWorker::publish() {
  stats_.slots.clear();
  stats_.kv_positions = 0;
  stats_.kv_bytes = 0;
  for (const auto& slot : slots_) {
    if (!slot.run.answer) continue;
    const auto& a = *slot.run.answer;
    WorkerStats::Slot s;
    s.id = slot.id;
    s.label = slot.run.label;
    s.adapter = slot.run.adapter;
    s.state = a.prompt_left() > 0 ? "prefill" : "decode";
    s.prompt_positions = a.prompt_positions();
    s.reused_positions = a.reused_positions();
    s.prefilled = a.prompt_positions() - a.reused_positions() - a.prompt_left();
    s.generated = a.generated();
    const auto& cache = slot.run.answer->cache();
    s.kv_positions = cache.length();
    stats_.kv_positions += s.kv_positions;
    for (const auto* buffers : {&cache.key_buffers, &cache.value_buffers})
      for (const auto& b : *buffers)
        if (b.defined()) stats_.kv_bytes += b.nbytes();
    stats_.slots.push_back(std::move(s));
  }
}

void ReplyChannel::send(Piece piece) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    pieces_.push_back(std::move(piece));
  }
  ready_.notify_all();
}

void ReplyChannel::finish(ChatReply reply) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ended_) return;
    reply_ = std::move(reply);
    ended_ = true;
  }
  ready_.notify_all();
}

void ReplyChannel::fail(ApiError error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ended_) return;
    error_ = std::move(error);
    ended_ = true;
  }
  ready_.notify_all();
}

ReplyChannel::Batch ReplyChannel::take(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  ready_.wait_for(lock, timeout, [this] { return ended_ || !pieces_.empty(); });
  Batch batch;
  batch.pieces.swap(pieces_);
  batch.ended = ended_;
  if (ended_) batch.reply = reply_, batch.error = error_;
  return batch;
}

void ReplyChannel::cancel() {
  std::lock_guard<std::mutex> lock(mutex_);
  cancelled_ = true;
}

bool ReplyChannel::cancelled() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cancelled_;
}

}  // namespace minigpt4::server
