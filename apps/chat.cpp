// `minigpt4 chat --cfg-path EVAL.yaml [--gpu-id N] [--image PATH] [--prompt TEXT] [--lora NAME]`:
// demo.py in a terminal. With --prompt it answers once and exits; without, it reads
// questions from stdin (`/image PATH` gives a picture mid-chat, `/reset` starts over,
// `/lora NAME` switches the LoRA task adapter, as ConLoRA's demo chooses one before the image
// is encoded: the conversation restarts and the current image is encoded again).
// `--explain OUT.png` draws what each answer looked at over the image (`--explain-words DIR`:
// one picture per word), see docs/explain.md.
#include "apps/commands.h"
#include "minigpt4/chat/chat.h"
#include "minigpt4/chat/grounding.h"
#include "minigpt4/common/config.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/common/device.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/common/run_settings.h"
#include "minigpt4/common/strings.h"
#include "minigpt4/io/file_util.h"
#include "minigpt4/processors/image_decode.h"
#include "minigpt4/server/image_input.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>

namespace minigpt4::apps {

namespace {

struct ChatArgs {
  std::string cfg_path, image, prompt, lora;
  std::vector<std::string> options;
  int gpu_id = 0;
  AnswerOptions answer;
  bool random_seed = true;
  bool no_cache = false;
  std::string explain_png, explain_words_dir;  // empty: no explanations
};

// Where explanations go (chat --explain / --explain-words); off when both are empty.
struct ExplainTo {
  std::string png, words_dir;
  bool on() const { return !png.empty() || !words_dir.empty(); }
};

// The image's embeddings, with what the explanations need when they are asked for.
void upload(ChatSession& session, const ChatModel& model, const std::string& path, const ExplainTo& explain) {
  at::Tensor vision_tokens;
  const auto embeds = model.encode_image_file(path, explain.on() ? &vision_tokens : nullptr);
  session.upload_image(embeds, vision_tokens);
}

void write_file(const std::filesystem::path& path, const std::string& bytes) {
  io::AtomicWriter out(path.string());
  out.write(bytes.data(), bytes.size());
  out.commit();
}

// A word as a file name: letters and digits, the rest dropped.
std::string file_word(const std::string& word) {
  std::string out;
  for (const char c : word)
    if (std::isalnum(static_cast<unsigned char>(c)))
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out.empty() ? "punct" : out.substr(0, 40);
}

void write_explanation(ChatSession& session, const std::string& image_path, const ExplainTo& to) {
  if (!to.on()) return;
  if (image_path.empty()) {
    std::fprintf(stderr, "(no image to explain the answer over)\n");
    return;
  }
  try {
    const auto e = session.explain(/*per_word=*/!to.words_dir.empty());
    const auto rgb = decode_image_rgb(image_path);
    if (!to.png.empty()) write_file(to.png, explanation_png(rgb, e.answer_map));
    if (!to.words_dir.empty()) {
      std::filesystem::create_directories(to.words_dir);
      for (size_t i = 0; i < e.words.size(); ++i)
        write_file(std::filesystem::path(to.words_dir) / fmt::format("{:02d}_{}.png", i, file_word(e.words[i].word)),
                   explanation_png(rgb, e.words[i].map));
    }
    std::fprintf(
        stderr, "(explanation: %s%s%s)\n", to.png.c_str(), !to.png.empty() && !to.words_dir.empty() ? ", " : "",
        to.words_dir.empty() ? "" : fmt::format("{} word pictures in {}", e.words.size(), to.words_dir).c_str());
  } catch (const Error& e) {
    std::fprintf(stderr, "cannot explain that answer: %s\n", e.what());
  }
}

// The image the conversation is about: its path and pixel size (for the boxes of an answer).
struct CurrentImage {
  std::string path;
  int64_t width = 0, height = 0;
};

CurrentImage image_for(const std::string& path) {
  CurrentImage image{path};
  std::ifstream in(path, std::ios::binary);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (const auto info = server::image_header_info(bytes.str())) image.width = info->width, image.height = info->height;
  return image;
}

// Boxes in the answer (ConLoRA's detection adapter answers with one), in the image's pixels.
void print_boxes(const std::string& answer, const CurrentImage& image) {
  for (const auto& box : find_boxes(answer, image.width, image.height)) {
    const auto bins = fmt::format("bins {} {} {} {} on the {} grid{}", box.bins[0], box.bins[1], box.bins[2],
                                  box.bins[3], box.grid, box.clamped ? ", clamped" : "");
    const auto label = box.label.empty() ? "" : " '" + box.label + "'";
    if (box.has_pixels)
      std::fprintf(stderr, "(box%s: x %lld-%lld, y %lld-%lld px of the %lldx%lld image; %s)\n", label.c_str(),
                   static_cast<long long>(box.x0), static_cast<long long>(box.x1), static_cast<long long>(box.y0),
                   static_cast<long long>(box.y1), static_cast<long long>(image.width),
                   static_cast<long long>(image.height), bins.c_str());
    else
      std::fprintf(stderr, "(box%s: %s; no image to place it on)\n", label.c_str(), bins.c_str());
  }
}

// Streams one answer to stdout and prints its speed to stderr.
void answer_to_terminal(ChatSession& session, const AnswerOptions& options, const CurrentImage& image) {
  const auto reply = session.answer(options, [](const std::string& piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    return true;
  });
  std::fputc('\n', stdout);
  const double tps = reply.decode_seconds > 0
                         ? static_cast<double>(reply.tokens.size()) / (reply.decode_seconds + reply.prefill_seconds)
                         : 0;
  log::debug("{} prompt positions ({} from the cache), {} tokens, first token {:.2f} s, {:.1f} tokens/s, {}",
             reply.prompt_tokens, reply.reused_tokens, reply.tokens.size(), reply.prefill_seconds, tps,
             reply.finish_reason);
  print_boxes(reply.text, image);
}

// `/lora` lists the adapters; `/lora NAME` switches, restarts the conversation and encodes
// the current image again under the new adapter.
void switch_adapter(ChatSession& session, const ChatModel& model, const std::string& name, const CurrentImage& image,
                    const ExplainTo& explain) {
  if (name.empty()) {
    std::fprintf(stderr, "LoRA adapters: %s (in use: %s)\n",
                 fmt::format("{}", fmt::join(model.adapter_choices(), ", ")).c_str(), model.active_adapter().c_str());
    return;
  }
  try {
    model.use_adapter(name);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return;
  }
  session.reset();
  if (!image.path.empty()) upload(session, model, image.path, explain);
  std::fprintf(stderr, "(adapter %s; conversation cleared%s)\n", name.c_str(),
               image.path.empty() ? "" : ", the image encoded again");
}

void interactive(ChatSession& session, const ChatModel& model, AnswerOptions options, CurrentImage image,
                 const ExplainTo& explain) {
  const bool adapters = model.adapter_choices().size() > 1;
  std::fprintf(stderr, "Chat with %s. /image PATH gives a picture, /reset starts over,%s /quit (or Ctrl-D) ends.\n",
               model.name.c_str(), adapters ? " /lora NAME switches the task adapter (/lora lists them)," : "");
  for (std::string line;;) {
    std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line)) break;
    line = strip(line);
    if (line.empty()) continue;
    if (line == "/quit" || line == "/exit") break;
    if (line == "/lora" || line.rfind("/lora ", 0) == 0) {
      switch_adapter(session, model, strip(line.substr(5)), image, explain);
      continue;
    }
    if (line == "/reset") {
      session.reset();
      image = {};
      std::fprintf(stderr, "(conversation cleared)\n");
      continue;
    }
    if (line.rfind("/image", 0) == 0) {
      const auto path = strip(line.substr(6));
      try {
        upload(session, model, path, explain);
        image = image_for(path);
        std::fprintf(stderr, "(image received: %s)\n", path.c_str());
      } catch (const Error& e) {
        std::fprintf(stderr, "cannot use that image: %s\n", e.what());
      }
      continue;
    }
    session.ask(line);
    answer_to_terminal(session, options, image);
    write_explanation(session, image.path, explain);  // each answer replaces the last one's pictures
    ++options.seed;                                   // a fresh draw each round
  }
}

}  // namespace

void add_chat_command(CLI::App& app) {
  auto args = std::make_shared<ChatArgs>();
  auto* cmd = app.add_subcommand("chat", "Talk with a model about an image (demo.py in the terminal)");
  cmd->add_option("--cfg-path", args->cfg_path, "eval config (YAML), e.g. eval_configs/minigpt4_eval.yaml")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--options", args->options, "config overrides, key=value");
  cmd->add_option("--gpu-id", args->gpu_id, "CUDA device index (run.device: cuda)")->capture_default_str();
  cmd->add_option("--image", args->image, "picture to talk about (JPEG, PNG, ...)")->check(CLI::ExistingFile);
  cmd->add_option("--prompt", args->prompt, "ask this, print the answer and exit (else: interactive)");
  cmd->add_option("--lora", args->lora,
                  "LoRA task adapter to use (a name of model.lora_path, or original: none), chosen before the image "
                  "is encoded; default: model.lora_active. Interactive: /lora NAME switches (the conversation "
                  "restarts, the image is encoded again), /lora lists them");
  auto& a = args->answer;
  cmd->add_option("--max-new-tokens", a.max_new_tokens, "answer length limit")->capture_default_str();
  cmd->add_option("--num-beams", a.num_beams, "beam width (1-10)")->capture_default_str();
  cmd->add_option("--temperature", a.temperature, "sampling temperature; 0: greedy")->capture_default_str();
  cmd->add_option("--top-p", a.top_p, "nucleus sampling")->capture_default_str();
  cmd->add_option("--top-k", a.top_k, "top-k sampling (0: off)")->capture_default_str();
  cmd->add_option_function<double>(
      "--repetition-penalty", [args](double p) { args->answer.repetition_penalty = p; },
      "HF repetition penalty (default: the config's model.repetition_penalty, else 1.0)");
  cmd->add_option("--max-length", a.max_length, "prompt + answer limit (the prompt is cut from the left)")
      ->capture_default_str();
  cmd->add_option_function<uint64_t>(
      "--seed", [args](uint64_t seed) { args->answer.seed = seed, args->random_seed = false; },
      "sampling seed (default: random)");
  cmd->add_flag("--no-cache", args->no_cache, "recompute the whole conversation each round, as the original");
  cmd->add_option("--explain", args->explain_png,
                  "write what the answer looked at as a heat map over the image (PNG; interactive: after each answer)");
  cmd->add_option("--explain-words", args->explain_words_dir,
                  "write one such picture per word of the answer into this folder (NN_word.png)");
  cmd->callback([args] {
    const auto config = Config::load(args->cfg_path, args->options);
    apply_input_limits(config);  // limits.*: what input files may make us allocate
    const auto device = select_device(RunSettings::from_config(config).device, args->gpu_id);
    log::info("device: {}", describe_device(device));
    const auto model = ChatModel::load(config, device);
    if (!args->lora.empty()) model->use_adapter(args->lora);  // before the image is encoded
    if (model->adapter_choices().size() > 1)
      log::info("LoRA adapter: {} (of {})", model->active_adapter(), fmt::join(model->adapter_choices(), ", "));
    AnswerOptions options = args->answer;
    if (args->random_seed) options.seed = std::random_device{}();
    options.reuse_cache = !args->no_cache;
    ChatSession session(model);
    const ExplainTo explain{args->explain_png, args->explain_words_dir};
    CurrentImage image;
    if (!args->image.empty()) {
      upload(session, *model, args->image, explain);
      image = image_for(args->image);
    }
    if (!args->prompt.empty()) {
      session.ask(args->prompt);
      answer_to_terminal(session, options, image);
      write_explanation(session, image.path, explain);
      return;
    }
    interactive(session, *model, options, image, explain);
  });
}

}  // namespace minigpt4::apps
