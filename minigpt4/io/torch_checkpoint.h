#pragma once
// PyTorch `torch.save` checkpoints (`.pth`, `pytorch_model.bin`) read and written without
// Python. Since torch 1.6 such a file is a zip archive: `<archive>/data.pkl` (a pickle of
// the saved object, tensors referring to storages by persistent id) plus one record
// `<archive>/data/<key>` of raw little-endian bytes per storage.
#include "minigpt4/common/state_dict.h"

#include <string>

namespace minigpt4::io {

// Every tensor in the checkpoint, containers flattened with '/': a LAVIS file
// {'model': {'Qformer.bert...': t}} gives "model/Qformer.bert..."; list elements use their
// index ("optimizer/param_groups/0/..."). Non-tensor leaves (numbers, strings, argparse
// Namespaces, unknown classes) are parsed and left out. A checkpoint that is one bare
// tensor gives a single entry named "". Tensors keep the saved offset/size/stride, so
// views of one storage still share it; storages stored uncompressed (torch.save always
// does) point into a private memory map of the file instead of being copied.
// Errors (legacy pre-1.6 files, corrupt zips, malformed pickles) are minigpt4::Error
// naming the file.
StateDict load_torch_checkpoint(const std::string& path);

// Writes a zip that Python's torch.load reads (also with weights_only=True):
// {wrap_key: OrderedDict(tensors)}, or the bare OrderedDict when wrap_key is empty.
// Tensors sharing a storage are written once and stay views of it. Written as
// `path.tmp.<pid>` and renamed into place.
void save_torch_checkpoint(const std::string& path, const StateDict& tensors, const std::string& wrap_key = "model");

}  // namespace minigpt4::io
