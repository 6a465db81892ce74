#include "minigpt4/data/stats.h"

#include <fmt/format.h>

namespace minigpt4::data {

void DataStats::record_skip(const std::string& dataset, SkipReason reason, const std::string& source,
                            const std::string& detail) {
  DatasetStats& d = datasets[dataset];
  const auto r = static_cast<size_t>(reason);
  ++d.skipped[r];
  if (d.examples[r].size() >= kMaxRemembered) return;
  // Decoder and tar errors already name the file; do not say it twice.
  const bool named = !source.empty() && detail.find(source) != std::string::npos;
  d.examples[r].push_back(named ? detail : detail.empty() ? source : source + ": " + detail);
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
      if (d.skipped[r] > d.examples[r].size()) out += fmt::format(" (first {} listed)", d.examples[r].size());
      out += "\n";
      for (const auto& line : d.examples[r]) out += "    " + line + "\n";
    }
  }
  if (out.empty()) out = "no data read\n";
  return out;
}

}  // namespace minigpt4::data
