#pragma once
// VQA accuracy as the official VQAv2 evaluator computes it (vqaEval.py of the VQA API,
// GT-Vision-Lab/VQA), in both of its versions, and GQA accuracy.
//
// Answer normalisation:
//   punctuation  each of ; / [ ] " { } ( ) = + \ _ - > < @ ` , ? ! is removed where the
//                answer has it next to a space (or has a digit,digit anywhere), else replaced
//                by a space; then every '.' not followed by a digit is removed (at most 32 of
//                them: the evaluator passes re.UNICODE where re.sub takes its count). ':' and
//                the apostrophe are kept.
//   words        lowercased, split on whitespace, number words zero..ten (and none) to digits,
//                the articles a / an / the dropped, the evaluator's contraction table applied
//                ("dont" -> "don't"), joined by single spaces.
// Accuracy of a prediction against a question's annotator answers: for each answer record,
// min(1, matches / 3) over the OTHER records (every record equal to the held-out one is left
// out; the official records differ by answer_id), averaged over the records; with ten answers
// that is the mean over the ten leave-one-annotator-out subsets. What is normalised first
// depends on the version (docs/evaluation.md):
//   official_2021  GT-Vision-Lab/VQA since a013f00 (2021-03, "Fixed processing answers bug"):
//                  the prediction and the answers get newlines/tabs to spaces and a trim; only
//                  when the trimmed answers are not all the same string do both get the
//                  punctuation and word steps. When the ten agree the prediction must equal
//                  them exactly ("Yes" scores 0 against ten "yes").
//   legacy         before a013f00, the copy LAVIS (so BLIP-2's reported numbers) and
//                  MiniGPT-4 ship: the prediction always gets trim + both steps; the answers
//                  get the punctuation step only, and only when they are not all the same.
// Reported x100: overall, per answer type and per question type (means over questions). The
// official script rounds these to two decimals; here they are exact.
//
// GQA: exact match of the prediction and the answer after the full normalisation of both.
// Text is handled as bytes: lowercasing, digits and whitespace are the ASCII ones.
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace minigpt4::metrics {

enum class VqaEvaluator { official_2021, legacy };
// "2021" or "legacy"; anything else is an Error naming both.
VqaEvaluator parse_vqa_evaluator(std::string_view name);
std::string vqa_evaluator_name(VqaEvaluator evaluator);

std::string vqa_process_punctuation(std::string_view text);
std::string vqa_process_digit_article(std::string_view text);
// What the evaluator does to a prediction: newlines and tabs to spaces, trim, punctuation,
// number words / articles / contractions.
std::string vqa_normalize_answer(std::string_view answer);

// One annotator answer: its text and the rest of its record (answer_id, answer_confidence,
// ...) in a canonical form; two records are the same when both agree.
struct AnnotatorAnswer {
  std::string answer;
  std::string other_fields;
};

// Accuracy in [0, 1] of one prediction against one question's annotator answers.
double vqa_accuracy(std::string_view prediction, const std::vector<AnnotatorAnswer>& answers, VqaEvaluator evaluator);

struct VqaQuestion {
  std::string question_id;
  std::string answer_type;    // empty when the annotation has none
  std::string question_type;  // empty when the annotation has none
  std::vector<AnnotatorAnswer> answers;
};

struct VqaScores {
  double overall = 0;  // x100
  std::map<std::string, double> per_answer_type;
  std::map<std::string, double> per_question_type;
};

// `predictions` maps question id -> predicted answer and must hold every question.
VqaScores vqa_scores(const std::vector<VqaQuestion>& questions, const std::map<std::string, std::string>& predictions,
                     VqaEvaluator evaluator);

struct GqaQuestion {
  std::string question_id;
  std::string answer;
  std::string structural_type;  // types.structural / types.semantic, empty when absent
  std::string semantic_type;
  // imageId and question, which `minigpt4 evaluate` needs; empty when absent (the defaults
  // let brace-initialised questions leave them out)
  std::string image_id = {};
  std::string question = {};
};

bool gqa_match(std::string_view prediction, std::string_view answer);

struct GqaScores {
  double accuracy = 0;  // x100
  std::map<std::string, double> per_structural_type;
  std::map<std::string, double> per_semantic_type;
};

GqaScores gqa_scores(const std::vector<GqaQuestion>& questions, const std::map<std::string, std::string>& predictions);

}  // namespace minigpt4::metrics
