#include "minigpt4/tokenizer/train_tokenizer.h"

#include "minigpt4/common/error.h"

#include <nlohmann/json.hpp>
#include <sentencepiece_trainer.h>

#include <filesystem>
#include <fstream>

namespace minigpt4 {

namespace fs = std::filesystem;

namespace {

void write_text(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out << text;
    if (!out.flush()) fail("tokenizer: cannot write {}", tmp.string());
  }
  fs::rename(tmp, path);
}

}  // namespace

void train_llama_tokenizer(const TokenizerTrainOptions& opt) {
  if (!fs::is_regular_file(opt.corpus_path)) fail("tokenizer: corpus {} does not exist", opt.corpus_path);
  constexpr int kSpecials = 3, kBytes = 256;
  if (opt.vocab_size < kSpecials + kBytes + 8)
    fail("tokenizer: vocab_size {} is too small (the 3 special and 256 byte pieces alone take 259)", opt.vocab_size);
  fs::create_directories(opt.out_dir);
  const fs::path prefix = fs::path(opt.out_dir) / "tokenizer.training";

  // LLaMA's tokenizer settings (as its tokenizer.model's trainer_spec records them). A tiny
  // corpus cannot always fill vocab_size; hard_vocab_limit=false lets it stop short.
  const std::string args = fmt::format(
      "--input={} --model_prefix={} --vocab_size={} --model_type=bpe --byte_fallback=true --split_digits=true "
      "--add_dummy_prefix=true --normalization_rule_name=identity --remove_extra_whitespaces=false "
      "--unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --character_coverage=1.0 --max_sentencepiece_length=16 "
      "--allow_whitespace_only_pieces=true --hard_vocab_limit=false --shuffle_input_sentence=false "
      "--input_sentence_size=0 --num_threads=1 --minloglevel=2",
      opt.corpus_path, prefix.string(), opt.vocab_size);
  const auto status = sentencepiece::SentencePieceTrainer::Train(args);
  if (!status.ok()) fail("tokenizer: training on {} failed: {}", opt.corpus_path, status.ToString());
  fs::rename(prefix.string() + ".model", fs::path(opt.out_dir) / "tokenizer.model");
  fs::remove(prefix.string() + ".vocab");

  // What a LLaMA Hugging Face directory holds next to tokenizer.model.
  const nlohmann::json config = {{"tokenizer_class", "LlamaTokenizer"},
                                 {"add_bos_token", true},
                                 {"add_eos_token", false},
                                 {"bos_token", "<s>"},
                                 {"eos_token", "</s>"},
                                 {"unk_token", "<unk>"},
                                 {"pad_token", nullptr},
                                 {"model_max_length", 2048},
                                 {"clean_up_tokenization_spaces", false}};
  write_text(fs::path(opt.out_dir) / "tokenizer_config.json", config.dump(2) + "\n");
  const nlohmann::json specials = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}};
  write_text(fs::path(opt.out_dir) / "special_tokens_map.json", specials.dump(2) + "\n");
}

}  // namespace minigpt4
