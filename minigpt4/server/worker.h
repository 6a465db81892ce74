#pragma once
// One model, many clients: every piece of model work runs on one thread, which serves up to
// `parallel` answers at once (continuous batching, as llama.cpp's server slots and vLLM):
// each round it admits waiting jobs into free slots, runs one prefill chunk of one joining
// answer (so a long prompt delays the running streams by one chunk at most; PrefillPacer
// sizes it to about one decode step unless a size is set), then one decode
// step for every decoding answer together (CausalLM::step_sequences: a weight is read once
// for every 8 of them, or for all in float32; each answer attends over its own cache), and
// retires the answers that ended. Answers under different LoRA adapters take turns, a round
// each. Jobs wait first come first served, at most `max_waiting` besides those the free
// slots will take. HTTP threads never run the model; they wait on a ReplyChannel, which also
// carries a client's disconnect back (cancel()).
#include "minigpt4/chat/chat.h"
#include "minigpt4/server/openai.h"

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace minigpt4::server {

// An answer the worker steps with the others.
struct RunningAnswer {
  std::shared_ptr<void> owner;  // what the answer's session lives in (outlives `answer`)
  std::unique_ptr<AnswerInProgress> answer;
  std::string adapter;  // its model work runs under this LoRA adapter
  std::string label;    // for /slots and the log
  // Checked every round: false cancels the answer (its client left, the server stops).
  std::function<bool()> keep_going;
  // On the model thread once the answer has finished (error undefined) or failed.
  std::function<void(AnswerInProgress&, std::exception_ptr error)> done;
};

// WorkerOptions::prefill_chunk: sized by PrefillPacer.
constexpr int64_t kAutoPrefillChunk = -1;
// A joining prompt's chunk of at most this many positions runs inside the decode step of the
// answers that are generating, as rows of the same pass over the weights (each weight read
// once for both); a longer one runs on its own, where the prompt path's GEMM is cheaper per
// position than passes of the decode kernels.
constexpr int64_t kMaxRidingRows = 32;

struct WorkerOptions {
  size_t max_waiting = 8;  // jobs waiting for a slot (beyond those the free slots will take)
  size_t parallel = 4;     // answers generated at once
  // Prompt positions a round runs at most: a number, 0 (a whole prompt) or kAutoPrefillChunk.
  int64_t prefill_chunk = kAutoPrefillChunk;
};

// The automatic prefill chunk: a joining prompt's chunk should cost less than a decode step,
// so that the running streams' time between tokens at most doubles while prompts join (a
// fixed chunk is either too long for a big model, stalling every stream for seconds, or too
// short for a small one, stretching the newcomer's time to first token for nothing). A chunk
// on its own costs a fixed part (reading the weights) plus a part per position; riding in a
// decode step (kMaxRidingRows), only what its rows add to the step. Neither is known in
// advance, so the size is learnt from the rounds' own timings: after each chunk it is scaled
// by target / cost, down to half or up to 1.25x (at least one more position), which settles
// where a chunk costs the target (and at one position where even that costs more). The
// target is a share of the moving average of the steps without a chunk, but never below
// kFloorSeconds: a stall shorter than that is lost in the network and the reader's eye,
// while cutting a small model's prompts into positions of their own would only stretch its
// time to first token. With nothing decoding no stream waits: the whole prompt runs.
class PrefillPacer {
 public:
  static constexpr int64_t kFirstChunk = 8, kMinChunk = 1, kMaxChunk = 1024;  // 8: one pass of the decode kernels
  // Headroom for the timing noise: a quiet step's 95th percentile is already about 1.2x its
  // median, so a round of step + 0.6 step stays within twice the median.
  static constexpr double kShareOfStep = 0.6;
  static constexpr double kFloorSeconds = 0.02;  // the smallest target

  // This round's chunk: 0 (the rest of the prompt) when no answer is decoding.
  int64_t chunk(bool answers_decoding) const { return answers_decoding ? chunk_ : 0; }
  // A chunk of `positions` ran in `seconds` while answers were decoding.
  void prefilled(int64_t positions, double seconds);
  // A chunk of `positions` rode in a decode step that took `step_seconds` (its cost: the
  // step's time above the average step without one).
  void rode_along(int64_t positions, double step_seconds);
  void decoded(double seconds);  // a decode step took `seconds`
  int64_t current() const { return chunk_; }
  double step_seconds() const { return step_seconds_; }

 private:
  double step_seconds_ = 0;  // moving average of the decode steps without a chunk (0: none yet)
  int64_t chunk_ = kFirstChunk;
};

// What /slots and /metrics show of the worker.
struct WorkerStats {
  struct Slot {
    int64_t id = 0;
    std::string label, adapter, state;  // state: "prefill" or "decode"
    int64_t prompt_positions = 0, reused_positions = 0, prefilled = 0, generated = 0;
    int64_t kv_positions = 0;  // held in its KV cache
  };
  std::vector<Slot> slots;  // the running answers
  size_t waiting = 0, parallel = 0;
  int64_t kv_positions = 0;  // in the running answers' caches
  uint64_t kv_bytes = 0;     // their buffers
  uint64_t jobs_done = 0, answers_done = 0;
  uint64_t prompt_positions_total = 0;         // prompt positions run through the LLM
  uint64_t generated_tokens_total = 0;         // tokens generated
  uint64_t decode_steps = 0, decode_rows = 0;  // rounds with a decode step, and the rows they ran
  double prefill_seconds = 0, decode_seconds = 0;
  int64_t prefill_chunk = 0;  // what the next joining prompt's chunk is (the pacer's, when automatic)
};

class ModelWorker {
 public:
  // run = true: the job's turn has come; false: it is dropped unrun (the server stops). A job
  // either finishes its work and returns nothing, or returns an answer to step with the others.
  using Job = std::function<std::optional<RunningAnswer>(bool run)>;

  // `model`: whose LLM runs the decode steps and whose adapter the rounds switch (null only
  // where no job returns an answer, e.g. a test of the queue).
  ModelWorker(std::shared_ptr<const ChatModel> model, WorkerOptions options);
  ~ModelWorker();  // stop()
  ModelWorker(const ModelWorker&) = delete;
  ModelWorker& operator=(const ModelWorker&) = delete;

  // Queues a job; false (the job is not taken) when max_waiting jobs already wait besides
  // those the free slots will take.
  bool submit(Job job);
  // Drops the waiting jobs (each called with false), cancels the running answers (each
  // still gets its done()), joins the thread.
  void stop();

  size_t waiting() const;
  size_t running() const;  // answers in slots
  // Slots held by answers and by the job being admitted (from a job: 1 is that job alone).
  size_t occupied() const;
  const WorkerOptions& options() const { return options_; }
  WorkerStats stats() const;

 private:
  struct Slot {
    int64_t id;
    RunningAnswer run;
  };
  void loop();
  void admit(std::unique_lock<std::mutex>& lock);
  void round();
  void retire(Slot& slot, std::exception_ptr error);
  void publish();  // the slots' state into stats_ (under the lock)
  bool automatic_chunk() const { return options_.prefill_chunk == kAutoPrefillChunk; }

  std::shared_ptr<const ChatModel> model_;
  const WorkerOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Job> jobs_;
  bool stopping_ = false;
  // Touched by the model thread only.
  std::vector<Slot> slots_;
  PrefillPacer pacer_;
  int64_t next_slot_id_ = 0;
  size_t turn_ = 0;      // which adapter's answers run this round, when several are in use
  WorkerStats stats_;    // under mutex_
  size_t occupied_ = 0;  // slots held by answers and by jobs being admitted (under mutex_)
  std::thread thread_;
};

// From a job on the worker to the HTTP thread answering the client: the answer's text
// pieces as they come, then the end (a reply or an error). The HTTP side cancels when its
// client is gone; the job sees cancelled() and stops generating.
class ReplyChannel {
 public:
  struct Piece {
    std::string text;
    std::vector<TokenLogprob> logprobs;  // of the tokens since the previous piece, when asked for
  };
  struct Batch {
    std::vector<Piece> pieces;
    bool ended = false;
    std::optional<ChatReply> reply;  // when ended without error
    std::optional<ApiError> error;   // when ended with one
  };

  void send(Piece piece);
  void finish(ChatReply reply);
  void fail(ApiError error);
  // Waits up to `timeout` for pieces or the end and takes them.
  Batch take(std::chrono::milliseconds timeout);

  void cancel();
  bool cancelled() const;

 private:
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::vector<Piece> pieces_;
  std::optional<ChatReply> reply_;
  std::optional<ApiError> error_;
  bool ended_ = false, cancelled_ = false;
};

}  // namespace minigpt4::server
