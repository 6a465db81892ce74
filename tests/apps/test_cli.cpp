// The minigpt4 binary as a user runs it: exit codes and messages.
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>

#include <array>
#include <cstdio>
#include <sys/wait.h>

using Catch::Contains;

namespace {

struct Run {
  int exit_code;
  std::string output;  // stdout and stderr
};

Run run(const std::string& args) {
  const std::string command = "cd '" + minigpt4::test::source_dir().string() + "' && '" MINIGPT4_BINARY "' " + args + " 2>&1";
  Run result{-1, ""};
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe);
  std::array<char, 4096> buffer{};
  while (fgets(buffer.data(), buffer.size(), pipe)) result.output += buffer.data();
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

}  // namespace

TEST_CASE("minigpt4 info prints every module of the tiny model", "[apps]") {
  const auto r = run("info --cfg-path configs/tiny_vicuna0.yaml");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Contains("visual_encoder") && Contains("Qformer") && Contains("llama_model") &&
                           Contains("29 ignored (not used by MiniGPT-4)"));
  CHECK_THAT(r.output, Contains("trainable") && Contains("3,136"));
}

TEST_CASE("minigpt4 info fails with a clear message on bad input", "[apps]") {
  auto r = run("info --cfg-path configs/tiny_vicuna0.yaml --options model.ckpt=/nonexistent/ckpt.pth");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("model.ckpt") && Contains("/nonexistent/ckpt.pth"));

  r = run("info --cfg-path configs/tiny_vicuna0.yaml --options model.vit_width=32");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("eva_vit_g.pth") && Contains("shape"));

  r = run("info --cfg-path configs/tiny_vicuna0.yaml --options run.max_epochs=3");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("unknown key 'run.max_epochs'") && Contains("max_epoch"));

  r = run("info --cfg-path /nonexistent.yaml");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("/nonexistent.yaml"));

  r = run("info --cfg-path train_configs/minigpt4_stage1_pretrain.yaml");  // placeholder paths
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("llama_model"));
}

TEST_CASE("minigpt4 chat answers a question about an image and exits", "[apps]") {
  const std::string image = "tests/data/parity/tiny_vicuna0/image_processor/ladybird_640x400.jpg";
  auto r = run("chat --cfg-path configs/tiny_vicuna0.yaml --image " + image +
               " --prompt 'What is in this image?' --temperature 0 --max-new-tokens 6");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  // The random fixture model says something; the same greedy answer every time.
  const auto again = run("chat --cfg-path configs/tiny_vicuna0.yaml --image " + image +
                         " --prompt 'What is in this image?' --temperature 0 --max-new-tokens 6");
  CHECK(again.output == r.output);

  // Interactive: questions from stdin, an image mid-chat, reset, quit.
  const auto input = std::filesystem::temp_directory_path() / "minigpt4_chat_input.txt";
  {
    std::FILE* f = std::fopen(input.c_str(), "w");
    REQUIRE(f);
    std::fputs(("Hello\n/image " + image + "\nAnd this?\n/image /nonexistent.png\n/reset\n/quit\n").c_str(), f);
    std::fclose(f);
  }
  r = run("chat --cfg-path configs/tiny_vicuna0.yaml --temperature 0 --max-new-tokens 4 < " + input.string());
  std::remove(input.c_str());
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Contains("image received") && Contains("cannot use that image") &&
                           Contains("/nonexistent.png") && Contains("conversation cleared"));
}

TEST_CASE("minigpt4 chat refuses a corrupt image with a clear message", "[apps]") {
  const auto corrupt = std::filesystem::temp_directory_path() / "minigpt4_corrupt_chat_image.jpg";
  {
    std::FILE* f = std::fopen(corrupt.c_str(), "wb");
    REQUIRE(f);
    std::fputs("\xFF\xD8\xFF\xE0 not really a jpeg", f);
    std::fclose(f);
  }
  const auto r = run("chat --cfg-path configs/tiny_vicuna0.yaml --image " + corrupt.string() + " --prompt hi");
  std::remove(corrupt.c_str());
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("minigpt4_corrupt_chat_image.jpg"));
}

TEST_CASE("minigpt4 info reports memory and the int8 LLM of low_resource", "[apps]") {
  const auto r = run("info --cfg-path configs/tiny_vicuna0.yaml --options model.low_resource=True");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Contains("note: low_resource") && Contains("fp32/int8") &&
                           Contains("memory: parameters + buffers") && Contains("int8 ") &&
                           Contains("memory: process resident set"));
}
