#!/usr/bin/env python3
"""Writes the seed corpora of the weight-file, config and tokenizer harnesses:

  tests/fuzz/corpus/safetensors/       valid files and hostile headers
  tests/fuzz/corpus/pickle/            torch-style and dataset-style pickles, hostile programs
  tests/fuzz/corpus/torch_checkpoint/  torch.save-style zips (valid, LAVIS-like) and hostile ones
  tests/fuzz/corpus/hf_config/         real config.json / adapter_config.json and hostile ones
  tests/fuzz/corpus/llama_tokenizer/   mode byte + text / ids / tokenizer.model / JSON files
  tests/fuzz/corpus/bpe_tokenizer/     mode byte + text / ids / tokenizer.json / JSON files

Standard library only (torch.save's layout is written by hand: data.pkl pickled with a
stand-in `torch` module, records stored in one folder). Every file is small: a hostile case
claims or expands to something huge, it never is huge on disk.
Run from anywhere: python3 tests/fuzz/make_io_seeds.py
"""
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")


def write(folder, name, data):
    if isinstance(data, str):
        data = data.encode()
    path = os.path.join(HERE, "corpus", folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    assert len(data) <= 100_000, (name, len(data))


def read(*parts):
    with open(os.path.join(DATA, *parts), "rb") as f:
        return f.read()


# ---------------------------------------------------------------- safetensors

def safetensors(header, data=b"", raw_header=None):
    text = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":"))
    text = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds():
    f32 = struct.pack("<4f", 1.0, -2.0, 3.5, 0.0)
    write("safetensors", "valid_f32.safetensors",
          safetensors({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                       "__metadata__": {"format": "pt"}}, f32))
    write("safetensors", "valid_mixed.safetensors",
          safetensors({"a": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
                       "b": {"dtype": "BF16", "shape": [2], "data_offsets": [8, 12]},
                       "c": {"dtype": "U8", "shape": [0], "data_offsets": [12, 12]},
                       "d": {"dtype": "BOOL", "shape": [], "data_offsets": [12, 13]}}, bytes(13)))
    write("safetensors", "empty_header.safetensors", safetensors({}))
    deep = "[" * 20000 + "]" * 20000
    write("safetensors", "deep_dtype.safetensors",
          safetensors(None, bytes(16), '{"w":{"dtype":%s,"shape":[4],"data_offsets":[0,16]}}' % deep))
    write("safetensors", "deep_extra_field.safetensors",
          safetensors(None, bytes(16), '{"w":{"x":%s,"dtype":"F32","shape":[4],"data_offsets":[0,16]}}' % deep))
    write("safetensors", "long_name.safetensors",
          safetensors({"n" * 50000: {"dtype": "Q4", "shape": [], "data_offsets": [0, 0]}}))
    entry = '"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}'
    write("safetensors", "duplicate_key.safetensors", safetensors(None, bytes(16), "{%s,%s}" % (entry, entry)))
    write("safetensors", "duplicate_field.safetensors",
          safetensors(None, bytes(16), '{"w":{"dtype":"F32","dtype":"I32","shape":[4],"data_offsets":[0,16]}}'))
    write("safetensors", "overlap.safetensors",
          safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                       "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(16)))
    write("safetensors", "same_bytes.safetensors",
          safetensors({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                       "b": {"dtype": "I32", "shape": [4], "data_offsets": [0, 16]}}, bytes(16)))
    write("safetensors", "many_empty.safetensors",
          safetensors({"t%d" % i: {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]} for i in range(1500)}))
    write("safetensors", "overflow_shape.safetensors",
          safetensors({"w": {"dtype": "F64", "shape": [2**62, 2**62], "data_offsets": [0, 0]}}))
    write("safetensors", "huge_length.safetensors", struct.pack("<Q", 2**62) + b'{"a":1}')
    write("safetensors", "dims_100.safetensors",
          safetensors({"w": {"dtype": "U8", "shape": [1] * 100, "data_offsets": [0, 1]}}, b"x"))
    write("safetensors", "not_object.safetensors", safetensors(None, b"", "[1,2,3]"))
    write("safetensors", "meta_nested.safetensors", safetensors({"__metadata__": {"a": {"b": [1]}}}))
    write("safetensors", "float_offsets.safetensors",
          safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0.5, 16]}}, bytes(16)))


# ---------------------------------------------------------------- pickles (torch.save's data.pkl)

# A stand-in torch, so the standard pickle module writes the globals torch.save writes.
def install_fake_torch():
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    torch._utils = utils

    def _rebuild_tensor_v2(*args):
        raise NotImplementedError

    def _rebuild_parameter(*args):
        raise NotImplementedError

    for fn in (_rebuild_tensor_v2, _rebuild_parameter):
        fn.__module__, fn.__qualname__ = "torch._utils", fn.__name__
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    utils._rebuild_parameter = _rebuild_parameter
    for name in ("FloatStorage", "HalfStorage", "LongStorage", "BFloat16Storage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
    sys.modules["torch"] = torch
    sys.modules["torch._utils"] = utils
    return torch, utils


TORCH, UTILS = install_fake_torch()


class Storage:
    def __init__(self, kind, key, numel):
        self.kind, self.key, self.numel = kind, key, numel


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        return (UTILS._rebuild_tensor_v2,
                (self.storage, self.offset, tuple(self.size), tuple(self.stride), False, OrderedDict()))


class Parameter:
    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce__(self):
        return (UTILS._rebuild_parameter, (self.tensor, True, OrderedDict()))


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", getattr(TORCH, obj.kind), obj.key, "cpu", obj.numel)
        return None


def dumps(obj, protocol=2):
    out = io.BytesIO()
    Pickler(out, protocol=protocol).dump(obj)
    return out.getvalue()


class Evil:
    """What a malicious checkpoint holds: a reduce to a function that runs a command."""

    def __init__(self, module, name, arg):
        self.module, self.name, self.arg = module, name, arg

    def __reduce__(self):
        fn = types.FunctionType((lambda a: None).__code__, {}, self.name)
        fn.__module__, fn.__qualname__ = self.module, self.name
        sys.modules.setdefault(self.module, types.ModuleType(self.module))
        setattr(sys.modules[self.module], self.name, fn)
        return (fn, (self.arg,))


def lavis_checkpoint(proto=2):
    """{'model': state dict, 'optimizer': ..., 'config': ..., 'scaler': ..., 'epoch': 3}, as LAVIS saves."""
    s0, s1 = Storage("FloatStorage", "0", 6), Storage("LongStorage", "1", 2)
    sd = OrderedDict([("llama_proj.weight", Tensor(s0, 0, [2, 3], [3, 1])),
                      ("llama_proj.bias", Parameter(Tensor(s0, 1, [2], [3])))])
    optimizer = {"state": {0: {"step": 10, "exp_avg": Tensor(s1, 0, [2], [1])}},
                 "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0, 1], "amsgrad": False}]}
    config = {"model": {"arch": "mini_gpt4", "freeze_vit": True, "max_txt_len": 160},
              "run": {"init_lr": 3e-5, "seed": 42, "amp": True}}
    return dumps({"model": sd, "optimizer": optimizer, "config": config,
                  "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0}, "epoch": 3}, proto), \
        {"data/0": struct.pack("<6f", *range(6)), "data/1": struct.pack("<2q", 5, -7)}


def deep_tuple(depth):
    return b"\x80\x02]" + b"\x85" * depth + b"."


def self_list():
    return b"\x80\x02]\x94h\x00h\x00\x86e."[:0] + b"\x80\x02]\x94(h\x00h\x00e."


def dag(levels, bottom=b"]"):
    p = b"\x80\x02" + bottom + b"q\x000"
    for i in range(1, levels + 1):
        p += b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i]) + b"0"
    return p + b"}X\x01\x00\x00\x00xh" + bytes([levels]) + b"s."


def shared_tuple_reduce(items, calls):
    p = b"\x80\x02(" + b"N" * items + b"tq\x000cbuiltins\nset\nq\x010"
    p += b"h\x01h\x00R0" * calls
    return p + b"N."


def pickle_seeds():
    pkl, _ = lavis_checkpoint()
    write("pickle", "lavis_checkpoint.pkl", pkl)
    write("pickle", "lavis_checkpoint_p4.pkl", lavis_checkpoint(4)[0])
    refs = [{"ref_id": i, "ann_id": 100 + i, "image_id": 7, "split": "train",
             "sentences": [{"raw": "the man on the left", "tokens": ["the", "man"]}]} for i in range(5)]
    write("pickle", "refer_refs_p0.pkl", pickle.dumps(refs, protocol=0))
    write("pickle", "refer_refs_p2.pkl", pickle.dumps(refs, protocol=2))
    write("pickle", "deep_tuple.pkl", deep_tuple(5000))
    write("pickle", "deep_list_marks.pkl", b"\x80\x02" + b"(" * 3000 + b"l" * 3000 + b".")
    write("pickle", "self_list.pkl", self_list())
    write("pickle", "dag64.pkl", dag(64))
    write("pickle", "shared_tuple_reduce.pkl", shared_tuple_reduce(5000, 5000))
    write("pickle", "os_system.pkl", dumps(Evil("os", "system", "touch /tmp/pwned")))
    write("pickle", "posix_system.pkl", dumps(Evil("posix", "system", "id")))
    write("pickle", "builtins_eval.pkl", dumps(Evil("builtins", "eval", "__import__('os').system('id')")))
    write("pickle", "subprocess_popen_inst.pkl", b"(S'ls'\nisubprocess\nPopen\n.")
    write("pickle", "stack_global_eval.pkl",
          b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93X\x01\x00\x00\x001\x85R.")
    write("pickle", "reduce_non_global.pkl", b"\x80\x02X\x02\x00\x00\x00osX\x01\x00\x00\x00x\x85R.")
    write("pickle", "bad_int.pkl", b"I12ab\n.")
    write("pickle", "bad_float.pkl", b"Fnot-a-number\n.")
    write("pickle", "bad_memo_key.pkl", b"Ngzz\n.")
    write("pickle", "big_int.pkl", b"I123456789012345678901234567890\n.")
    write("pickle", "ext_code.pkl", b"\x80\x02\x82\x01.")


# ---------------------------------------------------------------- torch.save zips

def torch_zip(pkl, records, archive="archive", compress=None, extra=None):
    """torch.save's layout: <archive>/data.pkl, data/<key>, byteorder, version, ..."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        def add(name, data):
            info = zipfile.ZipInfo(archive + "/" + name, date_time=(1980, 1, 1, 0, 0, 0))
            if compress and name in compress:
                info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
        add("data.pkl", pkl)
        add(".format_version", b"1")
        add(".storage_alignment", b"64")
        add("byteorder", b"little")
        for name, data in records.items():
            add(name, data)
        add("version", b"3\n")
        for name, data in (extra or {}).items():
            add(name, data)
    return out.getvalue()


def patch_central(zip_bytes, name_suffix, field_offset, value):
    """Overwrites a 32-bit field of the central directory header of the record ending in name_suffix."""
    b = bytearray(zip_bytes)
    at = b.find(b"PK\x01\x02")
    while at != -1:
        n = struct.unpack_from("<H", b, at + 28)[0]
        if bytes(b[at + 46:at + 46 + n]).endswith(name_suffix.encode()):
            struct.pack_into("<I", b, at + field_offset, value)
            return bytes(b)
        at = b.find(b"PK\x01\x02", at + 4)
    raise KeyError(name_suffix)


def torch_checkpoint_seeds():
    pkl, records = lavis_checkpoint()
    write("torch_checkpoint", "lavis_checkpoint.pth", torch_zip(pkl, records))
    write("torch_checkpoint", "lavis_checkpoint_deflated.pth",
          torch_zip(pkl, records, compress={"data.pkl", "data/0", "data/1"}))
    write("torch_checkpoint", "bare_tensor.pth",
          torch_zip(dumps(Tensor(Storage("HalfStorage", "0", 3), 0, [3], [1])), {"data/0": bytes(6)}))
    write("torch_checkpoint", "os_system.pth",
          torch_zip(dumps({"model": OrderedDict(), "args": Evil("os", "system", "touch /tmp/pwned")}), {}))
    write("torch_checkpoint", "dag64.pth", torch_zip(dag(64), {}))
    bottom = b"](" + dumps(Tensor(Storage("FloatStorage", "0", 1), 0, [1], [1]))[2:-1] + b"e"
    write("torch_checkpoint", "dag64_tensor.pth", torch_zip(dag(64, bottom), {"data/0": bytes(4)}))
    # A zip bomb: 4 MiB of deflated zeros where 4 floats are wanted.
    one = dumps({"w": Tensor(Storage("FloatStorage", "0", 4), 0, [4], [1])})
    write("torch_checkpoint", "bomb_small_need.pth", torch_zip(one, {"data/0": bytes(4 << 20)}, compress={"data/0"}))
    # A record claiming 4 GiB from a few bytes.
    liar = torch_zip(one, {"data/0": bytes(16)}, compress={"data/0"})
    write("torch_checkpoint", "liar_4gib.pth", patch_central(liar, "data/0", 24, 0xFFFFFFF0))
    # A version record claiming 1 GiB (the zip reader inflates it when it opens the archive).
    write("torch_checkpoint", "version_bomb.pth",
          patch_central(torch_zip(one, {"data/0": bytes(16)}, compress={"data.pkl", "version"}), "/version", 24,
                        1 << 30))
    good = torch_zip(one, {"data/0": bytes(16)})
    pkl_size = len(one)
    write("torch_checkpoint", "overlap_next.pth",
          patch_central(patch_central(good, "data.pkl", 20, pkl_size + 100), "data.pkl", 24, pkl_size + 100))
    write("torch_checkpoint", "overlap_directory.pth",
          patch_central(patch_central(good, "/version", 20, 1 << 20), "/version", 24, 1 << 20))
    # Two directory entries for one local header.
    b = bytearray(good)
    heads = []
    at = b.find(b"PK\x01\x02")
    while at != -1:
        heads.append(at)
        at = b.find(b"PK\x01\x02", at + 4)
    struct.pack_into("<I", b, heads[-1] + 42, struct.unpack_from("<I", b, heads[0] + 42)[0])
    write("torch_checkpoint", "shared_local_header.pth", bytes(b))
    write("torch_checkpoint", "spare_bytes.pth", torch_zip(one, {"data/0": bytes(20)}))
    write("torch_checkpoint", "missing_record.pth", torch_zip(one, {}))
    big_key = dumps({"w": Tensor(Storage("FloatStorage", "k" * 20000, 1), 0, [1], [1])})
    write("torch_checkpoint", "long_key.pth", torch_zip(big_key, {}))
    wide = dumps({"w": Tensor(Storage("FloatStorage", "0", 1), 0, [2**30] * 3, [0] * 3)})
    write("torch_checkpoint", "numel_overflow.pth", torch_zip(wide, {"data/0": bytes(4)}))
    write("torch_checkpoint", "not_in_folder.pth", good.replace(b"archive/", b"archive_"))
    write("torch_checkpoint", "deep_pickle.pth", torch_zip(deep_tuple(5000), {}))
    write("torch_checkpoint", "legacy_pickle.pth", b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.")


# ---------------------------------------------------------------- config.json

def hf_config_seeds():
    write("hf_config", "vicuna_config.json", read("parity", "tiny_vicuna0", "vicuna", "config.json"))
    write("hf_config", "phi2_config.json", read("parity", "tiny_phi2", "phi2", "config.json"))
    write("hf_config", "llama_gqa_config.json", read("hf_llama_gqa", "config.json"))
    for root, _, files in os.walk(os.path.join(DATA, "lora")):
        for f in files:
            if f == "adapter_config.json":
                write("hf_config", "adapter_config_%s.json" % os.path.basename(root), read(os.path.join(root, f)))
    base = json.loads(read("parity", "tiny_vicuna0", "vicuna", "config.json"))
    phi = json.loads(read("parity", "tiny_phi2", "phi2", "config.json"))

    def variant(name, cfg, **changes):
        c = dict(cfg)
        c.update(changes)
        write("hf_config", name, json.dumps(c))

    variant("zero_kv_heads.json", base, num_key_value_heads=0)
    variant("zero_heads.json", base, num_attention_heads=0)
    variant("negative_hidden.json", base, hidden_size=-64)
    variant("huge_vocab.json", base, vocab_size=2**63 + 5)
    variant("rope_scaling_string.json", base, rope_scaling="linear")
    variant("rope_scaling_type_number.json", base, rope_scaling={"type": 5, "factor": 2.0})
    variant("hidden_act_nested.json", base, hidden_act=json.loads("[" * 200 + "]" * 200))
    variant("nan_eps.json", base, rms_norm_eps=float("nan"))
    variant("phi_zero_heads.json", phi, num_attention_heads=0)
    variant("phi_zero_kv.json", phi, num_key_value_heads=0)
    variant("phi_rope_type_number.json", phi, rope_scaling={"rope_type": [1]})
    variant("phi_partial_nan.json", phi, partial_rotary_factor=float("nan"))
    variant("phi_msft_zero_heads.json", {"model_type": "phi-msft", "vocab_size": 512, "n_embd": 64, "n_layer": 2,
                                         "n_head": 0, "n_inner": None, "rotary_dim": 6})
    write("hf_config", "peft_type_number.json", json.dumps({"peft_type": 5, "r": 8}))
    write("hf_config", "peft_rank_pattern_float.json",
          json.dumps({"peft_type": "LORA", "r": 8, "rank_pattern": {"q_proj": 2.5}}))
    write("hf_config", "deep.json", "[" * 50000 + "]" * 50000)
    write("hf_config", "python_literals.json", '{"a": NaN, "b": [Infinity, -Infinity], "hidden_size": NaN}')
    write("hf_config", "not_object.json", "[1, 2, 3]")


# ---------------------------------------------------------------- tokenizers

def tokenizer_seeds():
    text = "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to you."
    write("llama_tokenizer", "text_plain", b"\x00" + text.encode())
    write("llama_tokenizer", "text_specials", b"\x00<s> hi </s><unk>\xe2\x96\x81  \t\n\xff\xfe\xc3\x28 \xf0\x9f\x98\x80")
    write("llama_tokenizer", "ids", b"\x01" + struct.pack("<8h", 1, 2, 0, 999, 1000, -1, 32767, 5))
    write("llama_tokenizer", "model_fixture", b"\x02" + read("parity", "tiny_vicuna0", "tokenizer.model"))
    write("llama_tokenizer", "model_garbage", b"\x02not a sentencepiece model")
    write("llama_tokenizer", "config_good", b"\x03" + json.dumps(
        {"add_bos_token": True, "bos_token": {"content": "<s>", "lstrip": False}, "pad_token": None}).encode())
    write("llama_tokenizer", "config_lstrip_string", b"\x03" + json.dumps(
        {"bos_token": {"content": "<s>", "lstrip": "yes"}}).encode())
    write("llama_tokenizer", "config_content_number", b"\x03" + json.dumps({"eos_token": {"content": 5}}).encode())
    write("llama_tokenizer", "config_not_object", b"\x03[1, 2]")
    write("llama_tokenizer", "config_deep", b"\x03" + b"[" * 20000)
    write("llama_tokenizer", "added_good", b"\x04" + json.dumps({"<pad>": 1000, "###": 1001}).encode())
    write("llama_tokenizer", "added_string_id", b"\x04" + json.dumps({"<pad>": "1000"}).encode())
    write("llama_tokenizer", "added_huge_id", b"\x04" + json.dumps({"<pad>": 2**63 - 1}).encode())

    bpe = ("tokenizer", "bpe", "tiny_codegen")
    write("bpe_tokenizer", "text_plain", b"\x00Hello world, don't stop 1234  \n\t<|endoftext|>")
    write("bpe_tokenizer", "text_invalid_utf8", b"\x00\xff\xfe\xc3\x28 \xe2\x82 \xf0\x9f\x98\x80 abc")
    write("bpe_tokenizer", "ids", b"\x01" + struct.pack("<8h", 0, 1, 50, 200, 255, -1, 32767, 3))
    write("bpe_tokenizer", "tokenizer_json_fixture", b"\x02" + read(*bpe, "tokenizer.json"))
    tj = json.loads(read(*bpe, "tokenizer.json"))

    def tokenizer_json(name, change):
        t = json.loads(json.dumps(tj))
        change(t)
        write("bpe_tokenizer", name, b"\x02" + json.dumps(t).encode())

    tokenizer_json("tj_normalizer_string", lambda t: t.update(normalizer="NFC"))
    tokenizer_json("tj_pre_type_number", lambda t: t.update(pre_tokenizer={"type": 5}))
    tokenizer_json("tj_pre_list", lambda t: t.update(pre_tokenizer=[1, 2]))
    tokenizer_json("tj_model_type_number", lambda t: t["model"].update(type=7))
    tokenizer_json("tj_merge_number", lambda t: t["model"].update(merges=[5]))
    tokenizer_json("tj_added_content_number", lambda t: t.update(added_tokens=[{"id": 3, "content": 4}]))
    write("bpe_tokenizer", "tj_deep", b"\x02" + b"{\"a\":" * 10000)
    write("bpe_tokenizer", "config_fixture", b"\x03" + read(*bpe, "tokenizer_config.json"))
    write("bpe_tokenizer", "config_decoder_huge_key", b"\x03" + json.dumps(
        {"added_tokens_decoder": {"99999999999999999999999": {"content": "x"}}}).encode())
    write("bpe_tokenizer", "config_bos_number", b"\x03" + json.dumps({"bos_token": 5}).encode())
    write("bpe_tokenizer", "config_clean_up_string", b"\x03" + json.dumps({"clean_up_tokenization_spaces": "x"}).encode())
    write("bpe_tokenizer", "added_fixture", b"\x04" + read(*bpe, "added_tokens.json"))
    write("bpe_tokenizer", "added_string_id", b"\x04" + json.dumps({"<x>": "5"}).encode())


if __name__ == "__main__":
    safetensors_seeds()
    pickle_seeds()
    torch_checkpoint_seeds()
    hf_config_seeds()
    tokenizer_seeds()
