#pragma once
// The caption tokenisation of the COCO caption evaluation. pycocoevalcap runs Stanford
// CoreNLP 3.4.1's PTBTokenizer (Java) with `-preserveLines -lowerCase` over every caption,
// then drops the tokens '' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;
// (note: the bracket tokens come out lowercased, "-lrb-", so they are NOT dropped).
// This is a C++ rule set for the same output, equal to the Java one on ordinary captions
// (checked on 11,320 generated lines of caption words, numbers, contractions, abbreviations,
// quotes and brackets: 17 differ, all in the cases listed below):
//   - lowercasing (ASCII and Latin-1 letters);
//   - punctuation split off words: , ; : ! ? . " ' ` ( ) [ ] { } - -- ... * = + | ~ ^ % $ &,
//     runs of ! and ? kept together ("?!"), dash runs of two or more -> "--", dot runs of
//     three or more -> "...", brackets -> -lrb- -rrb- -lsb- -rsb- -lcb- -rcb-;
//   - kept inside a word: hyphens ("black-and-white"), '.', '/', '@', '!', '?' and
//     apostrophes between word characters ("a.b", "1/2"), '&' between capitals ("AT&T"),
//     ',' and ':' between digits ("1,000", "10:30"); a number with a separator followed by
//     letters is split ("12.5 cm"), a signed number ends at its digits ("-4-year-old" ->
//     "-4" "-" "year-old"); a whole number and a fraction are one token joined by U+00A0
//     ("3 1/2");
//   - contractions: n't 's 're 've 'm 'll 'd split off ("do n't", "ca n't", "i 'd 've"),
//     cannot gonna gotta wanna lemme gimme -> "can not", "gon na", ..., 'tis -> 't is,
//     y'all -> y' all, rock'n'roll -> rock 'n' roll; 'n' 'em 'til 'cause '90s kept whole;
//   - abbreviations keep their period: letter-period runs ("u.s.", "e.g."), a list of common
//     ones (mr. dr. st. etc. vs. inc. jan. ...), a single letter unless a capitalised word
//     follows ("vitamin c." but "c. A"), "no." before a number, any word before , ; :;
//   - http:// and https:// URLs kept whole; Unicode quotes, dashes, ellipsis and spaces
//     mapped to their ASCII forms.
// Known differences from the Java tokenizer (docs/evaluation.md lists them with examples):
// pycocoevalcap tokenises all captions as one text, and at the end of a caption the Java
// lexer looks at the next caption (a single letter or "no." keeps its period or not); here
// each caption stands alone. Capitals outside ASCII/Latin-1 are not lowercased; the Java
// abbreviation list is longer; an em or en dash between words without spaces, an apostrophe
// inside a hyphenated word ("cat's-eye"), emoticons (":)"), '<' '>', U+201A, '#' or '$'
// inside a word, "no.5" and "AT&Ts" are tokenised differently.
#include <string>
#include <string_view>
#include <vector>

namespace minigpt4::metrics {

// The tokens the Java tokenizer gives for one caption (one line), before any are dropped.
std::vector<std::string> ptb_tokens(std::string_view caption);

// What the caption metrics read: the tokens without pycocoevalcap's punctuation list,
// joined by single spaces.
std::string tokenize_caption(std::string_view caption);

}  // namespace minigpt4::metrics
