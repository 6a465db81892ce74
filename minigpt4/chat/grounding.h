#pragma once
// Boxes in a model's answer (visual grounding), turned into pixel coordinates of the image
// the question was about. Pure C++ (no LibTorch): the server, the page and `minigpt4 chat`
// use it on the answer text.
//
// Two conventions are read, as their public code writes and reads them:
//
// - ConLoRA (detection adapter on RefCOCO/+/g): the answer is four tokens
//   `<bin_X0> <bin_Y0> <bin_X1> <bin_Y1>`. Its training processor squashes the image to
//   224 x 224 and writes `bin = round(x / width * (num_bin - 1))` with num_bin 224, so bins run
//   0..223 and the exact inverse is `x = bin * width / (num_bin - 1)` (bin 223 is the right
//   edge). (Its demo draws the bins straight onto the 224 x 224 processed image, i.e.
//   `bin * width / 224`; the two differ by under 1/224 of the side.) Separators between the
//   four tokens may be spaces or nothing; braces around them are accepted too.
// - MiniGPT-v2: `{<X0><Y0><X1><Y1>}` on a 0..100 grid (`int(x / width * 100)` in training;
//   its demo draws `n / 100 * width`), optionally after a phrase `<p>label</p>`, several
//   boxes of one phrase joined by `<delim>`. Four bare `<N>` tokens without the braces are
//   read the same way.
//
// Pixels: the exact rational value rounded to the nearest integer, halves up (computed in
// integers, no floating point), so they lie in [0, width] x [0, height]. A bin outside the
// grid (above its last value, or negative) is clamped to it first and the box is marked
// `clamped`. x0 <= x1 and y0 <= y1 in pixels (a reversed pair is swapped); `bins` keeps the
// numbers as written. Fewer than four coordinate tokens in a row, mixed `<bin_N>` / `<N>`
// tokens, or anything non-numeric inside the brackets is no box.
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace minigpt4 {

struct GroundingOptions {
  int64_t bin_grid = 224;     // ConLoRA's num_bin for `<bin_N>`: bins 0..bin_grid-1
  int64_t number_grid = 100;  // MiniGPT-v2's bounding_box_size for `<N>`: values 0..number_grid
};

struct GroundingBox {
  std::array<int64_t, 4> bins{};           // x0 y0 x1 y1 as written in the answer
  std::string format;                      // "conlora" (<bin_N>) or "minigptv2" (<N>)
  int64_t grid = 0;                        // the grid the bins are on (224, 100)
  bool clamped = false;                    // a bin lay outside the grid
  std::string label;                       // the <p>phrase</p> it belongs to; "" when none
  size_t begin = 0, end = 0;               // byte range of the box in the answer
  bool has_pixels = false;                 // the image size was known
  int64_t x0 = 0, y0 = 0, x1 = 0, y1 = 0;  // pixels of the image, when has_pixels
};

// Every box in `answer`, in order. With width and height > 0 the pixel coordinates are
// filled in (has_pixels); otherwise only the bins.
std::vector<GroundingBox> find_boxes(const std::string& answer, int64_t width = 0, int64_t height = 0,
                                     const GroundingOptions& options = {});

}  // namespace minigpt4
