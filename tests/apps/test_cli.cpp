// The minigpt4 binary as a user runs it: exit codes and messages.
#include "minigpt4/chat/chat.h"
#include "tests/server/lora_fixture.h"
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

// `environment`: assignments put before the command, e.g. "MINIGPT4_CPU_KERNELS=aten".
Run run(const std::string& args, bool with_stderr = true, const std::string& environment = "") {
  const std::string command = "cd '" + minigpt4::test::source_dir().string() + "' && " + environment +
                              " '" MINIGPT4_BINARY "' " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
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

TEST_CASE("minigpt4 info --kernels names the CPU and the kernels of each weight dtype", "[apps]") {
  auto r = run("info --kernels");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output,
             Contains("cpu: ") && Contains("f32   weights") && Contains("bf16  weights") && Contains("int8  weights"));
  // Forced by the environment: named in the report, or refused naming what is wrong.
  const auto forced = [](const std::string& value) {
    return run("info --kernels", true, "MINIGPT4_CPU_KERNELS='" + value + "'");
  };
  r = forced("aten");
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Contains("int8  weights, 1-8 rows: aten") && Contains("forced by MINIGPT4_CPU_KERNELS=aten"));
  r = forced("bf16=avx9");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("MINIGPT4_CPU_KERNELS='bf16=avx9'") && Contains("unknown kernels 'avx9'"));
  r = forced("f16=avx2");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("unknown key 'f16'"));
  r = forced("int8_prompt=float32,gemm=aten");
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Contains("int8 (per channel): float32 blocks + MKL (forced by"));
  // The prompt GEMM, forced either way where the CPU has AVX2 (refused otherwise).
  r = forced("int8_prompt=float32,gemm=avx2");
  if (r.exit_code == 0)
    CHECK_THAT(r.output, Contains("in float32: ours (avx2) (forced by") &&
                             Contains("int8 (per channel): ours (avx2), float32 blocks (forced by"));
  else
    CHECK_THAT(r.output, Contains("the avx2 prompt GEMM cannot run"));
  r = forced("gemm=avx512");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("no avx512 prompt GEMM"));
  r = forced("int8_prompt=llm_int8");
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Contains("int8 (per channel): LLM.int8()"));
  r = forced("aten");
  CHECK_THAT(r.output, Contains("int8 (per channel): float32 blocks + MKL"));
  r = forced("int8_prompt=w8a8");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("int8_prompt takes llm_int8, float32 or auto, not 'w8a8'"));
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

TEST_CASE("minigpt4 chat --lora chooses a task adapter; /lora switches it", "[apps][lora]") {
  using namespace minigpt4;
  const std::string image = "tests/data/parity/tiny_vicuna0/image_processor/ladybird_640x400.jpg";
  const auto& adapters = test::TinyAdapters::get();
  // The greedy answers in-process, the adapter switched directly.
  auto options = test::tiny_weight_options();
  options.push_back(adapters.lora_path_option());
  const auto model =
      ChatModel::load(Config::load((test::source_dir() / "configs/tiny_vicuna0.yaml").string(), options), torch::kCPU);
  const auto direct = [&](const std::string& adapter) {
    model->use_adapter(adapter);
    ChatSession session(model);
    session.upload_image(model->encode_image_file((test::source_dir() / image).string()));
    session.ask("What is in this image?");
    AnswerOptions answer;
    answer.temperature = 0;
    answer.max_new_tokens = 6;
    return session.answer(answer).text;
  };
  const auto with_a = direct("lora_a"), with_b = direct("lora_b"), original = direct("original");
  REQUIRE(with_a != original);
  REQUIRE(with_b != with_a);

  const std::string base = "chat --cfg-path configs/tiny_vicuna0.yaml --options '" + adapters.lora_path_option() + "' ";
  const std::string ask = " --image " + image + " --prompt 'What is in this image?' --temperature 0 --max-new-tokens 6";
  auto r = run(base + "--lora lora_a" + ask, /*with_stderr=*/false);
  CHECK(r.exit_code == 0);
  CHECK(r.output == with_a + "\n");
  // --lora overrides model.lora_active; original is the base model.
  r = run(base + "model.lora_active=lora_b --lora original" + ask, false);
  CHECK(r.exit_code == 0);
  CHECK(r.output == original + "\n");
  r = run(base + "model.lora_active=lora_b" + ask, false);
  CHECK(r.output == with_b + "\n");

  r = run(base + "--lora lora_c" + ask);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("unknown LoRA adapter 'lora_c'") && Contains("original, lora_a, lora_b"));
  r = run("chat --cfg-path configs/tiny_vicuna0.yaml --lora lora_a" + ask);  // a model without adapters
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("'lora_a'") && Contains("holds: original"));

  // Interactive: list, an unknown name (the session goes on), a switch that re-encodes the image.
  const auto input = std::filesystem::temp_directory_path() / "minigpt4_chat_lora_input.txt";
  {
    std::FILE* f = std::fopen(input.c_str(), "w");
    REQUIRE(f);
    std::fputs("/lora\n/lora nope\n/lora lora_b\nWhat is in this image?\n/quit\n", f);
    std::fclose(f);
  }
  const std::string interactive = base + "--image " + image + " --temperature 0 --max-new-tokens 6 < " + input.string();
  r = run(interactive);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Contains("/lora NAME switches") &&
                           Contains("LoRA adapters: original, lora_a, lora_b (in use: original)") &&
                           Contains("unknown LoRA adapter 'nope'") &&
                           Contains("(adapter lora_b; conversation cleared, the image encoded again)"));
  r = run(interactive, false);
  std::remove(input.c_str());
  CHECK(r.output == with_b + "\n");

  const auto help = run("chat --help");
  CHECK_THAT(help.output, Contains("--lora") && Contains("/lora NAME"));
}

TEST_CASE("minigpt4 serve refuses a --prefill-chunk that is neither auto nor a count, before loading", "[apps]") {
  for (const char* bad : {"lots", "12abc", "2.5"}) {
    const auto r = run(std::string("serve --cfg-path configs/tiny_vicuna0.yaml --prefill-chunk ") + bad);
    INFO(r.output);
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Contains("--prefill-chunk") && Contains("auto"));
  }
}
