// `minigpt4 evaluate` over 2 ranks (Gloo on the CPU, through `minigpt4 launch`): each rank
// answers its own items, rank 0 merges them, and results and metrics equal a 1-rank run's.
#include "tests/evaluate/evaluate_fixture.h"
#include "tests/support/processes.h"

#include <catch2/catch.hpp>

#include <sstream>

using namespace minigpt4;
namespace fs = std::filesystem;

namespace {

std::string run_ok(const std::vector<std::string>& argv) {
  test::Child child(argv);
  const auto status = child.wait_for(std::chrono::seconds(180));
  INFO(child.output());
  REQUIRE(status == std::optional<int>(0));
  return child.output();
}

// The ids in a predictions file, in order.
std::vector<std::string> ids_in(const fs::path& jsonl) {
  std::vector<std::string> ids;
  std::istringstream lines(test::read_text(jsonl));
  for (std::string line; std::getline(lines, line);)
    ids.push_back(nlohmann::json::parse(line).at("id").get<std::string>());
  return ids;
}

}  // namespace

TEST_CASE("distributed: `minigpt4 evaluate` over 2 Gloo ranks equals 1 rank", "[distributed][evaluate]") {
  test::Scratch tmp("evaluate_ranks");
  const auto b = test::make_benchmark(tmp.path() / "set", 9);
  for (const std::string task : {"vqav2", "coco_caption"}) {
    INFO(task);
    const auto evaluation = test::evaluation_yaml(b, task);
    const auto one = tmp.path() / (task + "_one"), two = tmp.path() / (task + "_two");
    run_ok({MINIGPT4_BINARY, "evaluate", "--cfg-path",
            test::write_tiny_eval_config(tmp.path() / (task + "_one.yaml"), evaluation, 2, one).string()});
    const auto output = run_ok(
        {MINIGPT4_BINARY, "launch", "--nproc-per-node", "2", "--master-port", test::free_port(), "--", "evaluate",
         "--cfg-path", test::write_tiny_eval_config(tmp.path() / (task + "_two.yaml"), evaluation, 2, two).string()});
    CHECK_THAT(output, Catch::Contains("9 to do over 2 ranks"));

    // Item i went to rank i % 2.
    std::vector<std::string> expected[2];
    const auto results = test::read_json(one / "results.json");
    for (size_t i = 0; i < results.size(); ++i)
      expected[i % 2].push_back(
          (results[i].contains("question_id") ? results[i]["question_id"] : results[i]["image_id"]).dump());
    CHECK(ids_in(two / "predictions_rank0.jsonl") == expected[0]);
    CHECK(ids_in(two / "predictions_rank1.jsonl") == expected[1]);

    CHECK(test::read_text(two / "results.json") == test::read_text(one / "results.json"));
    CHECK(test::read_text(two / "metrics.json") == test::read_text(one / "metrics.json"));
  }
}
