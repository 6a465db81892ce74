#include "minigpt4/datasets/loader.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/datasets/cc_sbu_align.h"
#include "minigpt4/datasets/instruction_datasets.h"
#include "minigpt4/datasets/shards.h"
#include "minigpt4/datasets/text_lines.h"
#include "minigpt4/datasets/webdataset.h"
#include "minigpt4/datasets/worker_pool.h"
#include "minigpt4/processors/image_decode.h"
#include "minigpt4/processors/image_processor.h"
#include "minigpt4/processors/train_processor.h"

#include <torch/torch.h>

#include <condition_variable>
#include <deque>
#include <exception>
#include <future>
#include <map>
#include <mutex>
#include <thread>

namespace minigpt4::datasets {
namespace {

// A dataset whose stream yields this many unusable records in a row has, in practice, no
// usable data (e.g. every image corrupt); stop with the report instead of spinning forever.
// A smaller dataset stops sooner: after one whole pass that gave no usable sample (the
// next pass would read, parse and decode the same records again).
constexpr uint64_t kMaxUnusableInARow = 10000;

// blip2_image_train or blip2_image_eval, shared read-only by the workers.
struct ImageTransform {
  std::optional<ImageTrainProcessor> train;
  std::optional<ImageEvalProcessor> eval;

  at::Tensor operator()(const at::Tensor& rgb, uint64_t crop_seed) const {
    if (!train) return (*eval)(rgb);
    std::mt19937_64 rng(crop_seed);
    return (*train)(rgb, rng);
  }
};

struct Decoded {
  at::Tensor image;  // undefined when decoding failed
  std::string error;
  bool too_large = false;   // the image is over limits.max_image_pixels
  bool bad_box = false;     // the image decoded, but the record's box lies outside it
  Instruction instruction;  // a record with a box: its turns with the box written in
};

// A box to place once the image's size is known (instruction datasets), with the turns it
// goes into.
struct PendingBox {
  std::array<double, 4> xywh;
  Instruction instruction;
};

// Runs on a worker. The crop seed comes from the record's index in its stream, not from a
// shared generator, so which thread decodes what does not matter.
Decoded decode(const std::string& bytes, const std::string& path, const std::string& source,
               const ImageTransform& transform, uint64_t crop_seed, std::optional<PendingBox> box) {
  try {
    const at::Tensor rgb = path.empty() ? decode_image_rgb_bytes(bytes, source) : decode_image_rgb(path);
    Decoded out;
    if (box) {  // rgb is [H, W, 3]: the original converts with PIL's image.size
      out.error = place_box(box->instruction, box->xywh, static_cast<int>(rgb.size(1)), static_cast<int>(rgb.size(0)));
      if (!out.error.empty()) {
        out.bad_box = true;
        return out;
      }
      out.instruction = std::move(box->instruction);
    }
    out.image = transform(rgb, crop_seed);
    return out;
  } catch (const ImageTooLarge& e) {
    Decoded out;
    out.error = e.what();
    out.too_large = true;
    return out;
  } catch (const std::exception& e) {
    Decoded out;
    out.error = e.what();
    return out;
  }
}

struct Pending {
  StreamRecord record;          // without the image bytes, which went to the job
  std::future<Decoded> result;  // not valid for skip notes
  size_t image_bytes = 0;       // the size of the bytes that went to the job
};

struct DatasetState {
  DatasetSpec spec;
  std::unique_ptr<SampleStream> stream;
  std::shared_ptr<const ImageTransform> transform;
  uint64_t crop_seed_base = 0;
  std::deque<Pending> pending;  // records taken from the stream, oldest first
  uint64_t records_read = 0;
  LoaderPosition::PerDataset position;
  uint64_t unusable_in_a_row = 0;
  size_t pending_bytes = 0;  // encoded image bytes of `pending`
  // Usable samples per pass among the records taken out of `pending`, for the passes from
  // `first_watched_pass` on (on resume, the passes nothing was taken from before). A pass
  // is judged once no record of it can come any more: it is below the stream's
  // lowest_pass_held() (or, for streams in pass order, the last pass they handed out) and
  // below every pass still in `pending`.
  std::map<uint64_t, uint64_t> usable_by_pass;
  uint64_t first_watched_pass = 0;
  uint64_t last_stream_pass = 0;  // the pass of the last record the stream handed out
};

std::unique_ptr<SampleStream> make_stream(const DatasetSpec& spec, const LoaderOptions& opt) {
  if (spec.kind == DatasetKind::CcSbuAlign)
    return std::make_unique<CcSbuAlignStream>(CcSbuAlignDataset(spec.storage), opt.seed, opt.rank, opt.world_size);
  if (spec.kind == DatasetKind::TextLines)
    return std::make_unique<TextLinesStream>(spec.storage, opt.seed, opt.rank, opt.world_size);
  if (spec.kind == DatasetKind::Instruction)
    return std::make_unique<InstructionStream>(spec.name, load_instruction_source(spec), opt.seed, opt.rank,
                                               opt.world_size);
  WebDatasetOptions w;
  w.name = spec.name;
  w.shards = expand_shard_spec(spec.storage);
  w.seed = opt.seed;
  w.rank = opt.rank;
  w.world_size = opt.world_size;
  w.shuffle_buffer = opt.shuffle_buffer;
  w.max_words = spec.max_words;
  w.prompt = spec.prompt;
  return std::make_unique<WebDatasetStream>(std::move(w));
}

// What the producer hands next(): a batch with the position and stats as of its end.
struct Produced {
  Batch batch;
  LoaderPosition position;
  DataStats stats;
};

}  // namespace

struct DataLoader::Impl {
  LoaderOptions opt;
  std::vector<DatasetState> datasets;
  std::mt19937_64 mix_rng;
  uint64_t batches = 0;
  DataStats running_stats;  // as of the batches produced so far
  // Records taken from each dataset's stream ahead of use (their decoding queued): this
  // bounds the work and memory in flight, and is enough to keep every worker busy.
  size_t window = 1;

  LoaderPosition current_position;  // as of the batches handed out
  DataStats current_stats;

  std::unique_ptr<WorkerPool> pool;
  std::thread producer;
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<Produced> ready;
  std::exception_ptr error;
  bool stopping = false;

  Impl(LoaderOptions options, const std::optional<LoaderPosition>& resume);
  ~Impl();
  size_t choose_dataset();
  void fill(DatasetState& ds);
  void note_unusable(DatasetState& ds);
  void watch_pass(DatasetState& ds, uint64_t pass, bool usable);
  Produced produce();
  void fast_forward(const LoaderPosition& pos);
  LoaderPosition snapshot() const;
  void produce_loop();
};

DataLoader::Impl::Impl(LoaderOptions options, const std::optional<LoaderPosition>& resume)
    : opt(std::move(options)), mix_rng(mix_seed(opt.seed, static_cast<uint64_t>(opt.rank), 2)) {
  if (opt.datasets.empty()) fail("data loader: no datasets configured");
  if (opt.world_size < 1 || opt.rank < 0 || opt.rank >= opt.world_size)
    fail("data loader: rank {} is not in [0, world_size {})", opt.rank, opt.world_size);
  if (opt.num_workers < 0) fail("data loader: num_workers must be >= 0, got {}", opt.num_workers);
  double total_ratio = 0;
  for (const auto& spec : opt.datasets) {
    if (spec.batch_size <= 0) fail("dataset '{}': batch_size must be positive, got {}", spec.name, spec.batch_size);
    if (!(spec.sample_ratio >= 0))
      fail("dataset '{}': sample_ratio must be >= 0, got {}", spec.name, spec.sample_ratio);
    total_ratio += spec.sample_ratio;
    for (const auto& other : datasets)
      if (other.spec.name == spec.name) fail("data loader: dataset '{}' is listed twice", spec.name);
    DatasetState ds;
    ds.spec = spec;
    ds.stream = make_stream(spec, opt);
    auto transform = std::make_shared<ImageTransform>();
    if (spec.random_crop) {
      transform->train.emplace(spec.image_size, spec.min_scale, spec.max_scale);
    } else {
      transform->eval.emplace(spec.image_size);
    }
    ds.transform = std::move(transform);
    ds.crop_seed_base = mix_seed(opt.seed, static_cast<uint64_t>(opt.rank), name_seed(spec.name), 3);
    datasets.push_back(std::move(ds));
  }
  if (!(total_ratio > 0)) fail("data loader: the datasets' sample_ratio values add up to {}, need > 0", total_ratio);

  if (resume) fast_forward(*resume);
  current_position = snapshot();
  pool = std::make_unique<WorkerPool>(opt.num_workers);
  if (opt.num_workers > 0) {
    int largest_batch = 0;
    for (const auto& ds : datasets) largest_batch = std::max(largest_batch, ds.spec.batch_size);
    window = static_cast<size_t>(largest_batch + 2 * opt.num_workers);
    producer = std::thread([this] { produce_loop(); });
  }
}

DataLoader::Impl::~Impl() {
  {
    std::lock_guard<std::mutex> lock(mutex);
    stopping = true;
  }
  changed.notify_all();
  pool->shutdown();  // unblocks a producer waiting on a queued job (broken promise)
  if (producer.joinable()) producer.join();
}

size_t DataLoader::Impl::choose_dataset() {
  double total = 0;
  for (const auto& ds : datasets) total += ds.spec.sample_ratio;
  const double u = uniform_real(mix_rng, 0.0, total);
  double cumulative = 0;
  for (size_t i = 0; i < datasets.size(); ++i) {
    cumulative += datasets[i].spec.sample_ratio;
    if (u < cumulative) return i;
  }
  for (size_t i = datasets.size(); i-- > 0;)  // rounding at the top end: the last one in the draw
    if (datasets[i].spec.sample_ratio > 0) return i;
  return 0;
}

// Keeps `window` records of this dataset taken from its stream and their decoding queued,
// but no more than limits.max_loader_readahead_bytes of encoded images, and nothing beyond the pass
// after the oldest pending record's (a dataset of a few samples would otherwise be read
// and parsed window / size times over before its first record is even looked at).
void DataLoader::Impl::fill(DatasetState& ds) {
  while (ds.pending.size() < window &&
         (ds.pending.empty() || (ds.pending_bytes < static_cast<size_t>(input_limits().max_loader_readahead_bytes) &&
                                 ds.pending.back().record.pass <= ds.pending.front().record.pass + 1))) {
    Pending p;
    p.record = ds.stream->next();
    ds.last_stream_pass = p.record.pass;
    const uint64_t index = ds.records_read++;
    if (!p.record.skipped && p.record.has_image) {
      p.image_bytes = p.record.image_bytes.size();
      ds.pending_bytes += p.image_bytes;
      std::optional<PendingBox> box;
      if (p.record.box) box = PendingBox{*p.record.box, std::move(p.record.instruction)};
      auto task = std::make_shared<std::packaged_task<Decoded()>>(
          [bytes = std::move(p.record.image_bytes), path = p.record.image_path, source = p.record.source,
           transform = ds.transform, seed = mix_seed(ds.crop_seed_base, index),
           box = std::move(box)] { return decode(bytes, path, source, *transform, seed, box); });
      p.record.image_bytes.clear();
      p.result = task->get_future();
      pool->run([task] { (*task)(); });
    }
    ds.pending.push_back(std::move(p));
  }
}

void DataLoader::Impl::note_unusable(DatasetState& ds) {
  if (++ds.unusable_in_a_row >= kMaxUnusableInARow)
    fail("dataset '{}': {} samples in a row could not be used; is the data there and readable?\n{}", ds.spec.name,
         ds.unusable_in_a_row, format_data_report(running_stats));
}

// Called with each record taken, in order: a pass seen whole must have given a usable
// sample (the next pass would read, parse and decode the same records again).
void DataLoader::Impl::watch_pass(DatasetState& ds, uint64_t pass, bool usable) {
  if (pass >= ds.first_watched_pass) ds.usable_by_pass[pass] += usable ? 1 : 0;
  uint64_t lowest = ds.stream->lowest_pass_held().value_or(ds.last_stream_pass);
  for (const auto& p : ds.pending) lowest = std::min(lowest, p.record.pass);
  while (!ds.usable_by_pass.empty() && ds.usable_by_pass.begin()->first < lowest) {
    const auto [whole, usable_samples] = *ds.usable_by_pass.begin();
    if (usable_samples == 0)
      fail(
          "dataset '{}': {} samples in a row could not be used, a whole pass (pass {}) over its data; is the data "
          "there and readable?\n{}",
          ds.spec.name, ds.unusable_in_a_row, whole, format_data_report(running_stats));
    ds.usable_by_pass.erase(ds.usable_by_pass.begin());
  }
}

Produced DataLoader::Impl::produce() {
  DatasetState& ds = datasets[choose_dataset()];
  std::vector<Sample> samples;
  while (samples.size() < static_cast<size_t>(ds.spec.batch_size)) {
    fill(ds);
    Pending p = std::move(ds.pending.front());
    ds.pending.pop_front();
    ds.pending_bytes -= p.image_bytes;
    ++ds.position.records;
    ds.position.pass = p.record.pass;
    if (p.record.skipped) {
      running_stats.record_skip(ds.spec.name, p.record.reason, p.record.source, p.record.detail);
      note_unusable(ds);
      watch_pass(ds, p.record.pass, false);
      continue;
    }
    Decoded d = p.record.has_image ? p.result.get() : Decoded{};
    if (p.record.has_image && !d.image.defined()) {
      running_stats.record_skip(ds.spec.name,
                                d.bad_box     ? SkipReason::BadBox
                                : d.too_large ? SkipReason::TooLarge
                                              : SkipReason::CorruptImage,
                                p.record.source, d.error);
      note_unusable(ds);
      watch_pass(ds, p.record.pass, false);
      continue;
    }
    ds.unusable_in_a_row = 0;
    watch_pass(ds, p.record.pass, true);
    samples.push_back({std::move(d.image), std::move(p.record.caption), std::move(p.record.source),
                       p.record.box ? std::move(d.instruction) : std::move(p.record.instruction)});
  }
  ++ds.position.batches;
  ++batches;
  running_stats.datasets[ds.spec.name].samples += samples.size();

  Produced out;
  std::vector<at::Tensor> images;
  const bool instructions = ds.spec.kind == DatasetKind::Instruction;
  for (auto& s : samples) {
    if (s.image.defined()) images.push_back(std::move(s.image));
    if (instructions)
      out.batch.instructions.push_back(std::move(s.instruction));
    else
      out.batch.captions.push_back(std::move(s.caption));
    out.batch.sources.push_back(std::move(s.source));
  }
  if (!images.empty()) out.batch.images = torch::stack(images);
  out.batch.dataset = ds.spec.name;
  out.position = snapshot();
  out.stats = running_stats;
  return out;
}

LoaderPosition DataLoader::Impl::snapshot() const {
  LoaderPosition pos;
  pos.batches = batches;
  pos.seed = opt.seed;
  pos.rank = opt.rank;
  pos.world_size = opt.world_size;
  for (const auto& ds : datasets) pos.datasets[ds.spec.name] = ds.position;
  return pos;
}

// Replays the dataset choices and each stream's records without decoding anything: the
// streams and the mixing generator then stand where the saved run's stood.
void DataLoader::Impl::fast_forward(const LoaderPosition& pos) {
  if (pos.seed != opt.seed || pos.rank != opt.rank || pos.world_size != opt.world_size)
    fail(
        "data loader: cannot resume a position saved with seed {}, rank {} of {} in a loader with seed {}, rank {} of "
        "{}",
        pos.seed, pos.rank, pos.world_size, opt.seed, opt.rank, opt.world_size);
  if (pos.datasets.size() != datasets.size())
    fail("data loader: the saved position has {} datasets, the loader {}", pos.datasets.size(), datasets.size());
  for (auto& ds : datasets) {
    const auto it = pos.datasets.find(ds.spec.name);
    if (it == pos.datasets.end()) fail("data loader: the saved position has no dataset '{}'", ds.spec.name);
    uint64_t highest = 0;
    for (uint64_t i = 0; i < it->second.records; ++i) {
      const uint64_t pass = ds.stream->next().pass;
      highest = std::max(highest, pass);
      ds.last_stream_pass = pass;
    }
    ds.records_read = it->second.records;
    ds.position = it->second;
    // The saved run may have taken part of any pass it took a record from: only later
    // passes are judged whole.
    ds.first_watched_pass = it->second.records == 0 ? 0 : highest + 1;
  }
  for (uint64_t i = 0; i < pos.batches; ++i) choose_dataset();
  batches = pos.batches;
}

void DataLoader::Impl::produce_loop() {
  use_single_torch_thread();
  try {
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mutex);
        changed.wait(
            lock, [this] { return stopping || ready.size() < static_cast<size_t>(std::max(1, opt.prefetch_batches)); });
        if (stopping) return;
      }
      Produced p = produce();
      std::lock_guard<std::mutex> lock(mutex);
      ready.push_back(std::move(p));
      changed.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!stopping) error = std::current_exception();  // at shutdown, a broken job is expected
    changed.notify_all();
  }
}

DataLoader::DataLoader(LoaderOptions options, const std::optional<LoaderPosition>& resume)
    : impl_(std::make_unique<Impl>(std::move(options), resume)) {}

DataLoader::~DataLoader() = default;

Batch DataLoader::next() {
  Impl& m = *impl_;
  Produced p;
  if (m.opt.num_workers == 0) {
    p = m.produce();
  } else {
    std::unique_lock<std::mutex> lock(m.mutex);
    m.changed.wait(lock, [&m] { return !m.ready.empty() || m.error; });
    if (m.ready.empty()) std::rethrow_exception(m.error);
    p = std::move(m.ready.front());
    m.ready.pop_front();
    m.changed.notify_all();
  }
  m.current_position = std::move(p.position);
  m.current_stats = std::move(p.stats);
  return std::move(p.batch);
}

LoaderPosition DataLoader::position() const { return impl_->current_position; }
DataStats DataLoader::stats() const { return impl_->current_stats; }
const LoaderOptions& DataLoader::options() const { return impl_->opt; }

}  // namespace minigpt4::datasets
