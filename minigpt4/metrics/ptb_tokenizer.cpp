#include "minigpt4/metrics/ptb_tokenizer.h"

#include "minigpt4/common/strings.h"
#include <algorithm>
#include <array>
#include <utility>

namespace minigpt4::metrics {

namespace {

bool is_ascii_digit(char c) { return c >= '0' && c <= '9'; }
bool is_ascii_letter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_upper(char c) { return c >= 'A' && c <= 'Z'; }
// Bytes of non-ASCII characters count as letters: the symbols among them that the Java
// tokenizer splits off are mapped to ASCII first (normalise).
bool is_word_char(char c) {
  return is_ascii_digit(c) || is_ascii_letter(c) || c == '_' || static_cast<unsigned char>(c) >= 0x80;
}

// The Unicode characters the Java tokenizer treats as spaces, quotes, dashes or an ellipsis,
// by their UTF-8 bytes, and the ASCII the rules below read instead.
constexpr std::array<std::pair<std::string_view, std::string_view>, 24> kUnicodeToAscii{{
    {"\xC2\xA0", " "},       {"\xE2\x80\x80", " "},  {"\xE2\x80\x81", " "},  {"\xE2\x80\x82", " "},
    {"\xE2\x80\x83", " "},   {"\xE2\x80\x84", " "},  {"\xE2\x80\x85", " "},  {"\xE2\x80\x86", " "},
    {"\xE2\x80\x87", " "},   {"\xE2\x80\x88", " "},  {"\xE2\x80\x89", " "},  {"\xE2\x80\x8A", " "},
    {"\xE2\x80\xAF", " "},   {"\xE3\x80\x80", " "},  {"\xE2\x80\x9C", "\""}, {"\xE2\x80\x9D", "\""},
    {"\xE2\x80\x9E", "\""},                           // “ ” „
    {"\xC2\xAB", "\""},      {"\xC2\xBB", "\""},      // « »
    {"\xE2\x80\x98", "`"},   {"\xE2\x80\x99", "'"},   // ‘ ’ (but see below)
    {"\xE2\x80\x93", "--"},  {"\xE2\x80\x94", "--"},  // – —
    {"\xE2\x80\xA6", "..."},                          // …
}};

// Whitespace unified and the Unicode punctuation above in ASCII; case kept.
std::string normalise(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const char c = text[i];
    if (c == '\n' || c == '\r' || c == '\t' || c == '\f' || c == '\v') {
      out += ' ';
      ++i;
      continue;
    }
    // The Java lexer keeps U+2019 as it is before a digit ("’90s").
    const bool quote_before_digit =
        starts_with(text.substr(i), "\xE2\x80\x99") && i + 3 < text.size() && is_ascii_digit(text[i + 3]);
    bool mapped = false;
    if (static_cast<unsigned char>(c) >= 0x80 && !quote_before_digit) {
      for (const auto& [utf8, ascii] : kUnicodeToAscii) {
        if (starts_with(text.substr(i), utf8)) {
          out += ascii;
          i += utf8.size();
          mapped = true;
          break;
        }
      }
    }
    if (!mapped) out += text[i++];
  }
  return out;
}

// ASCII and Latin-1 capitals U+00C0..U+00DE (not U+00D7, the multiplication sign) in lower
// case; the byte length stays the same, so positions in both strings agree.
std::string lowercase(std::string text) {
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 'A' && c <= 'Z') {
      text[i] = static_cast<char>(c - 'A' + 'a');
    } else if (c == 0xC3 && i + 1 < text.size()) {
      const auto next = static_cast<unsigned char>(text[i + 1]);
      if (next >= 0x80 && next <= 0x9E && next != 0x97) text[i + 1] = static_cast<char>(next + 0x20);
      ++i;
    }
  }
  return text;
}

// Abbreviations that keep their period (the common ones of the Java lexer's lists, checked
// against it); single letters and letter-period runs ("u.s.") are recognised by shape.
constexpr std::array<std::string_view, 64> kAbbreviations{
    "mr.",   "mrs.",  "ms.",   "dr.",   "st.",  "mt.",   "jr.",   "sr.",   "inc.", "co.",   "corp.",   "ltd.", "etc.",
    "vs.",   "jan.",  "feb.",  "mar.",  "apr.", "jun.",  "jul.",  "aug.",  "sep.", "sept.", "oct.",    "nov.", "dec.",
    "mon.",  "tue.",  "wed.",  "thu.",  "fri.", "ave.",  "blvd.", "rd.",   "ft.",  "lt.",   "col.",    "gen.", "sgt.",
    "capt.", "cpl.",  "pvt.",  "rep.",  "sen.", "gov.",  "pres.", "prof.", "rev.", "hon.",  "messrs.", "mme.", "mlle.",
    "dept.", "univ.", "assn.", "bros.", "est.", "ph.d.", "cf.",   "al.",   "mo.",  "tel.",  "ext.",    "sq."};

bool is_letter_period_run(std::string_view w) {  // "j." "u.s." "e.g."
  if (w.empty() || w.size() % 2 != 0) return false;
  for (size_t i = 0; i < w.size(); i += 2)
    if (!is_ascii_letter(w[i]) || w[i + 1] != '.') return false;
  return true;
}

// What comes after a word's period, as far as the abbreviation rules look.
struct AfterPeriod {
  bool clause_mark = false;  // , ; : right after the period
  bool number = false;       // a space, then a digit
  bool capital = false;      // a space, then an upper-case letter: a sentence may start
};

bool is_abbreviation(std::string_view with_period, const AfterPeriod& after) {
  if (after.clause_mark) return true;                                                     // "dog.," keeps its period
  if (with_period.size() == 2 && is_ascii_letter(with_period[0])) return !after.capital;  // "c." but "c. A"
  if (is_letter_period_run(with_period)) return true;
  if (with_period == "no.") return after.number;  // "no. 5" but "say no."
  return std::find(kAbbreviations.begin(), kAbbreviations.end(), with_period) != kAbbreviations.end();
}

// "12.5cm" -> "12.5" "cm": a number with a separator directly followed by letters.
size_t number_unit_split(std::string_view w) {
  size_t i = 0;
  bool separator = false;
  while (i < w.size() && is_ascii_digit(w[i])) ++i;
  if (i == 0) return 0;
  while (i + 1 < w.size() && (w[i] == '.' || w[i] == ',' || w[i] == ':') && is_ascii_digit(w[i + 1])) {
    separator = true;
    ++i;
    while (i < w.size() && is_ascii_digit(w[i])) ++i;
  }
  if (!separator || i == w.size()) return 0;
  for (size_t j = i; j < w.size(); ++j)
    if (!is_ascii_letter(w[j])) return 0;
  return i;
}

// A word as scanned, split into the Java tokenizer's pieces: fused words, contractions.
void emit_word(std::string_view word, std::vector<std::string>& out) {
  // Words the lexer cuts in two: "cannot" -> "can" "not", "'tis" -> "'t" "is".
  static constexpr std::array<std::pair<std::string_view, size_t>, 8> kFused{
      {{"cannot", 3}, {"gonna", 3}, {"gotta", 3}, {"wanna", 3}, {"lemme", 3}, {"gimme", 3}, {"'tis", 2}, {"'twas", 2}}};
  for (const auto& [fused, cut] : kFused) {
    if (word == fused) {
      out.emplace_back(word.substr(0, cut));
      out.emplace_back(word.substr(cut));
      return;
    }
  }
  if (starts_with(word, "y'") && word.size() > 2) {  // y'all -> y' all
    out.emplace_back("y'");
    emit_word(word.substr(2), out);
    return;
  }
  if (const size_t rock = word.find("'n'"); rock != std::string_view::npos && rock > 0 && rock + 3 < word.size()) {
    emit_word(word.substr(0, rock), out);  // rock'n'roll -> rock 'n' roll
    out.emplace_back("'n'");
    emit_word(word.substr(rock + 3), out);
    return;
  }
  // Peel contraction endings from the right: "shouldn't've" -> should n't 've.
  static constexpr std::array<std::string_view, 7> kEndings{"n't", "'s", "'re", "'ve", "'m", "'ll", "'d"};
  std::vector<std::string_view> endings;
  for (bool peeled = true; peeled;) {
    peeled = false;
    for (const auto ending : kEndings) {
      if (word.size() > ending.size() && ends_with(word, ending)) {
        endings.push_back(ending);
        word.remove_suffix(ending.size());
        peeled = true;
        break;
      }
    }
  }
  if (const size_t cut = number_unit_split(word)) {
    out.emplace_back(word.substr(0, cut));
    out.emplace_back(word.substr(cut));
  } else {
    out.emplace_back(word);
  }
  for (auto it = endings.rbegin(); it != endings.rend(); ++it) out.emplace_back(*it);
}

// Words that begin with an apostrophe ('em, '90s, 's); anything else there is a quote.
size_t apostrophe_word_length(std::string_view rest) {
  static constexpr std::array<std::string_view, 12> kWords{"'n'", "'em", "'til", "'cause", "'tis", "'twas",
                                                           "'s",  "'re", "'ve",  "'m",     "'ll",  "'d"};
  const auto ends_here = [&](size_t n) { return n == rest.size() || !is_word_char(rest[n]); };
  for (const auto w : kWords)
    if (starts_with(rest, w) && ends_here(w.size())) return w.size();
  // Two-digit years: '90s, and '10 right before a space.
  if (rest.size() < 3 || !is_ascii_digit(rest[1]) || !is_ascii_digit(rest[2])) return 0;
  if (rest.size() == 3 || rest[3] == ' ') return 3;
  return rest[3] == 's' && ends_here(4) ? 4 : 0;
}

// Length of a run of 1..4 ASCII digits at the start of `s`, 0 if there is none or a longer one.
size_t short_number(std::string_view s) {
  size_t n = 0;
  while (n < s.size() && is_ascii_digit(s[n])) ++n;
  return n <= 4 ? n : 0;
}

// Splits a normalised line into tokens, left to right.
class LineScanner {
 public:
  // `cased` is `line` before lowercasing (same length): the sentence-start rule reads it.
  LineScanner(std::string_view line, std::string_view cased, std::vector<std::string>& out)
      : s_(line), cased_(cased), out_(out) {}

  void run() {
    while (i_ < s_.size()) {
      if (s_[i_] == ' ')
        ++i_;
      else if (starts_url())
        scan_url();
      else if (s_[i_] == '\'' && apostrophe_word_length(s_.substr(i_)) > 0)
        scan_apostrophe_word();
      else if (const size_t n = mixed_fraction_length())
        scan_mixed_fraction(n);
      else if (starts_word())
        scan_word();
      else
        scan_punctuation();
    }
  }

 private:
  char at(size_t j) const { return j < s_.size() ? s_[j] : '\0'; }

  bool starts_url() const { return starts_with(s_.substr(i_), "http://") || starts_with(s_.substr(i_), "https://"); }

  bool starts_word() const {
    const char c = s_[i_];
    if (is_word_char(c)) return true;
    if ((c == '-' || c == '.') && is_ascii_digit(at(i_ + 1))) return true;  // -5, .5
    return (c == '#' || c == '@') && is_ascii_letter(at(i_ + 1));           // #tag, @user
  }

  // Inside a word these characters continue it when a word character follows.
  bool joins_word(size_t j) const {
    if (!is_word_char(at(j + 1))) return false;
    switch (s_[j]) {
      case '-':
      case '.':
      case '/':
      case '@':
      case '\'':
      case '!':
      case '?': return true;
      case '&': return is_upper(cased_[j - 1]) && is_upper(cased_[j + 1]);  // AT&T, R&B, but "a & b"
      case ',':
      case ':': return is_ascii_digit(s_[j - 1]);  // 1,000 and 10:30, but "a,b" and "x:y" split
      default: return false;
    }
  }

  void scan_url() {
    size_t end = std::min(s_.find(' ', i_), s_.size());
    while (end > i_ && std::string_view(".,;:!?'\")]}").find(s_[end - 1]) != std::string_view::npos) --end;
    out_.emplace_back(s_.substr(i_, end - i_));
    i_ = end;
  }

  void scan_apostrophe_word() {
    const size_t n = apostrophe_word_length(s_.substr(i_));
    emit_word(s_.substr(i_, n), out_);
    i_ += n;
  }

  // "3 1/2": the Java lexer makes one token of a whole number and a fraction, joined by a
  // no-break space (U+00A0). Returns the length of such a pair starting here, else 0.
  size_t mixed_fraction_length() const {
    const auto rest = s_.substr(i_);
    const size_t whole = short_number(rest);
    if (whole == 0 || at(i_ + whole) != ' ') return 0;
    const size_t numerator = short_number(rest.substr(whole + 1));
    if (numerator == 0 || at(i_ + whole + 1 + numerator) != '/') return 0;
    const size_t denominator = short_number(rest.substr(whole + numerator + 2));
    return denominator == 0 ? 0 : whole + numerator + denominator + 2;
  }

  void scan_mixed_fraction(size_t n) {
    std::string token(s_.substr(i_, n));
    token.replace(token.find(' '), 1, "\xC2\xA0");
    out_.push_back(std::move(token));
    i_ += n;
  }

  AfterPeriod after_period(size_t j) const {
    AfterPeriod after;
    after.clause_mark = at(j) == ',' || at(j) == ';' || at(j) == ':';
    after.number = at(j) == ' ' && is_ascii_digit(at(j + 1));
    after.capital = at(j) == ' ' && j + 1 < cased_.size() && cased_[j + 1] >= 'A' && cased_[j + 1] <= 'Z';
    return after;
  }

  void scan_word() {
    size_t j = i_ + 1;
    if (s_[i_] == '-') {
      // A signed number ends at its digits: "-4-year-old" -> "-4" "-" "year-old".
      const auto separator_then_digit = [&](size_t k) {
        return std::string_view(".,:").find(s_[k]) != std::string_view::npos && is_ascii_digit(at(k + 1));
      };
      while (j < s_.size() && (is_ascii_digit(s_[j]) || separator_then_digit(j))) ++j;
    } else {
      while (j < s_.size() && (is_word_char(s_[j]) || joins_word(j))) ++j;
    }
    // A period right after the word belongs to it when the word is an abbreviation, even
    // before more periods ("e.g...." -> "e.g." "...").
    if (at(j) == '.' && is_abbreviation(s_.substr(i_, j + 1 - i_), after_period(j + 1))) ++j;
    emit_word(s_.substr(i_, j - i_), out_);
    i_ = j;
  }

  size_t run_of(std::string_view chars) const {
    size_t j = i_;
    while (j < s_.size() && chars.find(s_[j]) != std::string_view::npos) ++j;
    return j - i_;
  }

  void emit(std::string token, size_t consumed) {
    out_.push_back(std::move(token));
    i_ += consumed;
  }

  void scan_punctuation() {
    // Quote directions follow the Java lexer's usual choice (opening after a space); both
    // directions are dropped before scoring anyway.
    const bool opening = i_ == 0 || s_[i_ - 1] == ' ';
    switch (const char c = s_[i_]) {
      case '(': return emit("-lrb-", 1);
      case ')': return emit("-rrb-", 1);
      case '[': return emit("-lsb-", 1);
      case ']': return emit("-rsb-", 1);
      case '{': return emit("-lcb-", 1);
      case '}': return emit("-rcb-", 1);
      case '"': return emit(opening ? "``" : "''", 1);
      case '`': return at(i_ + 1) == '`' ? emit("``", 2) : emit("`", 1);
      case '\'': return at(i_ + 1) == '\'' ? emit("''", 2) : emit(opening ? "`" : "'", 1);
      case '.': {
        const size_t n = run_of(".");
        return n >= 3 ? emit("...", n) : emit(".", 1);
      }
      case '-': {
        const size_t n = run_of("-");
        return n >= 2 ? emit("--", n) : emit("-", 1);
      }
      case '!':
      case '?': {
        const size_t n = run_of("!?");
        return emit(std::string(s_.substr(i_, n)), n);
      }
      default: return emit(std::string(1, c), 1);
    }
  }

  std::string_view s_;
  std::string_view cased_;
  std::vector<std::string>& out_;
  size_t i_ = 0;
};

}  // namespace

std::vector<std::string> ptb_tokens(std::string_view caption) {
  const std::string cased = normalise(caption);
  const std::string line = lowercase(cased);
  std::vector<std::string> tokens;
  LineScanner(line, cased, tokens).run();
  return tokens;
}

std::string tokenize_caption(std::string_view caption) {
  // pycocoevalcap's punctuation list; the bracket tokens are listed in upper case there while
  // the tokenizer writes them lowercased, so brackets survive.
  static constexpr std::array<std::string_view, 17> kDropped{
      "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"};
  std::string joined;
  for (const auto& token : ptb_tokens(caption)) {
    if (std::find(kDropped.begin(), kDropped.end(), token) != kDropped.end()) continue;
    if (!joined.empty()) joined += ' ';
    joined += token;
  }
  return joined;
}

}  // namespace minigpt4::metrics
