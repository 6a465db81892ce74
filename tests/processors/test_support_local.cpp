#include "tests/processors/test_support_local.h"

#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <vector>

namespace minigpt4::test {

namespace fs = std::filesystem;

std::string read_file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TempDir::TempDir() {
  static std::atomic<int> counter{0};
  const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
  path_ = fs::temp_directory_path() /
          ("minigpt4_processors_test_" + std::to_string(stamp) + "_" + std::to_string(counter++));
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

fs::path TempDir::write(const std::string& name, const std::string& bytes) const {
  const fs::path p = path_ / name;
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return p;
}

namespace {

double keys_cubic(double x) {
  x = std::fabs(x);
  if (x < 1) return 1.5 * x * x * x - 2.5 * x * x + 1;
  if (x < 2) return -0.5 * x * x * x + 2.5 * x * x - 4 * x + 2;
  return 0;
}

// One axis: out[o] = sum_i w(o,i) in[i] with Pillow's window and normalisation.
std::vector<std::vector<std::pair<int, double>>> weights(int in_size, int out_size) {
  const double scale = double(in_size) / out_size, fs = std::max(1.0, scale), support = 2 * fs;
  std::vector<std::vector<std::pair<int, double>>> all(out_size);
  for (int o = 0; o < out_size; ++o) {
    const double center = (o + 0.5) * scale;
    const int lo = std::max(0, int(center - support + 0.5)), hi = std::min(in_size, int(center + support + 0.5));
    double sum = 0;
    for (int i = lo; i < hi; ++i) sum += keys_cubic((i - center + 0.5) / fs);
    for (int i = lo; i < hi; ++i) all[o].push_back({i, keys_cubic((i - center + 0.5) / fs) / sum});
  }
  return all;
}

uint8_t round_clip(double v) { return static_cast<uint8_t>(std::min(255.0, std::max(0.0, std::floor(v + 0.5)))); }

}  // namespace

at::Tensor resize_bicubic_reference_double(const at::Tensor& image, int out_h, int out_w) {
  auto img = image.contiguous();
  const int h = image.size(0), w = image.size(1), c = image.size(2);
  if (out_w != w) {
    auto tmp = torch::empty({h, out_w, c}, torch::kUInt8);
    const auto wts = weights(w, out_w);
    auto src = img.accessor<uint8_t, 3>();
    auto dst = tmp.accessor<uint8_t, 3>();
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < out_w; ++x)
        for (int b = 0; b < c; ++b) {
          double s = 0;
          for (auto [i, wt] : wts[x]) s += wt * src[y][i][b];
          dst[y][x][b] = round_clip(s);
        }
    img = tmp;
  }
  if (out_h != h) {
    auto tmp = torch::empty({out_h, out_w, c}, torch::kUInt8);
    const auto wts = weights(h, out_h);
    auto src = img.accessor<uint8_t, 3>();
    auto dst = tmp.accessor<uint8_t, 3>();
    for (int y = 0; y < out_h; ++y)
      for (int x = 0; x < out_w; ++x)
        for (int b = 0; b < c; ++b) {
          double s = 0;
          for (auto [i, wt] : wts[y]) s += wt * src[i][x][b];
          dst[y][x][b] = round_clip(s);
        }
    img = tmp;
  }
  return img.clone();
}

}  // namespace minigpt4::test
