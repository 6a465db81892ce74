#pragma once
// Webdataset shard lists as configs write them: `/data/laion/{00000..10488}.tar`.
#include <string>
#include <vector>

namespace minigpt4::datasets {

// Brace expansion of one pattern, in the order webdataset's braceexpand gives:
//   `{3..12}` numeric range (also decreasing, and `{0..20..5}` with a step); when a bound
//   is written with a leading zero (`{00000..10488}`) every number is zero-padded to the
//   wider bound's width;
//   `{a,b,c}` alternatives, which may themselves hold braces;
//   several braces give every combination, the leftmost varying slowest.
// A brace pair that is neither (`{x}`) is kept literally. Unbalanced braces are an error.
std::vector<std::string> expand_braces(const std::string& pattern);

// A shard spec: one or more patterns joined by "::" (webdataset's list syntax). Every
// pattern must expand to at least one name and every name must be an existing file;
// errors name the pattern and the first missing file. The count is whatever the pattern
// gives (real releases hold more shards than the configs' examples).
std::vector<std::string> expand_shard_spec(const std::string& spec);

}  // namespace minigpt4::datasets
