#pragma once
// A GGUF file's own LLaMA vocabulary (tokenizer.ggml.*, "llama" = sentencepiece) as a
// sentencepiece model: llama.cpp's converter copies tokenizer.model's pieces, scores and
// types into the file, so the model can be written back and loaded by sentencepiece itself.
#include <string>

namespace minigpt4 {

namespace io {
struct GgufFile;
}

// The serialized sentencepiece ModelProto (a BPE model with byte fallback where the
// vocabulary has byte pieces) for SentencePieceProcessor::LoadFromSerializedProto. Throws
// minigpt4::Error naming the file and key for a missing, mis-typed or inconsistent
// vocabulary, or one that is not sentencepiece-style ("gpt2" BPE and the like).
std::string sentencepiece_model_from_gguf(const io::GgufFile& gguf);

}  // namespace minigpt4
