#include "minigpt4/datasets/stats.h"

#include <fmt/format.h>

namespace minigpt4::datasets {

void DataStats::record_skip(const std::string& dataset, SkipReason reason, const std::string& source,
                            const std::string& detail) {
  DatasetStats& d = datasets[dataset];
  const auto r = static_cast<size_t>(reason);
  ++d.skipped[r];
  // Decoder and tar errors already name the file; do not say it twice.
  const bool named = !source.empty() && detail.find(source) != std::string::npos;
  const std::string line = named ? detail : detail.empty() ? source : source + ": " + detail;
  auto& lines = d.examples[r];
  auto& counts = d.example_counts[r];
  for (size_t i = 0; i < lines.size(); ++i)
    if (lines[i] == line) return void(++counts[i]);
  if (lines.size() >= kMaxRemembered) return;
  lines.push_back(line);
  counts.push_back(1);
}

uint64_t DataStats::skipped(SkipReason reason) const {
  uint64_t n = 0;
  for (const auto& [name, d] : datasets) n += d.skipped[static_cast<size_t>(reason)];
  return n;
}

uint64_t DataStats::total_skipped() const {
  uint64_t n = 0;
  for (int r = 0; r < kSkipReasonCount; ++r) n += skipped(static_cast<SkipReason>(r));
  return n;
}

uint64_t DataStats::total_samples() const {
  uint64_t n = 0;
  for (const auto& [name, d] : datasets) n += d.samples;
  return n;
}

std::string format_data_report(const DataStats& stats) {
  std::string out;
  for (const auto& [name, d] : stats.datasets) {
    uint64_t skipped = 0;
    for (uint64_t n : d.skipped) skipped += n;
    out += fmt::format("{}: {} samples used, {} skipped\n", name, d.samples, skipped);
    for (int r = 0; r < kSkipReasonCount; ++r) {
      if (d.skipped[r] == 0) continue;
      out += fmt::format("  {}: {}", skip_reason_name(static_cast<SkipReason>(r)), d.skipped[r]);
      uint64_t listed = 0;
      for (uint64_t n : d.example_counts[r]) listed += n;
      if (d.skipped[r] > listed) out += fmt::format(" (the first {} distinct listed)", d.examples[r].size());
      out += "\n";
      for (size_t i = 0; i < d.examples[r].size(); ++i) {
        const uint64_t times = d.example_counts[r][i];
        out += "    " + d.examples[r][i] + (times > 1 ? fmt::format(" ({} times)", times) : "") + "\n";
      }
    }
  }
  if (out.empty()) out = "no data read\n";
  return out;
}

}  // namespace minigpt4::datasets
