#pragma once
// The COCO caption metrics as pycocoevalcap (the coco-caption package, PyPI pycocoevalcap
// 1.2) computes them, on captions already tokenised by tokenize_caption:
//   BLEU-1..4  corpus level: clipped n-gram matches and candidate n-grams summed over all
//              images, the reference length per image the one closest to the candidate's
//              (the shorter on a tie), brevity penalty exp(1 - r/c) when c < r; every ratio
//              guarded as (matches + 1e-15) / (count + 1e-9), pycocoevalcap's constants.
//   ROUGE-L    per image: longest common subsequence against each reference, precision and
//              recall maximised separately over the references, F = (1 + b^2) P R / (R + b^2 P)
//              with b = 1.2; mean over images. Tokens are split on single spaces.
//   CIDEr-D    n = 1..4, TF-IDF vectors with document frequencies counted over the references
//              of the evaluated images (idf = log(images) - log(max(1, df))), candidate weights
//              clipped by the reference's (min(c, r) * r), cosine per n, a gaussian penalty
//              exp(-d^2 / 72) on the length difference d (pycocoevalcap counts lengths in
//              bigrams, so d is the difference in bigram counts), mean over n, mean over the
//              references, x10; mean over images.
// BLEU and CIDEr split on any whitespace (Python's str.split(), including the U+00A0 inside
// a mixed fraction like "3 1/2"), ROUGE-L on single spaces (str.split(" ")), as there.
#include <array>
#include <string>
#include <vector>

namespace minigpt4::metrics {

// One evaluated image: its candidate caption and reference captions, tokenised.
struct TokenizedCaptions {
  std::string candidate;
  std::vector<std::string> references;  // at least one
};

std::array<double, 4> bleu(const std::vector<TokenizedCaptions>& images);
double rouge_l(const std::vector<TokenizedCaptions>& images);
double cider_d(const std::vector<TokenizedCaptions>& images);

struct CaptionScores {
  std::array<double, 4> bleu{};  // BLEU-1..4
  double rouge_l = 0;
  double cider = 0;
};

// All three on the same images (the scores pycocoevalcap reports as Bleu_1..4, ROUGE_L, CIDEr).
CaptionScores caption_scores(const std::vector<TokenizedCaptions>& images);

}  // namespace minigpt4::metrics
