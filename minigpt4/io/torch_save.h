#pragma once
// torch.save of a nested Python object (dicts, tuples, ints, strings, tensors): the one
// writer of torch.save zips. save_torch_checkpoint (a state dict under one key) and the
// training checkpoints ({"model": ..., "optimizer": ..., "epoch": int, ...}) both use it.
// Floats are not supported (io's pickle writer has no float opcode): store them as 0-d
// tensors.
//
// Crash safety: the file is written as `<path>.tmp.<pid>` in the same folder, flushed and
// fsynced, renamed over `path`, and the folder is fsynced, so `path` is either the old file
// or the whole new one, also after a SIGKILL or a power cut. On any error (a full disk:
// ENOSPC; a file size limit: EFBIG; ...) the temporary is removed, the old `path` is left
// untouched, and the Error names `path` and the system's errno text. A temporary left by a
// process that was killed is never read by anyone (its name is not the real one);
// parse_temporary_name() recognises them for cleaning.
//
// Test-only: MINIGPT4_TEST_SAVE_DELAY_MS=N makes every write to the temporary reach the
// file at once and then sleep N ms (and sleeps N ms more before the rename), so that a test
// killing the process lands inside a save often. Never set it for real runs.
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

// The name torch_save writes `path` under first: "<path>.tmp.<pid>".
std::string temporary_path(const std::string& path, long pid);

// True when `filename` (no folder) is such a temporary: "<final>.tmp.<digits>"; sets the
// final file name and the writer's pid.
bool parse_temporary_name(const std::string& filename, std::string* final_name, long* pid);

}  // namespace minigpt4::io
