#pragma once
// A test that cannot run on this machine (no decode kernels for this CPU, no torchrun, ...)
// calls skip_test(reason) and returns. Such a test carries the tag [conditional] and a
// [needs_<what>] tag: tests/CMakeLists.txt runs each [needs_<what>] group as a CTest entry
// of its own, and the test binary exits with 77 (that entry's SKIP_RETURN_CODE, reported
// as "Skipped") when every test case it ran skipped. Partial skips are listed at the end of
// the run.
#include <string>

namespace minigpt4::test {

void skip_test(const std::string& reason);

}  // namespace minigpt4::test
