#include "minigpt4/common/config_schema.h"

#include "minigpt4/common/limits.h"
#include "minigpt4/common/run_settings.h"

namespace minigpt4 {

namespace {
using T = ValueType;
}

const std::vector<ConfigKey>& config_schema() {
  static const std::vector<ConfigKey> schema = [] {
    std::vector<ConfigKey> keys = {
        // ---- model: what to build and where its weights are
        {"model.arch", T::String, "model family: minigpt4 (alias mini_gpt4)"},
        {"model.model_type", T::String,
         "picks the defaults file: pretrain_vicuna0 / pretrain_vicuna (Vicuna v0), pretrain_llama2"},
        {"model.vit_model", T::String,
         "EVA ViT-g weights: eva_vit_g.pth or .safetensors (LAVIS names: cls_token, blocks.N...)"},
        {"model.q_former_model", T::String,
         "BLIP-2 checkpoint holding Qformer.*, query_tokens, ln_vision.* (a path; a URL is looked up in "
         "~/.cache/torch/hub/checkpoints)"},
        {"model.llama_model", T::String,
         "Hugging Face LLaMA/Vicuna directory (config.json, tokenizer.model, safetensors or pytorch_model*.bin)"},
        {"model.ckpt", T::String,
         "MiniGPT-4 checkpoint loaded last over everything, e.g. pretrained_minigpt4.pth or a stage-1 checkpoint"},
        {"model.image_size", T::Int, "input image side in pixels (224; 448 for TinyGPT-V stage 4)"},
        {"model.drop_path_rate", T::Float, "ViT stochastic depth (0 in every released config; only 0 is supported)"},
        {"model.use_grad_checkpoint", T::Bool, "ViT gradient checkpointing (frozen ViT: no effect)"},
        {"model.vit_precision", T::String,
         "ViT weights: fp16 (released), bf16 or fp32; fp16 is computed in fp32 on the CPU"},
        {"model.llm_precision", T::String,
         "LLM weights: fp16 (the original's torch_dtype), bf16 or fp32; fp16 is computed in fp32 on the CPU"},
        {"model.freeze_vit", T::Bool, "keep the ViT and ln_vision frozen"},
        {"model.freeze_qformer", T::Bool, "keep the Q-Former and query tokens frozen"},
        {"model.freeze_ln_vision", T::Bool,
         "keep ln_vision frozen (default: as freeze_vit; VPGTrans stage 2 trains it with a frozen ViT)"},
        {"model.freeze_llm", T::Bool,
         "keep the LLM frozen (true in MiniGPT-4; false trains it, e.g. a language warm-up)"},
        {"model.has_qformer", T::Bool, "false: the LLaMA-2 variant, 4 ViT patch tokens concatenated per LLM token"},
        {"model.num_query_token", T::Int, "learned Q-Former queries (32)"},
        {"model.proj_hidden", T::Int,
         "two projections in a row (TinyGPT-V: 4096): llama_proj maps the queries to this width, llama_proj2 on to the "
         "LLM's, no activation between, both trained; 0 or absent: llama_proj alone"},
        {"model.llm_variant", T::String,
         "tinygptv: the Phi LLM as TinyGPT-V's modeling_phi.py builds it (fused query_key_value, q/k LayerNorm, "
         "post-attention RMSNorm; split q/k/v files are fused while loading); absent: as the LLM directory says"},
        {"model.vit_patch_size", T::Int, "ViT patch side (14)"},
        {"model.vit_width", T::Int, "ViT width (1408 for ViT-g)"},
        {"model.vit_depth", T::Int, "ViT blocks used (39: EVA-CLIP-g's last block is dropped)"},
        {"model.vit_num_heads", T::Int, "ViT attention heads (16)"},
        {"model.vit_mlp_ratio", T::Float, "ViT MLP width / width (4.3637 -> 6144)"},
        {"model.qformer_hidden_size", T::Int, "Q-Former width (768, BERT-base)"},
        {"model.qformer_num_layers", T::Int, "Q-Former layers (12)"},
        {"model.qformer_num_heads", T::Int, "Q-Former attention heads (12)"},
        {"model.qformer_intermediate_size", T::Int, "Q-Former feed-forward width (3072)"},
        {"model.cross_attention_freq", T::Int, "Q-Former layers i with i % freq == 0 attend to the image (2)"},
        {"model.max_txt_len", T::Int, "training text tokens kept after truncation (32 stage 1, 160 stage 2)"},
        {"model.end_sym", T::String, "appended to every training caption ('\\n' stage 1, '###' stage 2)"},
        {"model.prompt", T::String, "unused by MiniGPT-4 (kept for LAVIS compatibility)"},
        {"model.prompt_path", T::String, "file of training prompts, one per line, each holding <ImageHere>"},
        {"model.prompt_template", T::String,
         "format applied to each prompt, '{}' is the prompt ('###Human: {} ###Assistant: ')"},
        {"model.low_resource", T::Bool, "load the LLM in 8 bit (chat on small GPUs)"},
        {"model.llm_weight_bits", T::Int,
         "LLM decoder projections in 16 bits (llm_precision), or quantised while loading to 8 or 4 (docs/weights.md)",
         "16"},
        {"model.llm_weight_group_size", T::Int,
         "inputs per scale of 8/4-bit weights: 32, 64 or 128 (0 with 8 bits: one per output channel)", "32"},
        {"model.llm_head_bits", T::Int,
         "lm_head in 16 bits or 8 (groups of 32, quantised while loading); unset: 8 with llm_weight_bits 8 or 4, "
         "else 16 (docs/weights.md)"},
        {"model.vit_weight_bits", T::Int,
         "ViT linear layers in 16 bits (vit_precision), or int8 per output channel, quantised while loading (frozen "
         "ViT only; docs/weights.md)",
         "16"},
        {"model.device_8bit", T::Int, "GPU of the 8-bit LLM"},
        {"model.lora_r", T::Int, "LoRA rank of the LLM adapters (0: none)"},
        {"model.lora_alpha", T::Int, "LoRA alpha"},
        {"model.lora_dropout", T::Float, "LoRA dropout"},
        {"model.lora_target_modules", T::StringList, "LLM linear layers that get adapters"},
        {"model.lora.*.r", T::Int,
         "rank of the LoRA adapter this run creates (named default) on a component: llm, vit or qformer "
         "(docs/lora.md)"},
        {"model.lora.*.lora_alpha", T::Float, "LoRA alpha: the update is scaled by alpha / r (8)"},
        {"model.lora.*.lora_dropout", T::Float, "dropout on the adapter's input while training (0)"},
        {"model.lora.*.target_modules", T::StringList,
         "adapted linear layers: those whose name is or ends with .NAME (llm: q_proj, v_proj; vit, qformer: query, "
         "value)"},
        {"model.lora.*.target_regex", T::String,
         "instead of target_modules: a regular expression matched against the whole module name (PEFT's target_modules "
         "given as one string)"},
        {"model.lora.*.layers", T::StringList,
         "only these layers: indices and ranges such as 0-21 (PEFT's layers_to_transform)"},
        {"model.lora.*.layers_pattern", T::String,
         "the name before the layer index (default llm: layers, vit: blocks, qformer: layer)"},
        {"model.lora.*.use_rslora", T::Bool, "scale by alpha / sqrt(r) instead of alpha / r"},
        {"model.lora_path", T::StringMap,
         "LoRA adapters to load, name -> folder: a PEFT adapter folder, or one holding llm/, ve/ (or vit/), qformer/ "
         "PEFT folders"},
        {"model.lora_active", T::String,
         "the adapter in use after loading, or original (none); default: the created one, else the only loaded one, "
         "else original"},
        {"model.lora_trainable", T::StringList,
         "with model.lora: what trains besides the adapter, as whole dotted parts of parameter names (e.g. llama_proj, "
         "input_layernorm); the projector is frozen otherwise"},
        {"model.stop_token_ids", T::StringList,
         "token ids that end a `chat`/`serve` answer on their own, besides the template's stops (TinyGPT-V's stage-4 "
         "demo stops on 2, '#' in Phi-2's vocabulary)"},
        {"model.repetition_penalty", T::Float,
         "default Hugging Face repetition penalty of `chat`/`serve` answers that do not set one (1.0; TinyGPT-V's demo "
         "uses 1.05)"},
        {"model.conv_template", T::String,
         "chat template of `chat`/`serve`: v0 (CONV_VISION), vicuna0 (CONV_VISION_Vicuna0; TinyGPT-V stages 1-3), "
         "llama2 or minigptv2 (MiniGPT-v2's [INST] template; TinyGPT-V stage 4); default by model_type as demo.py"},
        {"model.bos_token_id", T::String,
         "accepted for TinyGPT-V's eval configs, which set it to '###'; unused (as in the original)"},
        {"model.chat_template", T::Bool,
         "MiniGPT-v2 datasets: wrap single-turn instructions in model.prompt_template too (conversations always are)"},
        {"model.max_context_len", T::Int,
         "MiniGPT-v2 datasets: the prompt with its image embeddings is cut to this many positions (3800)"},
        // ---- preprocess: processors of the model defaults
        {"preprocess.vis_processor.*.name", T::String, "image processor: blip2_image_train or blip2_image_eval"},
        {"preprocess.vis_processor.*.image_size", T::Int, "processor output side"},
        {"preprocess.text_processor.*.name", T::String, "text processor: blip_caption"},
        {"preprocess.text_processor.*.max_words", T::Int, "captions are cut to this many words (50)"},
        {"preprocess.text_processor.*.prompt", T::String, "text prepended by the caption processor"},
        // ---- datasets.<name>
        {"datasets.*.data_type", T::String,
         "images (the default), or text: build_info.storage is a text file, one training text per line (language "
         "warm-up)"},
        {"datasets.*.build_info.storage", T::String, "where the data is: shard list with brace ranges, or a directory"},
        // MiniGPT-v2's multi-task datasets (TinyGPT-V stage 4) name their files as the original
        // configs do; which keys each one reads is in docs/tinygptv.md.
        {"datasets.*.build_info.ann_path", T::String,
         "MiniGPT-v2 datasets: the annotation file (LLaVA, Flickr, TextCaps, unnatural instructions, OCR-VQA), or the "
         "folder holding refcoco/, refcoco+/, refcocog/ (RefCOCO family)"},
        {"datasets.*.build_info.image_path", T::String, "MiniGPT-v2 datasets: the folder the images are in"},
        {"datasets.*.build_info.data_dir", T::String,
         "refvg: the Visual Genome folder (image_data.json, region_descriptions.json, VG_100K/, VG_100K_2/)"},
        {"datasets.*.build_info.dataset", T::String,
         "RefCOCO family: refcoco, refcoco+ or refcocog (inv... accepted: the same files)"},
        {"datasets.*.build_info.splitBy", T::String,
         "RefCOCO family: the refs file, refs(<splitBy>).p (unc, or umd for refcocog)"},
        {"datasets.*.build_info.annotations.*.storage", T::StringList,
         "LAVIS-style datasets (coco_caption, coco_vqa, ok_vqa, aok_vqa, gqa): the annotation file(s) of a split; "
         "`minigpt4 train` reads the train split"},
        {"datasets.*.build_info.annotations.*.url", T::StringList,
         "where the original downloads the annotations; nothing is downloaded here"},
        {"datasets.*.build_info.annotations.*.md5", T::String, "accepted for LAVIS configs; unused"},
        {"datasets.*.build_info.images.storage", T::String, "LAVIS-style datasets: the folder the images are in"},
        {"datasets.*.batch_size", T::Int, "batch size of this dataset"},
        {"datasets.*.sample_ratio", T::Float, "relative probability of drawing a batch from this dataset"},
        {"datasets.*.vis_processor.*.name", T::String,
         "image processor for a split: blip2_image_train / blip2_image_eval"},
        {"datasets.*.vis_processor.*.image_size", T::Int, "processor output side"},
        {"datasets.*.vis_processor.*.min_scale", T::Float, "random resized crop: smallest area fraction (0.5)"},
        {"datasets.*.vis_processor.*.max_scale", T::Float, "random resized crop: largest area fraction (1.0)"},
        {"datasets.*.text_processor.*.name", T::String, "text processor for a split: blip_caption"},
        {"datasets.*.text_processor.*.max_words", T::Int, "captions are cut to this many words"},
        {"datasets.*.text_processor.*.prompt", T::String, "text prepended by the caption processor"},
        // ---- limits: what an input file may make us allocate (common/limits.h, docs/security.md)
        {"limits.max_image_pixels", T::Int,
         "largest decoded image in pixels; bigger ones are refused before decoding (89478485, PIL's "
         "Image.MAX_IMAGE_PIXELS)"},
        {"limits.max_json_depth", T::Int, "deepest nesting a JSON file or request may have (256)"},
        {"limits.max_pickle_depth", T::Int,
         "deepest nesting of values in a .pth file's pickle (1000, Python's recursion limit)"},
        {"limits.max_pickle_items", T::Int,
         "values and container items one .pth pickle may build (5000000, ~170 bytes each)"},
        {"limits.max_safetensors_header_bytes", T::Int,
         "largest safetensors JSON header (100000000, the format's own limit)"},
        {"limits.max_tensors_per_file", T::Int, "tensors one weight file may name (200000)"},
        {"limits.max_decompressed_bytes", T::Int,
         "what one compressed zip record or archive member may inflate to (64 GiB)"},
        {"limits.max_tar_member_bytes", T::Int,
         "largest member of a webdataset tar (256 MiB); larger samples are skipped with a warning"},
        {"limits.max_files_per_sample", T::Int,
         "files one webdataset sample may have (1000); further members of its key are refused"},
        {"limits.max_loader_readahead_bytes", T::Int,
         "encoded images the data loader holds ahead of its workers, per dataset (256 MiB)"},
        {"limits.max_encoded_image_bytes", T::Int, "largest image file, refused before it is read (256 MiB)"},
        {"limits.max_text_file_bytes", T::Int,
         "largest JSON/text file read whole: annotations, tokenizer files, config.json (1 GiB)"},
        {"limits.max_config_bytes", T::Int, "largest YAML config after its aliases are expanded (16 MiB)"},
        {"limits.max_brace_names", T::Int, "names a shard pattern such as {000000..099999} may expand to (10000000)"},
        {"limits.max_brace_bytes", T::Int, "total length of those names (256 MiB)"},
        // ---- evaluation: one benchmark for `minigpt4 evaluate` (docs/evaluation.md)
        {"evaluation.task", T::String, "coco_caption, nocaps, vqav2, okvqa or gqa"},
        {"evaluation.annotations", T::String,
         "the benchmark's annotation file, as `minigpt4 score --annotations` takes it (Karpathy list or COCO/NoCaps "
         "captions; VQA annotations; GQA questions with answers)"},
        {"evaluation.questions", T::String, "vqav2 / okvqa: the questions file (question text and image ids)"},
        {"evaluation.image_root", T::String, "folder the image file names are relative to"},
        {"evaluation.image_file", T::String,
         "image file name of an image id, a Python/fmt format: COCO_val2014_{image_id:012d}.jpg (vqav2, okvqa), "
         "{image_id}.jpg (gqa); captions use the annotations' file names"},
        {"evaluation.vqa_evaluator", T::String,
         "vqav2 / okvqa: 2021 (the official evaluator since GT-Vision-Lab/VQA a013f00) or legacy (the one "
         "LAVIS and MiniGPT-4 copy; BLIP-2's VQAv2-val and OK-VQA numbers)",
         "2021"},
        {"evaluation.prompt", T::String,
         "instruction after the image in the conversation template; VQA prompts hold {question}",
         "by task (docs/evaluation.md)"},
        {"evaluation.max_new_tokens", T::Int, "longest answer in tokens", "30 for captions, 10 for VQA"},
        {"evaluation.num_beams", T::Int, "1: greedy, batched; > 1: beam search, one item at a time", "1"},
        {"evaluation.length_penalty", T::Float,
         "beam search: hypothesis score = sum of log-probabilities / length^length_penalty", "1"},
    };
    // limits.*: the defaults are InputLimits' member initialisers.
    const InputLimits limit_defaults;
    for (auto& key : keys)
      for (const auto& [name, field] : input_limit_fields())
        if (key.pattern == std::string("limits.") + name) key.default_value = std::to_string(limit_defaults.*field);
    // ---- run: the runner (its rows and defaults live with RunSettings)
    for (auto& key : run_settings_schema()) keys.push_back(std::move(key));
    return keys;
  }();
  return schema;
}

const std::vector<DatasetName>& dataset_catalog() {
  // MiniGPT-4's caption data, then MiniGPT-v2's multi-task mix (TinyGPT-V stage 4; the
  // layouts are in minigpt4/datasets/instruction_datasets.h and docs/tinygptv.md).
  static const std::vector<DatasetName> names = [] {
    std::vector<DatasetName> out;
    for (const char* name : {"laion",
                             "cc_sbu",
                             "cc_sbu_align",
                             "text_corpus",
                             "multitask_conversation",
                             "llava_conversation",
                             "llava_detail",
                             "llava_reason",
                             "unnatural_instruction",
                             "refvg",
                             "flickr_grounded_caption",
                             "flickr_CaptionToPhrase",
                             "flickr_ObjectToPhrase",
                             "textcaps_caption",
                             "coco_caption",
                             "refcoco",
                             "refcocop",
                             "refcocog",
                             "invrefcoco",
                             "invrefcocop",
                             "invrefcocog",
                             "coco_vqa",
                             "ok_vqa",
                             "aok_vqa",
                             "gqa",
                             "ocrvqa"})
      out.push_back(DatasetName{name, /*trainable=*/true, /*why_not=*/""});
    return out;
  }();
  return names;
}

const std::vector<std::string>& known_datasets() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& d : dataset_catalog()) out.push_back(d.name);
    return out;
  }();
  return names;
}

const DatasetName* find_dataset_name(const std::string& name) {
  for (const auto& d : dataset_catalog())
    if (d.name == name) return &d;
  return nullptr;
}

std::string value_type_name(ValueType type) {
  switch (type) {
    case ValueType::String: return "a string";
    case ValueType::Int: return "an integer";
    case ValueType::Float: return "a number";
    case ValueType::Bool: return "true or false";
    case ValueType::StringList: return "a list of strings";
    case ValueType::StringMap: return "a map of names to strings";
  }
  return "?";
}

}  // namespace minigpt4
