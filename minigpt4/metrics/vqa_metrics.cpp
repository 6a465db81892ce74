#include "minigpt4/metrics/vqa_metrics.h"

#include "minigpt4/common/error.h"

#include <algorithm>
#include <array>
#include <set>
#include <utility>

namespace minigpt4::metrics {

namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }
// Python's str.split() / strip() whitespace, ASCII part.
bool is_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= '\x1c' && c <= '\x1f'); }

// The evaluator's tables: number words, articles, and its contraction fixes (keys with a
// capital letter never match, since the words are lowercased first; kept as they are).
constexpr std::array<std::pair<std::string_view, std::string_view>, 12> kNumberWords{{{"none", "0"},
                                                                                      {"zero", "0"},
                                                                                      {"one", "1"},
                                                                                      {"two", "2"},
                                                                                      {"three", "3"},
                                                                                      {"four", "4"},
                                                                                      {"five", "5"},
                                                                                      {"six", "6"},
                                                                                      {"seven", "7"},
                                                                                      {"eight", "8"},
                                                                                      {"nine", "9"},
                                                                                      {"ten", "10"}}};
constexpr std::array<std::string_view, 3> kArticles{"a", "an", "the"};
constexpr std::pair<std::string_view, std::string_view> kContractions[] = {{"aint", "ain't"},
                                                                           {"arent", "aren't"},
                                                                           {"cant", "can't"},
                                                                           {"couldve", "could've"},
                                                                           {"couldnt", "couldn't"},
                                                                           {"couldn'tve", "couldn't've"},
                                                                           {"couldnt've", "couldn't've"},
                                                                           {"didnt", "didn't"},
                                                                           {"doesnt", "doesn't"},
                                                                           {"dont", "don't"},
                                                                           {"hadnt", "hadn't"},
                                                                           {"hadnt've", "hadn't've"},
                                                                           {"hadn'tve", "hadn't've"},
                                                                           {"hasnt", "hasn't"},
                                                                           {"havent", "haven't"},
                                                                           {"hed", "he'd"},
                                                                           {"hed've", "he'd've"},
                                                                           {"he'dve", "he'd've"},
                                                                           {"hes", "he's"},
                                                                           {"howd", "how'd"},
                                                                           {"howll", "how'll"},
                                                                           {"hows", "how's"},
                                                                           {"Id've", "I'd've"},
                                                                           {"I'dve", "I'd've"},
                                                                           {"Im", "I'm"},
                                                                           {"Ive", "I've"},
                                                                           {"isnt", "isn't"},
                                                                           {"itd", "it'd"},
                                                                           {"itd've", "it'd've"},
                                                                           {"it'dve", "it'd've"},
                                                                           {"itll", "it'll"},
                                                                           {"let's", "let's"},
                                                                           {"maam", "ma'am"},
                                                                           {"mightnt", "mightn't"},
                                                                           {"mightnt've", "mightn't've"},
                                                                           {"mightn'tve", "mightn't've"},
                                                                           {"mightve", "might've"},
                                                                           {"mustnt", "mustn't"},
                                                                           {"mustve", "must've"},
                                                                           {"neednt", "needn't"},
                                                                           {"notve", "not've"},
                                                                           {"oclock", "o'clock"},
                                                                           {"oughtnt", "oughtn't"},
                                                                           {"ow's'at", "'ow's'at"},
                                                                           {"'ows'at", "'ow's'at"},
                                                                           {"'ow'sat", "'ow's'at"},
                                                                           {"shant", "shan't"},
                                                                           {"shed've", "she'd've"},
                                                                           {"she'dve", "she'd've"},
                                                                           {"she's", "she's"},
                                                                           {"shouldve", "should've"},
                                                                           {"shouldnt", "shouldn't"},
                                                                           {"shouldnt've", "shouldn't've"},
                                                                           {"shouldn'tve", "shouldn't've"},
                                                                           {"somebody'd", "somebodyd"},
                                                                           {"somebodyd've", "somebody'd've"},
                                                                           {"somebody'dve", "somebody'd've"},
                                                                           {"somebodyll", "somebody'll"},
                                                                           {"somebodys", "somebody's"},
                                                                           {"someoned", "someone'd"},
                                                                           {"someoned've", "someone'd've"},
                                                                           {"someone'dve", "someone'd've"},
                                                                           {"someonell", "someone'll"},
                                                                           {"someones", "someone's"},
                                                                           {"somethingd", "something'd"},
                                                                           {"somethingd've", "something'd've"},
                                                                           {"something'dve", "something'd've"},
                                                                           {"somethingll", "something'll"},
                                                                           {"thats", "that's"},
                                                                           {"thered", "there'd"},
                                                                           {"thered've", "there'd've"},
                                                                           {"there'dve", "there'd've"},
                                                                           {"therere", "there're"},
                                                                           {"theres", "there's"},
                                                                           {"theyd", "they'd"},
                                                                           {"theyd've", "they'd've"},
                                                                           {"they'dve", "they'd've"},
                                                                           {"theyll", "they'll"},
                                                                           {"theyre", "they're"},
                                                                           {"theyve", "they've"},
                                                                           {"twas", "'twas"},
                                                                           {"wasnt", "wasn't"},
                                                                           {"wed've", "we'd've"},
                                                                           {"we'dve", "we'd've"},
                                                                           {"weve", "we've"},
                                                                           {"werent", "weren't"},
                                                                           {"whatll", "what'll"},
                                                                           {"whatre", "what're"},
                                                                           {"whats", "what's"},
                                                                           {"whatve", "what've"},
                                                                           {"whens", "when's"},
                                                                           {"whered", "where'd"},
                                                                           {"wheres", "where's"},
                                                                           {"whereve", "where've"},
                                                                           {"whod", "who'd"},
                                                                           {"whod've", "who'd've"},
                                                                           {"who'dve", "who'd've"},
                                                                           {"wholl", "who'll"},
                                                                           {"whos", "who's"},
                                                                           {"whove", "who've"},
                                                                           {"whyll", "why'll"},
                                                                           {"whyre", "why're"},
                                                                           {"whys", "why's"},
                                                                           {"wont", "won't"},
                                                                           {"wouldve", "would've"},
                                                                           {"wouldnt", "wouldn't"},
                                                                           {"wouldnt've", "wouldn't've"},
                                                                           {"wouldn'tve", "wouldn't've"},
                                                                           {"yall", "y'all"},
                                                                           {"yall'll", "y'all'll"},
                                                                           {"y'allll", "y'all'll"},
                                                                           {"yall'd've", "y'all'd've"},
                                                                           {"y'alld've", "y'all'd've"},
                                                                           {"y'all'dve", "y'all'd've"},
                                                                           {"youd", "you'd"},
                                                                           {"youd've", "you'd've"},
                                                                           {"you'dve", "you'd've"},
                                                                           {"youll", "you'll"},
                                                                           {"youre", "you're"},
                                                                           {"youve", "you've"}};

template <typename Table>
std::string_view lookup(const Table& table, std::string_view key) {
  for (const auto& [from, to] : table)
    if (from == key) return to;
  return key;
}

bool has_digit_comma_digit(std::string_view text) {
  for (size_t i = 1; i + 1 < text.size(); ++i)
    if (text[i] == ',' && is_digit(text[i - 1]) && is_digit(text[i + 1])) return true;
  return false;
}

}  // namespace

std::string vqa_process_punctuation(std::string_view text) {
  constexpr std::string_view kPunctuation = ";/[]\"{}()=+\\_-><@`,?!";
  // Whether a mark is deleted or turned into a space is decided on the original text: deleted
  // when it stands next to a space somewhere, or everywhere once a digit,digit appears.
  const bool delete_all = has_digit_comma_digit(text);
  std::string next_to_space;
  for (size_t i = 0; i < text.size(); ++i)
    if ((i + 1 < text.size() && text[i + 1] == ' ') || (i > 0 && text[i - 1] == ' ')) next_to_space += text[i];
  std::string spaced;
  spaced.reserve(text.size());
  for (const char c : text) {
    if (kPunctuation.find(c) == std::string_view::npos)
      spaced += c;
    else if (!delete_all && next_to_space.find(c) == std::string::npos)
      spaced += ' ';
  }
  // Periods not followed by a digit go, at most 32 of them (re.sub's count).
  std::string out;
  out.reserve(spaced.size());
  int removed = 0;
  for (size_t i = 0; i < spaced.size(); ++i) {
    const bool strip = spaced[i] == '.' && removed < 32 && !(i + 1 < spaced.size() && is_digit(spaced[i + 1]));
    if (strip)
      ++removed;
    else
      out += spaced[i];
  }
  return out;
}

std::string vqa_process_digit_article(std::string_view text) {
  std::vector<std::string> words;
  std::string word;
  const auto flush = [&] {
    if (word.empty()) return;
    const auto mapped = lookup(kNumberWords, word);
    if (std::find(kArticles.begin(), kArticles.end(), mapped) == kArticles.end()) words.emplace_back(mapped);
    word.clear();
  };
  for (const char c : text) {
    if (is_space(c))
      flush();
    else
      word += (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  }
  flush();
  std::string out;
  for (const auto& w : words) {
    if (!out.empty()) out += ' ';
    out += lookup(kContractions, w);
  }
  return out;
}

namespace {

// Newlines and tabs to spaces, then Python's strip().
std::string trim_answer(std::string_view answer) {
  std::string text(answer);
  std::replace(text.begin(), text.end(), '\n', ' ');
  std::replace(text.begin(), text.end(), '\t', ' ');
  const auto first = std::find_if_not(text.begin(), text.end(), is_space);
  const auto last = std::find_if_not(text.rbegin(), text.rend(), is_space).base();
  return first < last ? std::string(first, last) : std::string();
}

}  // namespace

VqaEvaluator parse_vqa_evaluator(std::string_view name) {
  if (name == "2021") return VqaEvaluator::official_2021;
  if (name == "legacy") return VqaEvaluator::legacy;
  fail(
      "unknown VQA evaluator '{}' (known: 2021, the official one since GT-Vision-Lab/VQA a013f00; legacy, the "
      "earlier one that LAVIS and MiniGPT-4 copy)",
      name);
}

std::string vqa_evaluator_name(VqaEvaluator evaluator) {
  return evaluator == VqaEvaluator::official_2021 ? "2021" : "legacy";
}

std::string vqa_normalize_answer(std::string_view answer) {
  return vqa_process_digit_article(vqa_process_punctuation(trim_answer(answer)));
}

double vqa_accuracy(std::string_view prediction, const std::vector<AnnotatorAnswer>& answers, VqaEvaluator evaluator) {
  if (answers.empty()) fail("VQA accuracy: a question has no annotator answers");
  auto records = answers;
  std::string predicted;
  if (evaluator == VqaEvaluator::official_2021) {
    for (auto& r : records) r.answer = trim_answer(r.answer);
    predicted = trim_answer(prediction);
  } else {
    predicted = vqa_normalize_answer(prediction);
  }
  std::set<std::string> distinct;
  for (const auto& r : records) distinct.insert(r.answer);
  if (distinct.size() > 1) {
    for (auto& r : records) {
      r.answer = vqa_process_punctuation(r.answer);
      if (evaluator == VqaEvaluator::official_2021) r.answer = vqa_process_digit_article(r.answer);
    }
    if (evaluator == VqaEvaluator::official_2021)
      predicted = vqa_process_digit_article(vqa_process_punctuation(predicted));
  }
  const auto same_record = [](const AnnotatorAnswer& a, const AnnotatorAnswer& b) {
    return a.answer == b.answer && a.other_fields == b.other_fields;
  };
  double total = 0;
  for (const auto& held_out : records) {
    int matches = 0;
    for (const auto& other : records)
      if (!same_record(other, held_out) && other.answer == predicted) ++matches;
    total += std::min(1.0, matches / 3.0);
  }
  return total / static_cast<double>(records.size());
}

namespace {

// 100 * mean, per group; groups in name order.
std::map<std::string, double> group_means_x100(const std::map<std::string, std::vector<double>>& groups) {
  std::map<std::string, double> means;
  for (const auto& [name, values] : groups) {
    double sum = 0;
    for (const double v : values) sum += v;
    means[name] = 100.0 * sum / static_cast<double>(values.size());
  }
  return means;
}

const std::string& prediction_for(const std::map<std::string, std::string>& predictions, const std::string& id) {
  const auto it = predictions.find(id);
  if (it == predictions.end()) fail("no prediction for question {}", id);
  return it->second;
}

}  // namespace

VqaScores vqa_scores(const std::vector<VqaQuestion>& questions, const std::map<std::string, std::string>& predictions,
                     VqaEvaluator evaluator) {
  if (questions.empty()) fail("VQA accuracy: no questions to score");
  std::map<std::string, std::vector<double>> all, by_answer_type, by_question_type;
  for (const auto& q : questions) {
    const double acc = vqa_accuracy(prediction_for(predictions, q.question_id), q.answers, evaluator);
    all[""].push_back(acc);
    if (!q.answer_type.empty()) by_answer_type[q.answer_type].push_back(acc);
    if (!q.question_type.empty()) by_question_type[q.question_type].push_back(acc);
  }
  VqaScores scores;
  scores.overall = group_means_x100(all).at("");
  scores.per_answer_type = group_means_x100(by_answer_type);
  scores.per_question_type = group_means_x100(by_question_type);
  return scores;
}

bool gqa_match(std::string_view prediction, std::string_view answer) {
  return vqa_normalize_answer(prediction) == vqa_normalize_answer(answer);
}

GqaScores gqa_scores(const std::vector<GqaQuestion>& questions, const std::map<std::string, std::string>& predictions) {
  if (questions.empty()) fail("GQA accuracy: no questions to score");
  std::map<std::string, std::vector<double>> all, by_structural, by_semantic;
  for (const auto& q : questions) {
    const double hit = gqa_match(prediction_for(predictions, q.question_id), q.answer) ? 1.0 : 0.0;
    all[""].push_back(hit);
    if (!q.structural_type.empty()) by_structural[q.structural_type].push_back(hit);
    if (!q.semantic_type.empty()) by_semantic[q.semantic_type].push_back(hit);
  }
  GqaScores scores;
  scores.accuracy = group_means_x100(all).at("");
  scores.per_structural_type = group_means_x100(by_structural);
  scores.per_semantic_type = group_means_x100(by_semantic);
  return scores;
}

}  // namespace minigpt4::metrics
