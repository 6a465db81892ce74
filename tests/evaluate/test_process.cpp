// `minigpt4 evaluate` as a user runs it: killed mid-run and started again, it ends with the
// results of an uninterrupted run; a broken benchmark stops it with a message naming the file.
#include "tests/evaluate/evaluate_fixture.h"
#include "tests/support/processes.h"

#include <catch2/catch.hpp>

using namespace minigpt4;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> evaluate_args(const fs::path& config) {
  return {MINIGPT4_BINARY, "evaluate", "--cfg-path", config.string()};
}

size_t lines_in(const fs::path& path) {
  const auto text = test::read_text(path);
  return static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
}

std::string run_ok(const std::vector<std::string>& argv) {
  test::Child child(argv);
  const auto status = child.wait_for(std::chrono::seconds(120));
  INFO(child.output());
  REQUIRE(status == std::optional<int>(0));
  return child.output();
}

}  // namespace

TEST_CASE("evaluate (process): killed mid-run, the rerun ends as an uninterrupted run", "[evaluate]") {
  test::Scratch tmp("evaluate_kill");
  constexpr int kItems = 24;
  const auto b = test::make_benchmark(tmp.path() / "set", kItems);
  // Long answers, one item at a time in the run that is killed: it lasts long enough to be
  // caught mid-way. (Batches give the same answers.)
  const auto evaluation = test::evaluation_yaml(b, "vqav2", 30);
  run_ok(evaluate_args(
      test::write_tiny_eval_config(tmp.path() / "straight.yaml", evaluation, 8, tmp.path() / "straight")));

  const auto out = tmp.path() / "killed";
  const auto config = test::write_tiny_eval_config(tmp.path() / "killed.yaml", evaluation, 1, out);
  {
    test::Child child(evaluate_args(config));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline &&
           !(fs::exists(out / "predictions_rank0.jsonl") && lines_in(out / "predictions_rank0.jsonl") >= 2))
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    kill(child.pid(), SIGKILL);
    INFO(child.output());
    REQUIRE(child.wait_for(std::chrono::seconds(10)) == std::optional<int>(128 + SIGKILL));
  }
  const size_t done = lines_in(out / "predictions_rank0.jsonl");
  INFO(done << " of " << kItems << " answered before the kill");
  REQUIRE(done >= 2);
  REQUIRE(done < static_cast<size_t>(kItems));
  REQUIRE_FALSE(fs::exists(out / "results.json"));

  const auto output = run_ok(evaluate_args(config));
  CHECK_THAT(output, Catch::Contains(std::to_string(done) + " predicted earlier"));
  CHECK(lines_in(out / "predictions_rank0.jsonl") == static_cast<size_t>(kItems));
  CHECK(test::read_text(out / "results.json") == test::read_text(tmp.path() / "straight" / "results.json"));
  CHECK(test::read_text(out / "metrics.json") == test::read_text(tmp.path() / "straight" / "metrics.json"));
}

TEST_CASE("evaluate (process): a missing image or a malformed annotation file is an error naming it", "[evaluate]") {
  test::Scratch tmp("evaluate_process_errors");
  const auto b = test::make_benchmark(tmp.path() / "set", 3);
  const auto config = test::write_tiny_eval_config(tmp.path() / "c.yaml", test::evaluation_yaml(b, "coco_caption"), 2,
                                                   tmp.path() / "out");
  auto fails_with = [&](const std::string& message) {
    test::Child child(evaluate_args(config));
    const auto status = child.wait_for(std::chrono::seconds(60));
    INFO(child.output());
    CHECK(status == std::optional<int>(1));
    CHECK_THAT(child.output(), Catch::Contains(message));
  };
  const auto image = b.images / test::coco_file_name(2);
  fs::rename(image, tmp.path() / "aside.jpg");
  fails_with("error: 1 of the 3 images of " + b.captions.string() + " are missing (first: " + image.string() + ")");
  fs::rename(tmp.path() / "aside.jpg", image);

  std::ofstream(b.captions) << R"({"images": [{"id": 1}], "annotations": [{"image_id": 1, "caption": 5}]})";
  fails_with("error: caption annotations " + b.captions.string() + ": annotations[0]: 'caption' must be a string");
}
