// JSONL metrics, the progress bar's text and modes, the PNG plot.
#include "minigpt4/common/error.h"
#include "minigpt4/train/metrics.h"
#include "tests/train/train_test_util.h"

#include <opencv2/imgcodecs.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>

using namespace minigpt4;
using namespace minigpt4::train;
using Catch::Contains;
using minigpt4::test::ScratchDir;

namespace {

StepRecord record(int64_t step, double loss) {
  StepRecord r;
  r.step = step;
  r.epoch = (step - 1) / 10;
  r.iter = (step - 1) % 10 + 1;
  r.loss = loss;
  r.lr = 1e-4 * step;
  r.samples_per_sec = 40.5;
  r.elapsed = 0.5 * step;
  return r;
}

std::vector<std::string> lines_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

std::string read_all(std::FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string out;
  for (int c; (c = std::fgetc(f)) != EOF;) out.push_back(static_cast<char>(c));
  return out;
}

}  // namespace

TEST_CASE("metrics JSONL: one parseable object per line, extras, resumed runs", "[train]") {
  ScratchDir dir("jsonl");
  const std::string path = dir.file("logs/metrics.jsonl");  // the directory is created
  {
    MetricsLog log(path);
    StepRecord r = record(1, 2.5);
    r.extras["grad_scale"] = 65536.0;
    r.extras["dataset"] = "laion";
    log.write(r);
    log.write(record(2, NAN));  // a diverged step is logged, as null
    log.write(record(3, 2.25));
    // Flushed per line: readable while the log is still open.
    CHECK(lines_of(path).size() == 3);
  }
  const auto lines = lines_of(path);
  REQUIRE(lines.size() == 3);
  for (const auto& line : lines) CHECK_NOTHROW(nlohmann::json::parse(line));
  const auto first = nlohmann::json::parse(lines[0]);
  CHECK(first["step"] == 1);
  CHECK(first["epoch"] == 0);
  CHECK(first["iter"] == 1);
  CHECK(first["loss"] == 2.5);
  CHECK(first["lr"].get<double>() == Approx(1e-4));
  CHECK(first["samples_per_sec"] == 40.5);
  CHECK(first["elapsed"] == 0.5);
  CHECK(first["grad_scale"] == 65536.0);
  CHECK(first["dataset"] == "laion");
  CHECK(nlohmann::json::parse(lines[1])["loss"].is_null());

  // A resumed run appends and repeats steps 2..3: the newer lines win.
  {
    MetricsLog log(path);
    log.write(record(2, 9.0));
    log.write(record(3, 8.0));
    log.write(record(4, 7.0));
  }
  auto records = read_metrics_log(path);
  REQUIRE(records.size() == 4);
  CHECK(records[0].extras["dataset"] == "laion");
  CHECK(records[1].loss == 9.0);
  CHECK(records[3].step == 4);

  // A crash mid-line leaves a partial last line: skipped. A broken line elsewhere: error.
  std::ofstream(path, std::ios::app) << R"({"step": 5, "lo)";
  CHECK(read_metrics_log(path).size() == 4);
  std::ofstream(path, std::ios::app) << "ss\": 1}\nnot json\n";
  CHECK_THROWS_WITH(read_metrics_log(path), Contains(path) && Contains(":8"));
}

TEST_CASE("progress bar text and modes", "[train]") {
  StepRecord r;
  r.epoch = 0;
  r.iter = 120;
  r.loss = 2.31415;
  r.lr = 9.8e-5;
  r.samples_per_sec = 42.14;
  CHECK(ProgressBar::format(r, 4, 500, 192) ==
        "epoch 1/4 [##........] 120/500 loss 2.314 lr 9.8e-05 42.1 samples/s ETA 03:12");
  r.iter = 500;
  r.loss = NAN;
  CHECK(ProgressBar::format(r, 4, 500, -1) ==
        "epoch 1/4 [##########] 500/500 loss nan lr 9.8e-05 42.1 samples/s ETA --:--");
  CHECK(ProgressBar::format(r, 4, 500, 3 * 3600 + 62).find("ETA 3:01:02") != std::string::npos);

  // Not a terminal: a plain line every log_freq iterations and at the epoch's end.
  std::FILE* plain = std::tmpfile();
  REQUIRE(plain != nullptr);
  ProgressBar bar(2, 5, 2, plain);
  bar.set_interactive(false);
  for (int64_t step = 1; step <= 5; ++step) bar.update(record(step, 1.0));
  const std::string text = read_all(plain);
  std::fclose(plain);
  CHECK(text.find('\r') == std::string::npos);
  size_t newlines = 0;
  for (char c : text) newlines += c == '\n';
  CHECK(newlines == 3);  // iterations 2, 4 and 5
  CHECK(text.find(" 2/5 ") != std::string::npos);
  CHECK(text.find(" 3/5 ") == std::string::npos);

  // A terminal: redrawn in place, a newline when the epoch ends.
  std::FILE* tty = std::tmpfile();
  ProgressBar live(1, 3, 50, tty);
  live.set_interactive(true);
  for (int64_t step = 1; step <= 3; ++step) live.update(record(step, 1.0));
  const std::string drawn = read_all(tty);
  std::fclose(tty);
  CHECK(drawn.rfind('\r', 0) == 0);
  CHECK(drawn.find(" 3/3 ") != std::string::npos);
  CHECK(drawn.back() == '\n');
}

TEST_CASE("training curves plot: a PNG of the requested size", "[train]") {
  ScratchDir dir("plot");
  std::vector<StepRecord> records;
  for (int64_t step = 1; step <= 400; ++step) {
    StepRecord r = record(step, 3.0 * std::exp(-step / 150.0) + 0.1 * std::sin(step * 0.7));
    r.lr = step < 50 ? 1e-6 + (1e-4 - 1e-6) * step / 50.0
                     : 8e-5 + 2e-5 * 0.5 * (1 + std::cos(std::acos(-1.0) * step / 400.0));
    records.push_back(r);
  }
  records[100].loss = NAN;  // a gap, not a crash
  const std::string png = dir.file("out/training_curves.png");
  plot_training_curves(records, png);
  cv::Mat img = cv::imread(png, cv::IMREAD_COLOR);
  REQUIRE_FALSE(img.empty());
  CHECK(img.cols == 1200);
  CHECK(img.rows == 800);
  // Something besides the white background was drawn (curves, axes, labels).
  CHECK(cv::countNonZero(img.reshape(1) < 200) > 2000);

  plot_training_curves({}, dir.file("empty.png"), 640, 480);
  cv::Mat empty = cv::imread(dir.file("empty.png"));
  CHECK(empty.cols == 640);
  CHECK(empty.rows == 480);
  CHECK_THROWS_AS(plot_training_curves(records, dir.file("tiny.png"), 10, 10), Error);
}
