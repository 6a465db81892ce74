// `minigpt4 chat --cfg-path EVAL.yaml [--gpu-id N] [--image PATH] [--prompt TEXT]`:
// demo.py in a terminal. With --prompt it answers once and exits; without, it reads
// questions from stdin (`/image PATH` gives a picture mid-chat, `/reset` starts over).
#include "apps/commands.h"
#include "minigpt4/chat/chat.h"
#include "minigpt4/common/config.h"
#include "minigpt4/common/device.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"

#include <cstdio>
#include <iostream>
#include <random>

namespace minigpt4::apps {

namespace {

struct ChatArgs {
  std::string cfg_path, image, prompt;
  std::vector<std::string> options;
  int gpu_id = 0;
  AnswerOptions answer;
  bool random_seed = true;
  bool no_cache = false;
};

std::string trim(const std::string& s) {
  const auto begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t\r\n") - begin + 1);
}

// Streams one answer to stdout and prints its speed to stderr.
void answer_to_terminal(ChatSession& session, const AnswerOptions& options) {
  const auto reply = session.answer(options, [](const std::string& piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    return true;
  });
  std::fputc('\n', stdout);
  const double tps = reply.decode_seconds > 0 ? static_cast<double>(reply.tokens.size()) / (reply.decode_seconds + reply.prefill_seconds) : 0;
  log::debug("{} prompt positions ({} from the cache), {} tokens, first token {:.2f} s, {:.1f} tokens/s, {}",
             reply.prompt_tokens, reply.reused_tokens, reply.tokens.size(), reply.prefill_seconds, tps, reply.finish_reason);
}

void interactive(ChatSession& session, const ChatModel& model, AnswerOptions options) {
  std::fprintf(stderr, "Chat with %s. /image PATH gives a picture, /reset starts over, /quit (or Ctrl-D) ends.\n",
               model.name.c_str());
  for (std::string line;;) {
    std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line)) break;
    line = trim(line);
    if (line.empty()) continue;
    if (line == "/quit" || line == "/exit") break;
    if (line == "/reset") {
      session.reset();
      std::fprintf(stderr, "(conversation cleared)\n");
      continue;
    }
    if (line.rfind("/image", 0) == 0) {
      const auto path = trim(line.substr(6));
      try {
        session.upload_image(model.encode_image_file(path));
        std::fprintf(stderr, "(image received: %s)\n", path.c_str());
      } catch (const Error& e) {
        std::fprintf(stderr, "cannot use that image: %s\n", e.what());
      }
      continue;
    }
    session.ask(line);
    answer_to_terminal(session, options);
    ++options.seed;  // a fresh draw each round
  }
}

}  // namespace

void add_chat_command(CLI::App& app) {
  auto args = std::make_shared<ChatArgs>();
  auto* cmd = app.add_subcommand("chat", "Talk with a model about an image (demo.py in the terminal)");
  cmd->add_option("--cfg-path", args->cfg_path, "eval config (YAML), e.g. eval_configs/minigpt4_eval.yaml")->required()->check(CLI::ExistingFile);
  cmd->add_option("--options", args->options, "config overrides, key=value");
  cmd->add_option("--gpu-id", args->gpu_id, "CUDA device index (run.device: cuda)")->capture_default_str();
  cmd->add_option("--image", args->image, "picture to talk about (JPEG, PNG, ...)")->check(CLI::ExistingFile);
  cmd->add_option("--prompt", args->prompt, "ask this, print the answer and exit (else: interactive)");
  auto& a = args->answer;
  cmd->add_option("--max-new-tokens", a.max_new_tokens, "answer length limit")->capture_default_str();
  cmd->add_option("--num-beams", a.num_beams, "beam width (1-10)")->capture_default_str();
  cmd->add_option("--temperature", a.temperature, "sampling temperature; 0: greedy")->capture_default_str();
  cmd->add_option("--top-p", a.top_p, "nucleus sampling")->capture_default_str();
  cmd->add_option("--top-k", a.top_k, "top-k sampling (0: off)")->capture_default_str();
  cmd->add_option("--repetition-penalty", a.repetition_penalty, "HF repetition penalty")->capture_default_str();
  cmd->add_option("--max-length", a.max_length, "prompt + answer limit (the prompt is cut from the left)")->capture_default_str();
  cmd->add_option_function<uint64_t>("--seed", [args](uint64_t seed) { args->answer.seed = seed, args->random_seed = false; },
                                     "sampling seed (default: random)");
  cmd->add_flag("--no-cache", args->no_cache, "recompute the whole conversation each round, as the original");
  cmd->callback([args] {
    const auto config = Config::load(args->cfg_path, args->options);
    const auto device = select_device(config.get_string("run.device", "cuda"), args->gpu_id);
    log::info("device: {}", describe_device(device));
    const auto model = ChatModel::load(config, device);
    AnswerOptions options = args->answer;
    if (args->random_seed) options.seed = std::random_device{}();
    options.reuse_cache = !args->no_cache;
    ChatSession session(model);
    if (!args->image.empty()) session.upload_image(model->encode_image_file(args->image));
    if (!args->prompt.empty()) {
      session.ask(args->prompt);
      answer_to_terminal(session, options);
      return;
    }
    interactive(session, *model, options);
  });
}

}  // namespace minigpt4::apps
