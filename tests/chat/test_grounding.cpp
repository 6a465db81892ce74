// Boxes in answers (minigpt4/chat/grounding.h): ConLoRA's `<bin_N>` quadruples on the
// 224-bin grid, MiniGPT-v2's `{<N><N><N><N>}` on 0..100, labels, clamping, malformed text.
#include "minigpt4/chat/grounding.h"

#include <catch2/catch.hpp>

using namespace minigpt4;

namespace {

std::array<int64_t, 4> pixels(const GroundingBox& b) { return {b.x0, b.y0, b.x1, b.y1}; }

}  // namespace

TEST_CASE("grounding: ConLoRA's <bin_N> boxes map to pixels by bin * size / 223", "[chat][grounding]") {
  const std::string answer = "<bin_12> <bin_34> <bin_100> <bin_200>";
  const auto boxes = find_boxes(answer, 640, 400);
  REQUIRE(boxes.size() == 1);
  const auto& b = boxes[0];
  CHECK(b.format == "conlora");
  CHECK(b.grid == 224);
  CHECK(b.bins == std::array<int64_t, 4>{12, 34, 100, 200});
  CHECK_FALSE(b.clamped);
  CHECK(b.label.empty());
  CHECK(b.has_pixels);
  // 12 * 640 / 223 = 34.44 -> 34; 34 * 400 / 223 = 60.99 -> 61; 100 * 640 / 223 = 286.99 -> 287;
  // 200 * 400 / 223 = 358.74 -> 359
  CHECK(pixels(b) == std::array<int64_t, 4>{34, 61, 287, 359});
  CHECK(b.begin == 0);
  CHECK(b.end == answer.size());

  // The grid's ends are the image's edges; a half rounds up (1 * 223 / 446 = 0.5 -> 1).
  const auto edges = find_boxes("<bin_0><bin_0><bin_223><bin_223>", 224, 446);
  REQUIRE(edges.size() == 1);
  CHECK(pixels(edges[0]) == std::array<int64_t, 4>{0, 0, 224, 446});
  const auto half = find_boxes("<bin_1><bin_1><bin_1><bin_1>", 1, 1, GroundingOptions{3, 100});
  REQUIRE(half.size() == 1);
  CHECK(half[0].x0 == 1);  // 1 * 1 / 2 = 0.5 -> 1

  // Inside a sentence, in braces, after a stop-string-free answer; two boxes in a row.
  const auto two =
      find_boxes("The dog is at {<bin_0> <bin_10> <bin_20> <bin_30>} and <bin_1><bin_2><bin_3><bin_4>.", 223, 223);
  REQUIRE(two.size() == 2);
  CHECK(pixels(two[0]) == std::array<int64_t, 4>{0, 10, 20, 30});
  CHECK(pixels(two[1]) == std::array<int64_t, 4>{1, 2, 3, 4});
}

TEST_CASE("grounding: MiniGPT-v2's {<N>...} boxes, labels and <delim>", "[chat][grounding]") {
  const std::string answer = "<p>a man</p> {<10><20><50><100>}<delim>{<60><0><70><5>} and <p>dog</p>{<0><0><1><1>} end";
  const auto boxes = find_boxes(answer, 500, 300);
  REQUIRE(boxes.size() == 3);
  CHECK(boxes[0].format == "minigptv2");
  CHECK(boxes[0].grid == 100);
  CHECK(boxes[0].label == "a man");
  CHECK(pixels(boxes[0]) == std::array<int64_t, 4>{50, 60, 250, 300});  // n / 100 * size
  CHECK(boxes[1].label == "a man");                                     // after <delim>: the same phrase
  CHECK(pixels(boxes[1]) == std::array<int64_t, 4>{300, 0, 350, 15});
  CHECK(boxes[2].label == "dog");
  CHECK(answer.substr(boxes[2].begin, boxes[2].end - boxes[2].begin) == "{<0><0><1><1>}");

  // Bare numbers (no braces) and a referring answer without a phrase.
  const auto bare = find_boxes("<12><34><100><200>", 200, 100);
  REQUIRE(bare.size() == 1);
  CHECK(bare[0].label.empty());
  CHECK(bare[0].clamped);  // 200 > 100
  CHECK(pixels(bare[0]) == std::array<int64_t, 4>{24, 34, 200, 100});
  // Text between a phrase and a box ends the phrase.
  const auto unlabelled = find_boxes("<p>cat</p> is here {<1><2><3><4>}", 100, 100);
  REQUIRE(unlabelled.size() == 1);
  CHECK(unlabelled[0].label.empty());
}

TEST_CASE("grounding: no boxes, malformed boxes, clamping and unknown sizes", "[chat][grounding]") {
  CHECK(find_boxes("", 10, 10).empty());
  CHECK(find_boxes("A ladybird on a leaf.", 10, 10).empty());
  CHECK(find_boxes("<bin_12> <bin_34> <bin_100>", 10, 10).empty());              // three coordinates
  CHECK(find_boxes("<bin_12> <bin_34> <100> <bin_200>", 10, 10).empty());        // mixed kinds
  CHECK(find_boxes("<bin_12> <bin_x> <bin_100> <bin_200>", 10, 10).empty());     // not a number
  CHECK(find_boxes("<bin_12> , <bin_34> <bin_100> <bin_200>", 10, 10).empty());  // text between
  CHECK(find_boxes("<bin_> <bin_1> <bin_2> <bin_3>", 10, 10).empty());
  CHECK(find_boxes("<1><2><3", 10, 10).empty());
  CHECK(find_boxes("<Img><ImageHere></Img> <p>cat</p>", 10, 10).empty());

  // An unclosed brace still holds four complete coordinates: they are read.
  const auto unclosed = find_boxes("{<1><2><3><4>", 100, 100);
  REQUIRE(unclosed.size() == 1);
  CHECK(pixels(unclosed[0]) == std::array<int64_t, 4>{1, 2, 3, 4});

  // Out of the grid: clamped (the bins stay as written), and a reversed box is put in order.
  const auto out = find_boxes("<bin_300> <bin_-5> <bin_99999999999999999999> <bin_0>", 446, 223);
  REQUIRE(out.size() == 1);
  CHECK(out[0].clamped);
  CHECK(out[0].bins[0] == 300);
  CHECK(out[0].bins[1] == -5);
  CHECK(out[0].bins[2] > 223);
  CHECK(pixels(out[0]) == std::array<int64_t, 4>{446, 0, 446, 0});
  const auto reversed = find_boxes("<bin_200> <bin_100> <bin_10> <bin_20>", 223, 223);
  REQUIRE(reversed.size() == 1);
  CHECK_FALSE(reversed[0].clamped);
  CHECK(pixels(reversed[0]) == std::array<int64_t, 4>{10, 20, 200, 100});

  // Without an image size only the bins are known.
  const auto unknown = find_boxes("<bin_1> <bin_2> <bin_3> <bin_4>");
  REQUIRE(unknown.size() == 1);
  CHECK_FALSE(unknown[0].has_pixels);
  CHECK(unknown[0].bins == std::array<int64_t, 4>{1, 2, 3, 4});

  // Five coordinates: the first four are a box, the fifth alone is none.
  CHECK(find_boxes("<bin_1><bin_2><bin_3><bin_4><bin_5>", 10, 10).size() == 1);
  // Another grid (e.g. a detection adapter trained with num_bin 1000).
  const auto fine = find_boxes("<bin_999> <bin_0> <bin_999> <bin_999>", 100, 100, GroundingOptions{1000, 100});
  REQUIRE(fine.size() == 1);
  CHECK(pixels(fine[0]) == std::array<int64_t, 4>{100, 0, 100, 100});
}
