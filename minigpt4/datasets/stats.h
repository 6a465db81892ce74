#pragma once
// What the input pipeline skipped and why, per dataset, for the end-of-run report (the
// original's webdataset handler only printed a warning per bad sample).
#include "minigpt4/datasets/stream.h"

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace minigpt4::datasets {

struct DatasetStats {
  uint64_t samples = 0;  // samples put into batches
  std::array<uint64_t, kSkipReasonCount> skipped{};
  // The first kMaxRemembered distinct lines per reason, each naming the sample (shard:key
  // or image path, or the shard) and what was wrong, and how often it was skipped (a bad
  // sample comes back every epoch).
  std::array<std::vector<std::string>, kSkipReasonCount> examples;
  std::array<std::vector<uint64_t>, kSkipReasonCount> example_counts;
};

struct DataStats {
  static constexpr size_t kMaxRemembered = 20;
  std::map<std::string, DatasetStats> datasets;  // by dataset name

  void record_skip(const std::string& dataset, SkipReason reason, const std::string& source, const std::string& detail);
  uint64_t skipped(SkipReason reason) const;  // over all datasets
  uint64_t total_skipped() const;
  uint64_t total_samples() const;
};

// Several lines: per dataset, samples used and each reason's count with the remembered
// names, e.g. "laion: 1234 samples used, 3 skipped\n  corrupt image: 2 (shard 00001.tar:..."
std::string format_data_report(const DataStats& stats);

}  // namespace minigpt4::datasets
