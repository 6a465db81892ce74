#pragma once
// What an answer looked at: a map over the image's ViT patches, for the whole answer and
// for each of its words. The map is the gradient saliency of the words' log-probabilities
// with respect to the ViT's patch features (Simonyan et al. 2014): one backward pass carries
// it through the LLM, the projection and the Q-Former (or the 4-patch concatenation of the
// LLaMA-2 variant) to each patch, so every variant is explained the same way and no
// attention has to be chained by hand. docs/explain.md has the method, the alternatives
// that were measured and lost (attention averages and rollout), and the evidence.
// Nothing here runs unless asked: ordinary answers keep no gradients, no attention weights.
#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace cv {
class Mat;
}

namespace minigpt4 {

class Tokenizer;

// The words of an answer as token spans: a token whose text starts with white space starts
// a word, punctuation stands as its own word; tokens after the visible answer (a '###' stop
// string, eos, stop_ids) belong to none.
struct AnswerWord {
  std::string text;                    // as shown, without surrounding white space
  std::vector<int64_t> token_indices;  // into the answer's tokens
};
std::vector<AnswerWord> answer_words(const std::vector<int64_t>& tokens, const Tokenizer& tokenizer,
                                     const std::vector<int64_t>& stop_ids);

// A saliency map [grid, grid] from the gradient of a log-probability with respect to the
// ViT's tokens [1 + P, W] (cls first, then the P = grid x grid patches row-major): the L2
// norm per patch, scaled to sum to 1 (uniform when the gradient is zero everywhere).
at::Tensor patch_saliency(const at::Tensor& vision_token_grad, int64_t grid);

struct WordMap {
  std::string word;
  at::Tensor map;  // [grid, grid] float32, sums to 1
};

struct Explanation {
  size_t image_index = 0;      // which of the conversation's images (the latest one wholly in the prompt)
  int64_t grid = 0;            // patches per side
  at::Tensor answer_map;       // [grid, grid] float32, sums to 1: saliency of all the answer's words together
  std::vector<WordMap> words;  // in answer order (empty unless asked for)
};

// The picture with `map` ([grid, grid], any scale) as a heat overlay (red: most, blue:
// least), PNG bytes, at the picture's own size (the processor squashes it to a square; the
// map is stretched back the same way).
std::string explanation_png(const cv::Mat& rgb, const at::Tensor& map);
// Same, from uint8 [H, W, 3] RGB (as decode_image_rgb returns it).
std::string explanation_png(const at::Tensor& rgb_uint8_hwc, const at::Tensor& map);

// {"image_index", "grid": [g, g], "patches": [[row], ...], "words": [{"word", "patches"}]}
// (patches as rows of floats, rounded to 1e-6).
nlohmann::json explanation_json(const Explanation& explanation);

}  // namespace minigpt4
