#include "minigpt4/metrics/ptb_tokenizer.h"
#include "tests/metrics/metrics_test_util.h"

#include <catch2/catch.hpp>

using namespace minigpt4;
using metrics::ptb_tokens;
using metrics::tokenize_caption;
using Tokens = std::vector<std::string>;

TEST_CASE("tokenizer: lowercases and splits punctuation off words", "[eval]") {
  CHECK(ptb_tokens("A Man riding a Horse.") == Tokens{"a", "man", "riding", "a", "horse", "."});
  CHECK(ptb_tokens("dogs, cats; birds: fish!") == Tokens{"dogs", ",", "cats", ";", "birds", ":", "fish", "!"});
  CHECK(ptb_tokens("What?! Wow!!") == Tokens{"what", "?!", "wow", "!!"});
  CHECK(ptb_tokens("ÉCOLE Café") == Tokens{"école", "café"});
  CHECK(ptb_tokens("  spaced \t out\n") == Tokens{"spaced", "out"});
  CHECK(ptb_tokens("").empty());
}

TEST_CASE("tokenizer: contractions and possessives", "[eval]") {
  CHECK(ptb_tokens("don't can't won't isn't") == Tokens{"do", "n't", "ca", "n't", "wo", "n't", "is", "n't"});
  CHECK(ptb_tokens("it's they're we've I'm you'll he'd") ==
        Tokens{"it", "'s", "they", "'re", "we", "'ve", "i", "'m", "you", "'ll", "he", "'d"});
  CHECK(ptb_tokens("I'd've shouldn't've") == Tokens{"i", "'d", "'ve", "should", "n't", "'ve"});
  CHECK(ptb_tokens("the dog's bone and the dogs' bones") ==
        Tokens{"the", "dog", "'s", "bone", "and", "the", "dogs", "'", "bones"});
  CHECK(ptb_tokens("cannot gonna gotta") == Tokens{"can", "not", "gon", "na", "got", "ta"});
  CHECK(ptb_tokens("it’s o'clock ma'am") == Tokens{"it", "'s", "o'clock", "ma'am"});
}

TEST_CASE("tokenizer: quotes, brackets, dashes and ellipses", "[eval]") {
  CHECK(ptb_tokens("\"hi\" 'yo' “x”") == Tokens{"``", "hi", "''", "`", "yo", "'", "``", "x", "''"});
  CHECK(ptb_tokens("(a) [b] {c}") == Tokens{"-lrb-", "a", "-rrb-", "-lsb-", "b", "-rsb-", "-lcb-", "c", "-rcb-"});
  CHECK(ptb_tokens("a -- b - c—d ---") == Tokens{"a", "--", "b", "-", "c", "--", "d", "--"});
  CHECK(ptb_tokens("wait... what…") == Tokens{"wait", "...", "what", "..."});
  CHECK(ptb_tokens("black-and-white 4-year-old") == Tokens{"black-and-white", "4-year-old"});
}

TEST_CASE("tokenizer: numbers, symbols and abbreviations", "[eval]") {
  CHECK(ptb_tokens("1,000 3.5 10:30 1/2 -5") == Tokens{"1,000", "3.5", "10:30", "1/2", "-5"});
  CHECK(ptb_tokens("$5 50% #1 a&b AT&T") == Tokens{"$", "5", "50", "%", "#", "1", "a", "&", "b", "at&t"});
  CHECK(ptb_tokens("12.5cm 3pm") == Tokens{"12.5", "cm", "3pm"});
  CHECK(ptb_tokens("a 3 1/2 inch") == Tokens{"a",
                                             "3\xC2\xA0"
                                             "1/2",
                                             "inch"});
  CHECK(ptb_tokens("Mr. Smith in the U.S. e.g. now") == Tokens{"mr.", "smith", "in", "the", "u.s.", "e.g.", "now"});
  CHECK(ptb_tokens("no. 5 but say no.") == Tokens{"no.", "5", "but", "say", "no", "."});
  CHECK(ptb_tokens("vitamin c. A x. b") == Tokens{"vitamin", "c", ".", "a", "x.", "b"});
  CHECK(ptb_tokens("see http://a.b/c?d=1.") == Tokens{"see", "http://a.b/c?d=1", "."});
}

TEST_CASE("tokenizer: pycocoevalcap's punctuation list is dropped, brackets are not", "[eval]") {
  CHECK(tokenize_caption("A man's (tall) hat -- isn't it \"great\"?! Yes; ok...") ==
        "a man 's -lrb- tall -rrb- hat is n't it great ?! yes ok");
}

TEST_CASE("tokenizer: equal to Stanford PTBTokenizer on every crafted caption and probe", "[eval]") {
  const auto& pairs = test::eval_golden().at("tokenizer");
  REQUIRE(pairs.size() > 100);
  for (const auto& pair : pairs) {
    const auto raw = pair[0].get<std::string>();
    INFO("caption: " << raw);
    CHECK(tokenize_caption(raw) == pair[1].get<std::string>());
  }
}
