// plot_training_curves (declared in metrics.h): loss and learning rate against the step,
// one panel each, drawn with plain OpenCV primitives so that no plotting library is needed.
#include "minigpt4/common/error.h"
#include "minigpt4/io/file_util.h"
#include "minigpt4/train/metrics.h"

#include <fmt/format.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>

namespace minigpt4::train {

namespace {

const cv::Scalar kWhite(255, 255, 255), kBlack(0, 0, 0), kGrid(225, 225, 225), kFrame(120, 120, 120);
const cv::Scalar kLossRaw(235, 205, 170), kLossAvg(170, 90, 20), kLr(20, 120, 230);  // BGR
constexpr int kFont = cv::FONT_HERSHEY_SIMPLEX;
constexpr double kFontScale = 0.45;

struct Range {
  double lo = 0, hi = 1;
  double span() const { return hi - lo; }
};

Range finite_range(const std::vector<double>& v) {
  double lo = INFINITY, hi = -INFINITY;
  for (double x : v)
    if (std::isfinite(x)) lo = std::min(lo, x), hi = std::max(hi, x);
  if (!std::isfinite(lo)) return {0, 1};  // nothing to show
  if (hi == lo) {                         // a flat curve still needs a visible range
    const double pad = lo != 0 ? std::abs(lo) * 0.1 : 1.0;
    return {lo - pad, hi + pad};
  }
  const double pad = (hi - lo) * 0.05;
  return {lo - pad, hi + pad};
}

// 1-2-5 steps giving about `target` ticks inside the range.
std::vector<double> nice_ticks(Range r, int target, double min_step = 0) {
  const double raw = r.span() / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double norm = raw / magnitude;
  double step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * magnitude;
  step = std::max(step, min_step);
  std::vector<double> ticks;
  for (double t = std::ceil(r.lo / step) * step; t <= r.hi + step * 1e-9 && ticks.size() < 50; t += step)
    ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  return ticks;
}

void text(cv::Mat& img, const std::string& s, cv::Point at, int align /* -1 right, 0 centre, 1 left */,
          const cv::Scalar& color = kBlack, double scale = kFontScale) {
  int baseline = 0;
  const cv::Size size = cv::getTextSize(s, kFont, scale, 1, &baseline);
  const int x = align < 0 ? at.x - size.width : align == 0 ? at.x - size.width / 2 : at.x;
  cv::putText(img, s, {x, at.y + size.height / 2}, kFont, scale, color, 1, cv::LINE_AA);
}

struct Panel {
  cv::Rect area;  // the plotting area inside the axes
  Range x, y;
  int px(double v) const { return area.x + static_cast<int>(std::lround((v - x.lo) / x.span() * area.width)); }
  int py(double v) const {
    return area.y + area.height - static_cast<int>(std::lround((v - y.lo) / y.span() * area.height));
  }
};

void draw_axes(cv::Mat& img, const Panel& p, const std::string& title,
               const std::function<std::string(double)>& y_label) {
  cv::rectangle(img, p.area, kFrame, 1);
  for (double t : nice_ticks(p.y, 5)) {
    const int y = p.py(t);
    if (y < p.area.y || y > p.area.y + p.area.height) continue;
    cv::line(img, {p.area.x + 1, y}, {p.area.x + p.area.width - 1, y}, kGrid, 1);
    cv::line(img, {p.area.x - 5, y}, {p.area.x, y}, kFrame, 1);
    text(img, y_label(t), {p.area.x - 8, y}, -1);
  }
  for (double t : nice_ticks(p.x, 8, 1.0)) {  // steps are whole numbers
    const int x = p.px(t);
    if (x < p.area.x || x > p.area.x + p.area.width) continue;
    cv::line(img, {x, p.area.y + 1}, {x, p.area.y + p.area.height - 1}, kGrid, 1);
    cv::line(img, {x, p.area.y + p.area.height}, {x, p.area.y + p.area.height + 5}, kFrame, 1);
    text(img, fmt::format("{:.0f}", t), {x, p.area.y + p.area.height + 16}, 0);
  }
  cv::rectangle(img, p.area, kFrame, 1);  // over the grid lines
  text(img, title, {p.area.x, p.area.y - 14}, 1, kBlack, 0.55);
}

// The curve as line segments, broken where a value is not finite.
void draw_curve(cv::Mat& img, const Panel& p, const std::vector<double>& xs, const std::vector<double>& ys,
                const cv::Scalar& color, int thickness) {
  std::vector<cv::Point> run;
  auto flush = [&] {
    if (run.size() == 1) cv::circle(img, run[0], thickness, color, cv::FILLED, cv::LINE_AA);
    if (run.size() > 1) cv::polylines(img, run, false, color, thickness, cv::LINE_AA);
    run.clear();
  };
  for (size_t i = 0; i < xs.size(); ++i) {
    if (std::isfinite(ys[i])) {
      run.emplace_back(p.px(xs[i]), p.py(ys[i]));
    } else {
      flush();
    }
  }
  flush();
}

// Trailing moving average over `window` finite values (NaN where none).
std::vector<double> moving_average(const std::vector<double>& v, size_t window) {
  std::vector<double> out(v.size(), NAN);
  double sum = 0;
  std::vector<double> kept;
  for (size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i])) continue;
    kept.push_back(v[i]);
    sum += v[i];
    if (kept.size() > window) sum -= kept[kept.size() - window - 1];
    out[i] = sum / static_cast<double>(std::min(kept.size(), window));
  }
  return out;
}

}  // namespace

void plot_training_curves(const std::vector<StepRecord>& records, const std::string& png_path, int width, int height) {
  if (width < 300 || height < 240) fail("plot {}: {}x{} is too small (at least 300x240)", png_path, width, height);
  std::vector<double> steps, loss, lr;
  for (const auto& r : records) {
    steps.push_back(static_cast<double>(r.step));
    loss.push_back(r.loss);
    lr.push_back(r.lr);
  }

  cv::Mat img(height, width, CV_8UC3, kWhite);
  const int left = 95, right = 25, top = 40, gap = 70, bottom = 50;
  const int panel_h = (height - top - gap - bottom) / 2;
  Range x = finite_range(steps);
  if (!steps.empty() && x.lo < 0) x.lo = 0;

  Panel loss_panel{cv::Rect(left, top, width - left - right, panel_h), x, finite_range(loss)};
  Panel lr_panel{cv::Rect(left, top + panel_h + gap, width - left - right, panel_h), x, finite_range(lr)};
  draw_axes(img, loss_panel, "loss", [](double v) { return fmt::format("{:.3g}", v); });
  draw_axes(img, lr_panel, "learning rate", [](double v) { return fmt::format("{:.2e}", v); });
  text(img, "step", {lr_panel.area.x + lr_panel.area.width / 2, height - 14}, 0);

  if (records.empty()) {
    text(img, "no data", {loss_panel.area.x + loss_panel.area.width / 2, loss_panel.area.y + panel_h / 2}, 0);
  } else {
    // Raw loss is noisy: draw it light, with a moving average on top once there is enough.
    const size_t window = std::max<size_t>(1, records.size() / 50);
    draw_curve(img, loss_panel, steps, loss, window > 1 ? kLossRaw : kLossAvg, 1);
    if (window > 1) {
      draw_curve(img, loss_panel, steps, moving_average(loss, window), kLossAvg, 2);
      const cv::Point legend(loss_panel.area.x + loss_panel.area.width - 210, loss_panel.area.y + 16);
      cv::line(img, legend, legend + cv::Point(20, 0), kLossRaw, 2);
      text(img, "loss", legend + cv::Point(26, 0), 1);
      cv::line(img, legend + cv::Point(70, 0), legend + cv::Point(90, 0), kLossAvg, 2);
      text(img, fmt::format("mean of {}", window), legend + cv::Point(96, 0), 1);
    }
    draw_curve(img, lr_panel, steps, lr, kLr, 2);
  }

  std::vector<uchar> png;
  if (!cv::imencode(".png", img, png)) fail("cannot encode the training plot {} as PNG", png_path);
  const auto parent = std::filesystem::path(png_path).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  io::AtomicWriter out(png_path);
  out.write(png.data(), png.size());
  out.commit();
}

}  // namespace minigpt4::train
