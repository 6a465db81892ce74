// Parity of the whole MiniGPT-4 forward with the original Python code, for every fixture
// case (tests/data/parity + MINIGPT4_PARITY_DIRS). Every size comes from the case's
// manifest and config.json; the model is built through the YAML config path and loaded
// from the case's split weight files, exactly as a user's real files would be.
#include "minigpt4/common/config.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/io/safetensors.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>

#include <iostream>

using namespace minigpt4;
namespace fs = std::filesystem;

namespace {

struct Checker {
  std::string case_name;
  nlohmann::json manifest;
  StateDict expected;
  int checked = 0;
  std::vector<std::string> failures;

  void operator()(const std::string& name, const torch::Tensor& actual) {
    INFO("case " << case_name << ", tensor " << name);
    REQUIRE(expected.count(name));
    const auto result = test::compare(name, actual, expected.at(name), test::tolerance_for(manifest, name));
    if (!result.ok) failures.push_back(result.message);
    if (std::getenv("MINIGPT4_PARITY_VERBOSE"))
      std::cout << "  " << name << ": max |diff| " << result.max_abs_diff << "\n";
    CHECK(result.ok);
    ++checked;
  }
};

torch::Tensor stack(const std::vector<torch::Tensor>& v) { return torch::stack(v); }

}  // namespace

TEST_CASE("MiniGPT-4 forward matches the original on every fixture case", "[parity]") {
  torch::NoGradGuard no_grad_for_setup;
  const auto cases = test::parity_cases("minigpt4_full.safetensors");
  REQUIRE(!cases.empty());
  for (const auto& dir : cases) {
    const auto manifest = test::read_json(dir / "manifest.json");
    Checker check{manifest.value("case", dir.filename().string()),
                  manifest,
                  io::load_safetensors((dir / "io.safetensors").string()),
                  0,
                  {}};
    INFO("case directory " << dir);

    const auto config = Config::from_yaml(test::parity_case_yaml(dir, manifest), (dir / "manifest.json").string());
    LoadReport report;
    const auto model = load_minigpt4(MiniGPT4Config::from_config(config), torch::kCPU, &report);
    const auto tokenizer = LlamaTokenizer::from_pretrained(dir / "vicuna");

    // Loading the split files gives exactly the assembled model's state dict.
    const auto full = io::load_state_dict((dir / "minigpt4_full.safetensors").string());
    for (const auto& item : model->named_parameters()) {
      INFO("parameter " << item.key());
      REQUIRE(full.count(item.key()));
      CHECK(torch::equal(item.value(), full.at(item.key())));
    }

    // Vision: ViT tokens, blocks, ln_vision, Q-Former, projector.
    const auto image = check.expected.at("image");
    check("vit_tokens_in", model->visual_encoder->embed(image));
    std::vector<torch::Tensor> blocks;
    const auto vit_out = model->visual_encoder->forward(image, &blocks);
    check("vit_block_outs", stack(blocks));
    check("vit_out", vit_out);
    const auto ln_out = model->ln_vision->forward(vit_out);
    check("ln_vision_out", ln_out);
    if (model->Qformer) {
      std::vector<torch::Tensor> qformer_states;
      const auto qformer_out =
          model->Qformer->forward(model->query_tokens.expand({image.size(0), -1, -1}), ln_out, &qformer_states);
      check("qformer_embeddings_out", qformer_states.front());
      check("qformer_hidden_states", stack(qformer_states));
      check("qformer_out", qformer_out);
    } else {  // the LLaMA-2 variant: cls dropped, 4 consecutive patch tokens concatenated
      REQUIRE_FALSE(manifest["config"].contains("qformer"));
      check("image_tokens_concat4", model->image_queries(ln_out));
    }
    check("img_embeds", model->encode_img(image));
    const auto interp = check.expected.at("pos_embed_interp");
    const auto grid = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(interp.size(1) - 1))));
    check("pos_embed_interp", interpolate_pos_embed(model->visual_encoder->pos_embed, grid));

    // Training forward of both stages, loss and the projector's gradients.
    const auto& mg = manifest["config"]["minigpt4"];
    const auto captions = mg["captions"].get<std::vector<std::string>>();
    for (const std::string stage : {"stage1", "stage2"}) {
      const auto& s = mg[stage];
      auto stage_config = model->config;
      stage_config.end_sym = s["end_sym"].get<std::string>();
      stage_config.max_txt_len = s["max_txt_len"].get<int64_t>();
      model->config = stage_config;
      const std::string prompt = s["prompt"].is_string() ? s["prompt"].get<std::string>() : "";
      if (!prompt.empty() && check.expected.count(stage + "_prompt_before_ids")) {
        const auto split = prompt.find("<ImageHere>");
        check(stage + "_prompt_before_ids", torch::tensor(tokenizer.encode(prompt.substr(0, split), false)));
        check(stage + "_prompt_after_ids", torch::tensor(tokenizer.encode(prompt.substr(split + 11), false)));
      }
      std::vector<std::string> texts;
      for (const auto& c : captions) texts.push_back(c + stage_config.end_sym);
      const auto batch = tokenizer.encode_batch(texts, false, stage_config.max_txt_len, model->pad_id(tokenizer));
      std::vector<torch::Tensor> ids, mask;
      for (size_t b = 0; b < batch.ids.size(); ++b)
        ids.push_back(torch::tensor(batch.ids[b])), mask.push_back(torch::tensor(batch.attention_mask[b]));
      check(stage + "_to_regress_ids", torch::stack(ids));
      check(stage + "_to_regress_mask", torch::stack(mask));

      torch::GradMode::set_enabled(true);
      model->llama_proj->weight.mutable_grad() = torch::Tensor();
      model->llama_proj->bias.mutable_grad() = torch::Tensor();
      const auto out = model->forward(image, captions, prompt, tokenizer);
      check(stage + "_inputs_embeds", out.inputs_embeds);
      check(stage + "_attention_mask", out.attention_mask);
      check(stage + "_targets", out.targets);
      check(stage + "_logits", out.logits);
      check(stage + "_loss", out.loss);
      out.loss.backward();
      torch::GradMode::set_enabled(false);
      check(stage + "_grad_llama_proj_weight", model->llama_proj->weight.grad());
      check(stage + "_grad_llama_proj_bias", model->llama_proj->bias.grad());
    }

    // Per-sample instructions (the LLaMA-2 variant's code reads `instruction_input`): one
    // instruction per caption, already in its template, padded to the longest prompt.
    if (mg.contains("instr")) {
      const auto& s = mg["instr"];
      auto instr_config = model->config;
      instr_config.end_sym = s["end_sym"].get<std::string>();
      instr_config.max_txt_len = s["max_txt_len"].get<int64_t>();
      instr_config.chat_template = false;
      model->config = instr_config;
      const auto instructions = s["instructions"].get<std::vector<std::string>>();
      REQUIRE(instructions.size() == captions.size());
      std::vector<Instruction> samples;
      for (size_t b = 0; b < captions.size(); ++b) {
        const auto split = instructions[b].find("<ImageHere>");
        const auto key = "instr_prompt" + std::to_string(b);
        check(key + "_before_ids", torch::tensor(tokenizer.encode(instructions[b].substr(0, split), false)));
        check(key + "_after_ids", torch::tensor(tokenizer.encode(instructions[b].substr(split + 11), false)));
        Instruction sample;
        sample.questions = {instructions[b]};
        sample.answers = {captions[b]};
        samples.push_back(sample);
      }
      std::vector<std::string> texts;
      for (const auto& c : captions) texts.push_back(c + instr_config.end_sym);
      const auto batch = tokenizer.encode_batch(texts, false, instr_config.max_txt_len, model->pad_id(tokenizer));
      std::vector<torch::Tensor> ids, mask;
      for (size_t b = 0; b < batch.ids.size(); ++b)
        ids.push_back(torch::tensor(batch.ids[b])), mask.push_back(torch::tensor(batch.attention_mask[b]));
      check("instr_to_regress_ids", torch::stack(ids));
      check("instr_to_regress_mask", torch::stack(mask));
      check("pad_embed", model->llama_model->embed(torch::tensor({model->pad_id(tokenizer)})).squeeze(0));
      torch::GradMode::set_enabled(true);
      model->llama_proj->weight.mutable_grad() = torch::Tensor();
      model->llama_proj->bias.mutable_grad() = torch::Tensor();
      const auto out = model->forward_instructions(image, samples, tokenizer);
      check("instr_inputs_embeds", out.inputs_embeds);
      check("instr_attention_mask", out.attention_mask);
      check("instr_targets", out.targets);
      check("instr_loss", out.loss);
      out.loss.backward();
      torch::GradMode::set_enabled(false);
      check("instr_grad_llama_proj_weight", model->llama_proj->weight.grad());
      check("instr_grad_llama_proj_bias", model->llama_proj->bias.grad());
    }

    // Chat: the prompt around the image, its embeddings, the LLM's logits and hidden states.
    const auto& gen = manifest["generation"];
    const std::string chat_prompt = gen["prompt"].get<std::string>();
    const auto split = chat_prompt.find("<ImageHere>");
    check("chat_seg0_ids", torch::tensor(tokenizer.encode(chat_prompt.substr(0, split), true)));
    check("chat_seg1_ids", torch::tensor(tokenizer.encode(chat_prompt.substr(split + 11), false)));
    const int64_t image_index = gen.value("image_index", 0);
    const auto one_image = model->encode_img(image.slice(0, image_index, image_index + 1));
    if (check.expected.count("chat_img_embeds")) check("chat_img_embeds", one_image);
    const auto chat_embs = model->context_embedding(chat_prompt, {one_image}, tokenizer);
    check("chat_embs", chat_embs);
    CausalLMOptions options;
    options.output_hidden_states = true;
    const auto chat = model->llama_model->forward(chat_embs, options);
    check("chat_logits", chat.logits);
    check("chat_hidden_states", stack(chat.hidden_states));

    std::cout << "parity case " << check.case_name << ": " << check.checked << " tensors checked" << std::endl;
    for (const auto& f : check.failures) std::cout << "  FAILED " << f << std::endl;
  }
}
