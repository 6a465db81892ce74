// The tests' main: Catch2's, plus the skip tally of tests/support/skip.h.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "tests/support/skip.h"

#include <iostream>
#include <map>
#include <string>

namespace {

struct Tally {
  std::string current;                         // the test case running now
  size_t cases = 0;                            // test cases run
  std::map<std::string, std::string> skipped;  // test case -> why
};

Tally& tally() {
  static Tally t;
  return t;
}

struct SkipTally : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testCaseStarting(const Catch::TestCaseInfo& info) override {
    tally().current = info.name;
    ++tally().cases;
  }
};

}  // namespace

CATCH_REGISTER_LISTENER(SkipTally)

namespace minigpt4::test {

void skip_test(const std::string& reason) {
  auto& t = tally();
  if (t.skipped.emplace(t.current, reason).second) std::cout << "SKIPPED: " << t.current << ": " << reason << "\n";
}

}  // namespace minigpt4::test

int main(int argc, char** argv) {
  const int result = Catch::Session().run(argc, argv);
  const auto& t = tally();
  if (!t.skipped.empty()) {
    std::cout << t.skipped.size() << " of " << t.cases << " test cases skipped:\n";
    for (const auto& [name, why] : t.skipped) std::cout << "  " << name << ": " << why << "\n";
  }
  constexpr int kSkipped = 77;  // CTest's SKIP_RETURN_CODE
  if (result == 0 && t.cases > 0 && t.skipped.size() == t.cases) return kSkipped;
  return result;
}
