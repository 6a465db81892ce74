#pragma once
// torch.save of a nested Python object (dicts, tuples, ints, strings, tensors): the one
// writer of torch.save zips. save_torch_checkpoint (a state dict under one key) and the
// training checkpoints ({"model": ..., "optimizer": ..., "epoch": int, ...}) both use it.
// Floats are not supported (io's pickle writer has no float opcode): store them as 0-d
// tensors. The file is written as `path.tmp.<pid>`, fsynced and renamed into place.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace minigpt4::io {

struct PyValue {
  enum class Kind { None, Int, String, Tensor, Dict, OrderedDict, Tuple };
  Kind kind = Kind::None;
  int64_t integer = 0;
  std::string text;
  at::Tensor tensor;
  std::vector<std::string> keys;  // Dict / OrderedDict: keys[i] -> items[i]
  std::vector<PyValue> items;     // Dict / OrderedDict values, Tuple elements

  static PyValue none() { return PyValue{}; }
  static PyValue of(int64_t v);
  static PyValue of(std::string s);
  static PyValue of(at::Tensor t);
  static PyValue dict(Kind kind = Kind::Dict);
  static PyValue tuple(std::vector<PyValue> items);
  PyValue& set(std::string key, PyValue value);  // Dict / OrderedDict: append an entry
};

void torch_save(const std::string& path, const PyValue& object);

}  // namespace minigpt4::io
