// `minigpt4 evaluate` in-process on the tiny fixture model: the outputs and their formats, the
// same answers as the chat gives, batched as one by one, and resuming a stopped run.
#include "minigpt4/chat/chat.h"
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/metrics/score.h"
#include "minigpt4/evaluate/items.h"
#include "minigpt4/evaluate/predictor.h"
#include "minigpt4/evaluate/runner.h"
#include "tests/evaluate/evaluate_fixture.h"
#include "tests/support/processes.h"

#include <catch2/catch.hpp>

using namespace minigpt4;
using namespace minigpt4::evaluate;
namespace fs = std::filesystem;

namespace {

EvaluateResult run(const fs::path& config, int64_t stop_after = -1) {
  EvaluateOptions options;
  options.stop_after = stop_after;
  options.show_progress = false;
  return run_evaluation(Config::load(config.string()), options);
}

size_t lines_in(const fs::path& path) {
  const auto text = test::read_text(path);
  return static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
}

}  // namespace

TEST_CASE("evaluate: results.json in the submission format, metrics.json as `minigpt4 score` computes them",
          "[evaluate]") {
  test::Scratch tmp("evaluate_outputs");
  const auto b = test::make_benchmark(tmp.path() / "set", 6);
  for (const std::string task : {"coco_caption", "vqav2", "gqa"}) {
    INFO(task);
    const auto out = tmp.path() / task;
    const auto result =
        run(test::write_tiny_eval_config(tmp.path() / (task + ".yaml"), test::evaluation_yaml(b, task), 4, out));
    REQUIRE(result.complete);
    CHECK(result.items == 6);
    CHECK(result.evaluated == 6);
    CHECK(lines_in(out / "predictions_rank0.jsonl") == 6);

    const auto results = test::read_json(out / "results.json");
    REQUIRE(results.size() == 6);
    if (task == "coco_caption") {
      CHECK(results[0]["image_id"] == 1);  // an integer, as COCO's files have it
      CHECK(results[0].contains("caption"));
    } else {
      CHECK(results[0]["question_id"] == (task == "gqa" ? nlohmann::json("107") : nlohmann::json(107)));
      const auto answer = results[0]["answer"].get<std::string>();
      for (char c : answer) CHECK_FALSE((c >= 'A' && c <= 'Z'));  // short answers are lowercased
    }
    const auto scored = metrics::score(
        metrics::parse_task(task), {(task == "coco_caption" ? b.captions
                                     : task == "vqav2"      ? b.vqa_annotations
                                                            : b.gqa)
                                        .string(),
                                    task == "vqav2" ? b.vqa_questions.string() : "", (out / "results.json").string()});
    CHECK(test::read_json(out / "metrics.json") == scored);
    CHECK(result.metrics == scored);
  }
}

TEST_CASE("evaluate: each answer is the chat's answer to the same question; batches change nothing", "[evaluate]") {
  test::Scratch tmp("evaluate_chat");
  const auto b = test::make_benchmark(tmp.path() / "set", 5);
  const auto config_path =
      test::write_tiny_eval_config(tmp.path() / "vqa.yaml", test::evaluation_yaml(b, "vqav2"), 1, tmp.path() / "out");
  const auto config = Config::load(config_path.string());
  const auto settings = EvalSettings::from_config(config);
  const auto items = load_items(settings);
  const std::shared_ptr<const ChatModel> model = ChatModel::load(config, torch::kCPU);

  for (const int beams : {1, 3}) {
    INFO("num_beams " << beams);
    auto s = settings;
    s.num_beams = beams;
    const Predictor predictor(model, s);
    const auto batched = predictor.predict(items);
    REQUIRE(batched.size() == items.size());
    for (size_t i = 0; i < items.size(); ++i) {
      CHECK(predictor.predict({items[i]}) == std::vector<std::string>{batched[i]});
      // The chat: the image turn, then the question inside the instruction.
      ChatSession chat(model);
      chat.upload_image(model->encode_image_file(items[i].image_path));
      chat.ask("Based on the image, respond to this question with a short answer: " + items[i].question);
      AnswerOptions greedy;
      greedy.temperature = 0;
      greedy.max_new_tokens = s.max_new_tokens;
      greedy.num_beams = beams;
      CHECK(clean_prediction(chat.answer(greedy).text, true) == batched[i]);
    }
  }
  const Predictor predictor(model, settings);
  CHECK(
      predictor.prompt_for(items[0]) ==
      "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to you. "
      "Please answer my questions.###Human: <Img><ImageHere></Img> Based on the image, respond to this question with "
      "a short answer: Is the circle number 1 green?###Assistant: ");
}

TEST_CASE("evaluate: a stopped run resumes where it stopped and ends as an uninterrupted one", "[evaluate]") {
  test::Scratch tmp("evaluate_resume");
  const auto b = test::make_benchmark(tmp.path() / "set", 7);
  const auto evaluation = test::evaluation_yaml(b, "vqav2");
  run(test::write_tiny_eval_config(tmp.path() / "straight.yaml", evaluation, 2, tmp.path() / "straight"));

  const auto out = tmp.path() / "stopped";
  const auto config = test::write_tiny_eval_config(tmp.path() / "stopped.yaml", evaluation, 2, out);
  auto first = run(config, 3);
  CHECK_FALSE(first.complete);
  CHECK(first.evaluated == 3);
  CHECK_FALSE(fs::exists(out / "results.json"));
  // As if killed while writing the next line: the unfinished line is dropped and redone.
  std::ofstream(out / "predictions_rank0.jsonl", std::ios::app) << R"({"id": "407", "predic)";
  const auto second = run(config);
  REQUIRE(second.complete);
  CHECK(second.resumed == 3);
  CHECK(second.evaluated == 4);
  CHECK(lines_in(out / "predictions_rank0.jsonl") == 7);
  CHECK(test::read_text(out / "results.json") == test::read_text(tmp.path() / "straight" / "results.json"));
  CHECK(test::read_text(out / "metrics.json") == test::read_text(tmp.path() / "straight" / "metrics.json"));

  // Done: a third run answers nothing and writes the same files again.
  const auto third = run(config);
  CHECK(third.evaluated == 0);
  CHECK(test::read_text(out / "results.json") == test::read_text(tmp.path() / "straight" / "results.json"));

  // Predictions of other settings are not mixed in.
  const auto other = test::write_tiny_eval_config(tmp.path() / "other.yaml", evaluation + "  num_beams: 2\n", 2, out);
  CHECK_THROWS_WITH(run(other), Catch::Contains("holds predictions made with other settings (different: num_beams)"));
}
