#include "minigpt4/metrics/caption_metrics.h"

#include "minigpt4/common/error.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

namespace minigpt4::metrics {

namespace {

constexpr int kMaxN = 4;

// Python's str.split(): runs of whitespace, none empty. Besides ASCII whitespace the only
// one tokenize_caption can produce is U+00A0 (in "3 1/2").
std::vector<std::string> split_whitespace(std::string_view s) {
  std::vector<std::string> words;
  std::string word;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool ascii_space = c == ' ' || (c >= '\t' && c <= '\r') || (c >= '\x1c' && c <= '\x1f');
    const bool no_break_space = c == '\xC2' && i + 1 < s.size() && s[i + 1] == '\xA0';
    if (ascii_space || no_break_space) {
      if (!word.empty()) words.push_back(std::move(word));
      word.clear();
      if (no_break_space) ++i;
    } else {
      word += c;
    }
  }
  if (!word.empty()) words.push_back(std::move(word));
  return words;
}

// Python's str.split(" "): every single space separates, so "" gives one empty token.
std::vector<std::string> split_spaces(std::string_view s) {
  std::vector<std::string> words;
  size_t start = 0;
  for (size_t end; (end = s.find(' ', start)) != std::string_view::npos; start = end + 1)
    words.emplace_back(s.substr(start, end - start));
  words.emplace_back(s.substr(start));
  return words;
}

// n-gram -> count, for n = 1..4 separately (index n - 1). Words hold no whitespace, so the
// words joined by a space identify an n-gram.
using NgramCounts = std::array<std::unordered_map<std::string, int>, kMaxN>;

NgramCounts count_ngrams(const std::vector<std::string>& words) {
  NgramCounts counts;
  for (int n = 1; n <= kMaxN; ++n) {
    for (size_t i = 0; i + n <= words.size(); ++i) {
      std::string key = words[i];
      for (int k = 1; k < n; ++k) key += ' ' + words[i + k];
      ++counts[n - 1][key];
    }
  }
  return counts;
}

void require_images(const std::vector<TokenizedCaptions>& images, const char* metric) {
  if (images.empty()) fail("{}: no images to score", metric);
  for (size_t i = 0; i < images.size(); ++i)
    if (images[i].references.empty()) fail("{}: image {} of {} has no reference caption", metric, i + 1, images.size());
}

}  // namespace

std::array<double, 4> bleu(const std::vector<TokenizedCaptions>& images) {
  require_images(images, "BLEU");
  constexpr double kTiny = 1e-15, kSmall = 1e-9;  // pycocoevalcap's guards against 0 / 0
  std::array<double, kMaxN> correct{}, guessed{};
  double candidate_length = 0, reference_length = 0;
  for (const auto& image : images) {
    const auto candidate = split_whitespace(image.candidate);
    const auto test_len = static_cast<long>(candidate.size());
    NgramCounts max_ref_counts;
    long closest_len = -1;
    for (const auto& reference : image.references) {
      const auto words = split_whitespace(reference);
      const auto len = static_cast<long>(words.size());
      // The reference length closest to the candidate's, the shorter one on a tie.
      if (closest_len < 0 || std::labs(len - test_len) < std::labs(closest_len - test_len) ||
          (std::labs(len - test_len) == std::labs(closest_len - test_len) && len < closest_len))
        closest_len = len;
      const auto counts = count_ngrams(words);
      for (int n = 0; n < kMaxN; ++n)
        for (const auto& [ngram, count] : counts[n]) {
          auto& max_count = max_ref_counts[n][ngram];
          max_count = std::max(max_count, count);
        }
    }
    const auto counts = count_ngrams(candidate);
    for (int n = 0; n < kMaxN; ++n) {
      guessed[n] += static_cast<double>(std::max(0L, test_len - n));
      for (const auto& [ngram, count] : counts[n]) {
        const auto it = max_ref_counts[n].find(ngram);
        correct[n] += std::min(count, it == max_ref_counts[n].end() ? 0 : it->second);
      }
    }
    candidate_length += static_cast<double>(test_len);
    reference_length += static_cast<double>(closest_len);
  }
  std::array<double, 4> scores{};
  double product = 1.0;
  for (int n = 0; n < kMaxN; ++n) {
    product *= (correct[n] + kTiny) / (guessed[n] + kSmall);
    scores[n] = std::pow(product, 1.0 / (n + 1));
  }
  const double ratio = (candidate_length + kTiny) / (reference_length + kSmall);
  if (ratio < 1)
    for (auto& score : scores) score *= std::exp(1 - 1 / ratio);
  return scores;
}

namespace {

size_t longest_common_subsequence(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  std::vector<size_t> previous(b.size() + 1, 0), current(b.size() + 1, 0);
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j)
      current[j] = a[i - 1] == b[j - 1] ? previous[j - 1] + 1 : std::max(previous[j], current[j - 1]);
    std::swap(previous, current);
  }
  return previous[b.size()];
}

}  // namespace

double rouge_l(const std::vector<TokenizedCaptions>& images) {
  require_images(images, "ROUGE-L");
  constexpr double kBeta = 1.2;
  double sum = 0;
  for (const auto& image : images) {
    const auto candidate = split_spaces(image.candidate);
    double max_precision = 0, max_recall = 0;
    for (const auto& reference : image.references) {
      const auto words = split_spaces(reference);
      const auto lcs = static_cast<double>(longest_common_subsequence(words, candidate));
      max_precision = std::max(max_precision, lcs / static_cast<double>(candidate.size()));
      max_recall = std::max(max_recall, lcs / static_cast<double>(words.size()));
    }
    if (max_precision != 0 && max_recall != 0)
      sum += (1 + kBeta * kBeta) * max_precision * max_recall / (max_recall + kBeta * kBeta * max_precision);
  }
  return sum / static_cast<double>(images.size());
}

namespace {

// A caption as CIDEr sees it: TF-IDF weight per n-gram, the norm per n, and its length
// (pycocoevalcap counts bigrams there).
struct TfIdf {
  std::array<std::unordered_map<std::string, double>, kMaxN> weights;
  std::array<double, kMaxN> norms{};
  double length = 0;
};

TfIdf tf_idf(const NgramCounts& counts, const std::unordered_map<std::string, double>& document_frequency,
             double log_images) {
  TfIdf vec;
  for (int n = 0; n < kMaxN; ++n) {
    for (const auto& [ngram, count] : counts[n]) {
      const auto df = document_frequency.find(ngram);
      const double idf = log_images - std::log(std::max(1.0, df == document_frequency.end() ? 0.0 : df->second));
      const double weight = count * idf;
      vec.weights[n][ngram] = weight;
      vec.norms[n] += weight * weight;
      if (n == 1) vec.length += count;
    }
    vec.norms[n] = std::sqrt(vec.norms[n]);
  }
  return vec;
}

// Sum over n of the clipped cosine similarity times the length penalty.
std::array<double, kMaxN> cider_similarity(const TfIdf& candidate, const TfIdf& reference) {
  constexpr double kSigma = 6.0;
  const double delta = candidate.length - reference.length;
  std::array<double, kMaxN> similarity{};
  for (int n = 0; n < kMaxN; ++n) {
    for (const auto& [ngram, weight] : candidate.weights[n]) {
      const auto it = reference.weights[n].find(ngram);
      const double ref_weight = it == reference.weights[n].end() ? 0.0 : it->second;
      similarity[n] += std::min(weight, ref_weight) * ref_weight;
    }
    if (candidate.norms[n] != 0 && reference.norms[n] != 0) similarity[n] /= candidate.norms[n] * reference.norms[n];
    similarity[n] *= std::exp(-(delta * delta) / (2 * kSigma * kSigma));
  }
  return similarity;
}

}  // namespace

double cider_d(const std::vector<TokenizedCaptions>& images) {
  require_images(images, "CIDEr");
  std::vector<NgramCounts> candidates;
  std::vector<std::vector<NgramCounts>> references;
  std::unordered_map<std::string, double> document_frequency;  // images whose references hold the n-gram
  for (const auto& image : images) {
    candidates.push_back(count_ngrams(split_whitespace(image.candidate)));
    auto& refs = references.emplace_back();
    std::unordered_set<std::string> seen;
    for (const auto& reference : image.references) {
      refs.push_back(count_ngrams(split_whitespace(reference)));
      for (const auto& per_n : refs.back())
        for (const auto& entry : per_n) seen.insert(entry.first);
    }
    for (const auto& ngram : seen) document_frequency[ngram] += 1;
  }
  const double log_images = std::log(static_cast<double>(images.size()));
  double sum = 0;
  for (size_t i = 0; i < images.size(); ++i) {
    const auto candidate = tf_idf(candidates[i], document_frequency, log_images);
    std::array<double, kMaxN> total{};
    for (const auto& ref_counts : references[i]) {
      const auto similarity = cider_similarity(candidate, tf_idf(ref_counts, document_frequency, log_images));
      for (int n = 0; n < kMaxN; ++n) total[n] += similarity[n];
    }
    double mean_over_n = 0;
    for (const double t : total) mean_over_n += t;
    mean_over_n /= kMaxN;
    sum += mean_over_n / static_cast<double>(references[i].size()) * 10.0;
  }
  return sum / static_cast<double>(images.size());
}

CaptionScores caption_scores(const std::vector<TokenizedCaptions>& images) {
  CaptionScores scores;
  scores.bleu = bleu(images);
  scores.rouge_l = rouge_l(images);
  scores.cider = cider_d(images);
  return scores;
}

}  // namespace minigpt4::metrics
