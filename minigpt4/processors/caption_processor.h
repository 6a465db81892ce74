#pragma once
// LAVIS/MiniGPT-4 `BlipCaptionProcessor`: the caption cleaning the stage-1 datasets
// (LAION, CC/SBU) apply before tokenisation. Stage-2 (cc_sbu_align) uses raw captions.
#include <string>

namespace minigpt4 {

// `BlipCaptionProcessor.pre_caption` on UTF-8 text (its prompt defaults to '' and is
// simply prepended by the caller if one is configured):
//   1. `caption.lower()`;
//   2. each of . ! " ( ) * # : ; ~ becomes a space;
//   3. every run of 2+ whitespace characters (Python's `\s`: ASCII \t\n\v\f\r and space,
//      \x1c-\x1f, and the Unicode spaces U+0085, U+00A0, U+1680, U+2000-U+200A,
//      U+2028/9, U+202F, U+205F, U+3000) becomes one space -- a single '\n' stays;
//   4. trailing '\n' removed, then leading/trailing ' ';
//   5. only the first `max_words` ' '-separated words are kept (Python slicing, so a
//      negative value drops words from the end, as in the reference).
// Lowercasing follows Python for ASCII, Latin-1, Latin Extended-A, Latin Extended
// Additional, Greek (including final sigma), Cyrillic, Armenian and fullwidth Latin
// letters; other scripts (e.g. Latin Extended-B, Georgian, Cherokee) are left unchanged.
// Bytes that are not valid UTF-8 pass through untouched.
std::string blip_caption(const std::string& caption, int max_words = 50);

}  // namespace minigpt4
