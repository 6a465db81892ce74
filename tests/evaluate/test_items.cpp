// What `minigpt4 evaluate` reads before it runs a model: its config keys, the benchmark's
// items in each format, image names, and the clean-up of answers.
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/quickstart/synth.h"
#include "minigpt4/metrics/formats.h"
#include "minigpt4/evaluate/items.h"
#include "minigpt4/evaluate/prediction_log.h"
#include "minigpt4/evaluate/predictor.h"
#include "minigpt4/evaluate/progress.h"
#include "minigpt4/evaluate/settings.h"
#include "tests/evaluate/evaluate_fixture.h"
#include "tests/support/processes.h"

#include <catch2/catch.hpp>

#include <fstream>

using namespace minigpt4;
using namespace minigpt4::evaluate;
namespace fs = std::filesystem;

namespace {

EvalSettings settings_for(const test::BenchmarkFiles& b, const std::string& task, const std::string& extra = "") {
  const auto yaml = test::evaluation_yaml(b, task) + extra + "run:\n  output_dir: " + (b.root / "out").string() + "\n";
  return EvalSettings::from_config(Config::from_yaml(yaml, "test.yaml"));
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("evaluate: every benchmark format gives its items in file order", "[evaluate]") {
  test::Scratch tmp("evaluate_items");
  const auto b = test::make_benchmark(tmp.path(), 5);

  const auto captions = load_items(settings_for(b, "coco_caption"));
  REQUIRE(captions.size() == 5);
  CHECK(captions[0].id == "1");
  CHECK(captions[4].image_path == (b.images / test::coco_file_name(5)).string());
  CHECK(captions[0].question.empty());

  // The Karpathy list: ids from the file names as LAVIS derives them, paths under image_root.
  auto karpathy = settings_for(b, "coco_caption");
  karpathy.annotations = b.karpathy.string();
  karpathy.image_root = b.root.string();
  const auto listed = load_items(karpathy);
  REQUIRE(listed.size() == 5);
  CHECK(listed[2].id == "3");
  CHECK(listed[2].image_path == (b.root / "images" / test::coco_file_name(3)).string());

  const auto vqa = load_items(settings_for(b, "vqav2"));
  REQUIRE(vqa.size() == 5);
  CHECK(vqa[1].id == "207");
  CHECK(vqa[1].question == "Is the circle number 2 blue?");
  CHECK(vqa[1].image_path == (b.images / test::coco_file_name(2)).string());

  const auto gqa = load_items(settings_for(b, "gqa"));
  REQUIRE(gqa.size() == 5);
  CHECK(gqa[3].question == "Is the circle number 4 red?");
  CHECK(gqa[3].image_path == (b.images / test::coco_file_name(4)).string());
}

TEST_CASE("evaluate: a missing image or a malformed annotation file stops with a message naming it", "[evaluate]") {
  test::Scratch tmp("evaluate_errors");
  const auto b = test::make_benchmark(tmp.path(), 4);
  fs::remove(b.images / test::coco_file_name(3));
  const auto missing = error_of([&] { load_items(settings_for(b, "vqav2")); });
  CHECK_THAT(missing, Catch::Contains("1 of the 4 images"));
  CHECK_THAT(missing, Catch::Contains((b.images / test::coco_file_name(3)).string()));
  CHECK_THAT(missing, Catch::Contains("evaluation.image_root"));

  std::ofstream(b.vqa_annotations) << R"({"annotations": [{"question_id": 107, "answers": "yes"}]})";
  const auto malformed = error_of([&] { load_items(settings_for(b, "vqav2")); });
  CHECK_THAT(malformed, Catch::Contains(b.vqa_annotations.string()));
  CHECK_THAT(malformed, Catch::Contains("'answers' must be a non-empty list"));

  std::ofstream(b.captions) << R"({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [)";
  const auto truncated = error_of([&] { load_items(settings_for(b, "coco_caption")); });
  CHECK_THAT(truncated, Catch::Contains(b.captions.string()));
  CHECK_THAT(truncated, Catch::Contains("not valid JSON"));

  // A question the annotations hold but the questions file lacks: the two files disagree.
  std::ofstream(b.vqa_annotations) << R"({"annotations": [{"question_id": 999, "answers": [{"answer": "yes"}]}]})";
  CHECK_THAT(error_of([&] { load_items(settings_for(b, "vqav2")); }),
             Catch::Contains("question 999 of the annotations " + b.vqa_annotations.string() + " is not in it"));
}

TEST_CASE("evaluate: config keys are checked and named", "[evaluate]") {
  test::Scratch tmp("evaluate_settings");
  const auto b = test::make_benchmark(tmp.path(), 1);
  const auto vqa = settings_for(b, "vqav2");
  CHECK(vqa.short_answers());
  CHECK(vqa.prompt == "Based on the image, respond to this question with a short answer: {question}");
  CHECK(vqa.max_new_tokens == 8);
  CHECK(vqa.batch_size == 8);
  CHECK_FALSE(settings_for(b, "coco_caption").short_answers());

  CHECK_THAT(error_of([&] { settings_for(b, "vqav2", "  prompt: 'Answer briefly.'\n"); }),
             Catch::Contains("must hold {question}"));
  CHECK_THAT(error_of([&] { settings_for(b, "coco_caption", "  prompt: 'Describe {question}'\n"); }),
             Catch::Contains("a caption benchmark has no questions"));
  CHECK_THAT(error_of([&] { EvalSettings::from_config(Config::from_yaml("evaluation:\n  task: vqav2\n", "t.yaml")); }),
             Catch::Contains("'evaluation.annotations' is required"));
  CHECK_THAT(error_of([&] { EvalSettings::from_config(Config::from_yaml("evaluation:\n  task: vqa\n", "t.yaml")); }),
             Catch::Contains("unknown task 'vqa'"));
  CHECK(vqa.vqa_evaluator == minigpt4::metrics::VqaEvaluator::official_2021);
  CHECK(settings_for(b, "vqav2", "  vqa_evaluator: legacy\n").vqa_evaluator == minigpt4::metrics::VqaEvaluator::legacy);
  CHECK_THAT(error_of([&] { settings_for(b, "vqav2", "  vqa_evaluator: '2017'\n"); }),
             Catch::Contains("test.yaml") && Catch::Contains("evaluation.vqa_evaluator") && Catch::Contains("'2017'"));
  CHECK_THAT(error_of([&] { settings_for(b, "gqa", "  vqa_evaluator: legacy\n"); }),
             Catch::Contains("read only for vqav2 and okvqa"));
  CHECK_THAT(error_of([&] { Config::from_yaml("evaluation:\n  num_beam: 2\n", "t.yaml"); }),
             Catch::Contains("did you mean 'num_beams'"));
}

TEST_CASE("evaluate: image file names from ids", "[evaluate]") {
  CHECK(image_file_name("COCO_val2014_{image_id:012d}.jpg", "391895") == "COCO_val2014_000000391895.jpg");
  CHECK(image_file_name("{image_id}.jpg", "n161313") == "n161313.jpg");
  CHECK(image_file_name("{image_id}.jpg", "2354786") == "2354786.jpg");
  CHECK_THROWS_WITH(image_file_name("{image_id:012d}.jpg", "n161313"), Catch::Contains("cannot name image n161313"));
  CHECK_THROWS_WITH(image_file_name("{id}.jpg", "1"), Catch::Contains("evaluation.image_file '{id}.jpg'"));
}

TEST_CASE("evaluate: answers are cut at the stop string, stripped, short answers lowercased", "[evaluate]") {
  CHECK(clean_prediction("  Two red circles.###Human: what", false) == "Two red circles.");
  CHECK(clean_prediction("Yes<unk> \n", true) == "yes");
  CHECK(clean_prediction("A Dog", false) == "A Dog");
  CHECK(clean_prediction("###", true).empty());
}

TEST_CASE("evaluate: predictions files of every rank are read back; a broken line is named", "[evaluate]") {
  test::Scratch tmp("evaluate_logs");
  const auto dir = tmp.path().string();
  {
    PredictionLog rank0(prediction_log_path(dir, 0)), rank1(prediction_log_path(dir, 1));
    rank0.append({{"1", "a cat"}, {"3", "two dogs"}});
    rank1.append({{"2", "yes"}});
  }
  std::ofstream(tmp.path() / "predictions_rank1.jsonl", std::ios::app) << R"({"id": "4", "predi)";  // killed mid-line
  std::ofstream(tmp.path() / "notes.jsonl") << "not a predictions file\n";
  const auto all = read_prediction_logs(dir);
  CHECK(all == std::map<std::string, std::string>{{"1", "a cat"}, {"2", "yes"}, {"3", "two dogs"}});
  {
    PredictionLog reopened(prediction_log_path(dir, 1));  // cuts the unfinished line before appending
    reopened.append({{"4", "no"}});
  }
  CHECK(read_prediction_logs(dir).at("4") == "no");

  std::ofstream(tmp.path() / "predictions_rank2.jsonl") << "{\"id\": \"5\", \"prediction\": \"x\"}\nnot json\n";
  CHECK_THROWS_WITH(read_prediction_logs(dir),
                    Catch::Contains((tmp.path() / "predictions_rank2.jsonl").string() + " line 2"));
}

TEST_CASE("evaluate: the progress line shows the bar, the rate and the time left", "[evaluate]") {
  CHECK(Progress::format(5, 10, 2.5, 10) == "evaluate [#####.....] 5/10 2.50 items/s ETA 00:02");
  CHECK(Progress::format(0, 7200, 0, 4) == "evaluate [....] 0/7200 0.00 items/s ETA --:--");
  CHECK(Progress::format(0, 7200, 1, 4) == "evaluate [....] 0/7200 1.00 items/s ETA 2:00:00");
}

TEST_CASE("evaluate: the shipped eval configs parse and name a benchmark", "[evaluate]") {
  for (const char* name : {"coco_caption", "nocaps", "vqav2", "okvqa", "gqa"}) {
    INFO(name);
    const auto config = Config::load((test::source_dir() / "eval_configs" / (std::string(name) + ".yaml")).string());
    const auto s = EvalSettings::from_config(config);
    CHECK(metrics::task_name(s.task) == name);
    CHECK(s.output_dir == std::string("runs/evaluate/") + name);
  }
}

TEST_CASE("evaluate: synth writes a captioning and a VQA set of its held-out pictures", "[evaluate]") {
  test::Scratch tmp("evaluate_synth");
  quickstart::SynthOptions o;
  o.out_dir = (tmp.path() / "world").string();
  o.stage1_samples = 4, o.align_samples = 2, o.heldout_samples = 10, o.eval_samples = 8, o.image_size = 32;
  const auto world = quickstart::write_synthetic_world(o);
  REQUIRE(world.eval_samples == 8);
  const auto truth = test::read_json(fs::path(world.heldout_root) / "annotations.json");

  const auto caption_yaml = "evaluation:\n  task: coco_caption\n  annotations: " + world.eval_captions +
                            "\n  image_root: " + world.eval_image_root + "\n";
  const auto captions = load_items(EvalSettings::from_config(Config::from_yaml(caption_yaml, "c.yaml")));
  REQUIRE(captions.size() == 8);
  const auto references = metrics::read_caption_annotations(world.eval_captions);
  for (size_t i = 0; i < captions.size(); ++i) {
    CHECK(fs::path(captions[i].image_path).filename() == fs::path(truth[i]["image"].get<std::string>()).filename());
    REQUIRE(references[i].references.size() == 5);
    CHECK(references[i].references[0] == truth[i]["caption"].get<std::string>());
  }

  const auto vqa_yaml = "evaluation:\n  task: vqav2\n  annotations: " + world.eval_vqa_annotations +
                        "\n  questions: " + world.eval_vqa_questions + "\n  image_root: " + world.eval_image_root +
                        "\n  image_file: '{image_id:05d}.jpg'\n";
  const auto questions = load_items(EvalSettings::from_config(Config::from_yaml(vqa_yaml, "v.yaml")));
  REQUIRE(questions.size() == 8);
  const auto answers = metrics::read_vqa_annotations(world.eval_vqa_annotations);
  // Colour, count, shape, position in turn; the plain answer scores 100 %.
  const char* asked[] = {"colour", "count", "shape", "position"};
  for (size_t i = 0; i < questions.size(); ++i) {
    INFO(questions[i].question);
    CHECK(fs::is_regular_file(questions[i].image_path));
    const auto& attribute = truth[i][asked[i % 4]];
    const std::string expected =
        attribute.is_number() ? std::to_string(attribute.get<int>()) : attribute.get<std::string>();
    REQUIRE(answers[i].answers.size() == 10);
    for (const auto evaluator : {metrics::VqaEvaluator::official_2021, metrics::VqaEvaluator::legacy})
      CHECK(metrics::vqa_accuracy(expected, answers[i].answers, evaluator) == 1.0);
  }
}

TEST_CASE("evaluate: image names from annotation files stay under evaluation.image_root", "[evaluate]") {
  test::Scratch tmp("evaluate_confined");
  const auto b = test::make_benchmark(tmp.path(), 2);
  auto karpathy = settings_for(b, "coco_caption");
  karpathy.annotations = (tmp.path() / "hostile_karpathy.json").string();
  karpathy.image_root = b.root.string();
  // A Karpathy list is a list of {"image", "caption"}: every hostile kind of name.
  // (Each ends in a COCO name, so that LAVIS's id rule finds an id and the path is what fails.)
  const std::string coco = test::coco_file_name(1);
  for (const std::string& name :
       {"../../" + coco, "/etc/" + coco, "images/../../" + coco, std::string("x\0/", 3) + coco}) {
    INFO(name);
    std::ofstream(karpathy.annotations) << nlohmann::json::array({{{"image", name}, {"caption", {"a"}}}}).dump();
    const auto message = error_of([&] { load_items(karpathy); });
    CHECK_THAT(message, Catch::Contains("hostile_karpathy.json") || Catch::Contains("image"));
    CHECK_THAT(message, Catch::Contains("..") || Catch::Contains("absolute") || Catch::Contains("NUL"));
  }
  // GQA ids go through evaluation.image_file: an id that climbs out is refused too.
  auto gqa = settings_for(b, "gqa");
  gqa.annotations = (tmp.path() / "hostile_gqa.json").string();
  std::ofstream(gqa.annotations)
      << nlohmann::json{{"q1", {{"imageId", "../../../etc/passwd"}, {"question", "x?"}, {"answer", "y"}}}}.dump();
  CHECK_THAT(error_of([&] { load_items(gqa); }), Catch::Contains(".."));
}
