#include "minigpt4/tokenizer/gguf_vocab.h"

#include "minigpt4/common/error.h"
#include "minigpt4/io/gguf.h"

#include <cstring>

namespace minigpt4 {

namespace {

// The protobuf wire format, just what a ModelProto needs (sentencepiece_model.proto):
// a field is a varint key (number << 3 | wire type) and then its value.
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) out.push_back(static_cast<char>((v & 0x7F) | 0x80)), v >>= 7;
  out.push_back(static_cast<char>(v));
}
void put_int(std::string& out, int field, int64_t v) {
  put_varint(out, static_cast<uint64_t>(field) << 3 | 0);
  put_varint(out, static_cast<uint64_t>(v));  // negative ints take ten bytes, as protobuf writes them
}
void put_float(std::string& out, int field, float v) {
  put_varint(out, static_cast<uint64_t>(field) << 3 | 5);
  char bytes[4];
  std::memcpy(bytes, &v, 4);  // little-endian, as GGUF itself
  out.append(bytes, 4);
}
void put_bytes(std::string& out, int field, const std::string& v) {
  put_varint(out, static_cast<uint64_t>(field) << 3 | 2);
  put_varint(out, v.size());
  out += v;
}

// sentencepiece_model.proto's field numbers.
enum ModelProto { kPieces = 1, kTrainerSpec = 2, kNormalizerSpec = 3 };
enum Piece { kPiece = 1, kScore = 2, kType = 3 };
enum TrainerSpec {
  kModelType = 3,
  kVocabSize = 4,
  kByteFallback = 35,
  kUnkId = 40,
  kBosId = 41,
  kEosId = 42,
  kPadId = 43,
  kUnkPiece = 45,
  kBosPiece = 46,
  kEosPiece = 47
};
enum NormalizerSpec { kName = 1, kAddDummyPrefix = 3, kRemoveExtraWhitespaces = 4, kEscapeWhitespaces = 5 };
constexpr int kBpe = 2;
// Piece types: llama.cpp's token_type values are sentencepiece's own.
constexpr int64_t kNormal = 1, kUnknown = 2, kByte = 6;

const nlohmann::json& array_of(const io::GgufFile& gguf, const char* key, size_t size, const char* what) {
  const auto& v = gguf.at(key);
  if (!v.is_array()) fail("{}: metadata '{}' must be an array of {}", gguf.path, key, what);
  if (size && v.size() != size) fail("{}: metadata '{}' has {} entries for {} tokens", gguf.path, key, v.size(), size);
  return v;
}

int64_t token_id(const io::GgufFile& gguf, const char* key, int64_t fallback, size_t vocab) {
  if (!gguf.metadata.contains(key)) return fallback;
  const auto& v = gguf.metadata.at(key);
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<uint64_t>() >= vocab)
    fail("{}: metadata '{}' must be a token id below {}, got {}", gguf.path, key, vocab, v.dump());
  return v.get<int64_t>();
}

bool flag(const io::GgufFile& gguf, const char* key, bool fallback) {
  if (!gguf.metadata.contains(key)) return fallback;
  const auto& v = gguf.metadata.at(key);
  if (!v.is_boolean()) fail("{}: metadata '{}' must be a boolean, got {}", gguf.path, key, v.dump());
  return v.get<bool>();
}

}  // namespace

std::string sentencepiece_model_from_gguf(const io::GgufFile& gguf) {
  const auto& model = gguf.at("tokenizer.ggml.model");
  if (model != "llama")
    fail(
        "{}: the GGUF's vocabulary is {} (tokenizer.ggml.model); this build reads the sentencepiece-style "
        "\"llama\" vocabulary (or a tokenizer.model beside the file)",
        gguf.path, model.dump());
  const auto& tokens = array_of(gguf, "tokenizer.ggml.tokens", 0, "strings");
  const size_t n = tokens.size();
  if (n == 0) fail("{}: metadata 'tokenizer.ggml.tokens' is empty", gguf.path);
  const auto& scores = array_of(gguf, "tokenizer.ggml.scores", n, "floats");
  const nlohmann::json no_types;
  const auto& types = gguf.metadata.contains("tokenizer.ggml.token_type")
                          ? array_of(gguf, "tokenizer.ggml.token_type", n, "integers")
                          : no_types;

  std::string proto;
  bool byte_fallback = false;
  int64_t unk = -1;
  for (size_t i = 0; i < n; ++i) {
    if (!tokens[i].is_string()) fail("{}: token {} of 'tokenizer.ggml.tokens' is not a string", gguf.path, i);
    if (!scores[i].is_number()) fail("{}: score {} of 'tokenizer.ggml.scores' is not a number", gguf.path, i);
    const int64_t type = types.is_array() ? (types[i].is_number_integer() ? types[i].get<int64_t>() : -1) : kNormal;
    if (type < kNormal || type > kByte)
      fail("{}: token {} has type {} in 'tokenizer.ggml.token_type' (sentencepiece's are 1-6)", gguf.path, i,
           types[i].dump());
    byte_fallback |= type == kByte;
    if (type == kUnknown && unk < 0) unk = static_cast<int64_t>(i);
    std::string piece;
    put_bytes(piece, kPiece, tokens[i].get_ref<const std::string&>());
    put_float(piece, kScore, scores[i].get<float>());
    if (type != kNormal) put_int(piece, kType, type);
    put_bytes(proto, kPieces, piece);
  }
  unk = token_id(gguf, "tokenizer.ggml.unknown_token_id", unk < 0 ? 0 : unk, n);
  const int64_t bos = token_id(gguf, "tokenizer.ggml.bos_token_id", 1, n);
  const int64_t eos = token_id(gguf, "tokenizer.ggml.eos_token_id", 2, n);
  const auto piece = [&](int64_t id) { return tokens[static_cast<size_t>(id)].get<std::string>(); };

  std::string trainer;
  put_int(trainer, kModelType, kBpe);
  put_int(trainer, kVocabSize, static_cast<int64_t>(n));
  put_int(trainer, kByteFallback, byte_fallback);
  put_int(trainer, kUnkId, unk);
  put_int(trainer, kBosId, bos);
  put_int(trainer, kEosId, eos);
  put_int(trainer, kPadId, -1);  // MiniGPT-4 pads with eos
  put_bytes(trainer, kUnkPiece, piece(unk));
  put_bytes(trainer, kBosPiece, piece(bos));
  put_bytes(trainer, kEosPiece, piece(eos));
  put_bytes(proto, kTrainerSpec, trainer);

  std::string normalizer;  // LLaMA's: no normalisation, a space before the text, spaces as U+2581
  put_bytes(normalizer, kName, "identity");
  put_int(normalizer, kAddDummyPrefix, flag(gguf, "tokenizer.ggml.add_space_prefix", true));
  put_int(normalizer, kRemoveExtraWhitespaces, 0);
  put_int(normalizer, kEscapeWhitespaces, 1);
  put_bytes(proto, kNormalizerSpec, normalizer);
  return proto;
}

}  // namespace minigpt4
