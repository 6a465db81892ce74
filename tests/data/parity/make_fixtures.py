#!/usr/bin/env python3
"""Golden parity fixtures for minigpt4-cpp, produced by the ORIGINAL Python code.

The reference code it
runs (MiniGPT-4, transformers, huggingface_hub) is fetched into a private directory
(default /tmp/refenv; the exact commits are in PINS below, and the manifests record them)
and imported from there at run time; nothing of it is copied into the repo.  What the script writes is data:
safetensors / .pth / json / sentencepiece models / images.

Stages (each runs in its own process because the cases use different
transformers versions):

    python3 make_fixtures.py setup      # write small private stubs into $REFENV/stubs
    python3 make_fixtures.py case-a     # parity/tiny_vicuna0
    python3 make_fixtures.py case-b     # parity/tiny_llama2_example (LLaMA-2, GQA)
    python3 make_fixtures.py case-c     # parity/tiny_phi2
    python3 make_fixtures.py case-d     # parity/tiny_llama2_noqformer (MiniGPT-4 ef1ac08,
                                        #   LLaMA-2 variant without Q-Former)
    python3 make_fixtures.py check-d    # reload case D's files and re-run its pieces
    python3 make_fixtures.py spec-d     # independent re-implementation of case D
    python3 make_fixtures.py check      # check-a/b/d + spec-a/b/c/d
    python3 make_fixtures.py all        # setup + every case + check

This copy lives in the project at tests/data/parity/make_fixtures.py; by default the cases
are written under the folder above this script (so `parity/<case>` is next to it), or
under $MINIGPT4_FIXTURE_OUT.  Case D needs, besides the README's checkouts, the two PyPI
wheels MiniGPT-4 ef1ac08 pins (see PINS["tf428_pypi"] / PINS["hub0134"]), unpacked into
$REFENV/tf428_pypi and $REFENV/hub0134:

    pip download --no-deps --only-binary=:all: transformers==4.28.0 huggingface_hub==0.13.4 -d $REFENV/wheels
    python3 -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
        $REFENV/wheels/transformers-4.28.0-py3-none-any.whl $REFENV/tf428_pypi
    python3 -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
        $REFENV/wheels/huggingface_hub-0.13.4-py3-none-any.whl $REFENV/hub0134

Case B runs transformers from the 4.31.0 wheel (PINS["tf431_pypi"]; the first release with
LLaMA grouped-query attention) instead of a checkout of commit 07360b6c9, with the
huggingface_hub v0.14.1 source checkout (PINS["hub"], `git archive v0.14.1 src/huggingface_hub`
into $REFENV/hub0141); the photos are reused from parity/tiny_vicuna0/image_processor:

    pip download --no-deps --only-binary=:all: transformers==4.31.0 -d $REFENV/wheels
    python3 -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
        $REFENV/wheels/transformers-4.31.0-py3-none-any.whl $REFENV/tf431_pypi

Use Debian's interpreter (/usr/bin/python3) with python3-torch 1.13.1 etc.
"""
import argparse
import copy
import functools
import glob
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import types
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
# cases are written under this directory (`parity/<case>`): default = the folder above this
# script, i.e. tests/data of the project, so that the cases land next to this file
OUT_ROOT = os.path.abspath(os.environ.get("MINIGPT4_FIXTURE_OUT", os.path.dirname(HERE)))
DEFAULT_REFENV = os.environ.get("MINIGPT4_REFENV", "/tmp/refenv")

# --------------------------------------------------------------------------------------
# Reference code versions (checked out with `git archive` into $REFENV, see README.md)
# --------------------------------------------------------------------------------------
PINS = {
    "minigpt4": {
        "repo": "Vision-CAIR/MiniGPT-4",
        "commit": "bbd7883d1ce255e1d58b1b884ceae70d023d816c",
        "date": "2023-08-15",
        "dir": "minigpt4_bbd7883",
        "note": "last commit of the original Vicuna-v0 MiniGPT-4 code (mini_gpt4.py, own "
                "modeling_llama.py, CONV_VISION); mini_gpt4.py here is byte-identical to the "
                "April 2023 release (322ed18)",
    },
    "minigpt4_llama2": {
        "repo": "Vision-CAIR/MiniGPT-4",
        "commit": "ef1ac08ce3f2835b3aad09c7e81adea976432062",
        "date": "2023-09-17",
        "dir": "minigpt4_ef1ac08",
        "note": "last commit before the MiniGPT-v2 refactor; only its conversation.py is used "
                "(CONV_VISION_Vicuna0 / CONV_VISION_LLama2 templates)",
    },
    "tf428_pypi": {
        "repo": "huggingface/transformers",
        "pypi": "transformers==4.28.0",
        "wheel": "transformers-4.28.0-py3-none-any.whl",
        "wheel_sha256": "359a38860ded57a97b4ad9a9889465393e9e05a5de0824863607c85298cba0cd",
        "version": "4.28.0",
        "dir": "tf428_pypi",
        "note": "the exact release MiniGPT-4 ef1ac08's environment.yml pins (transformers==4.28.0); "
                "its LlamaForCausalLM has no grouped-query attention (num_key_value_heads does not "
                "exist before 4.31) -- case D",
    },
    "hub0134": {
        "repo": "huggingface/huggingface_hub",
        "pypi": "huggingface_hub==0.13.4",
        "wheel": "huggingface_hub-0.13.4-py3-none-any.whl",
        "wheel_sha256": "4d3d40593de6673d624a4baaaf249b9bf5165bfcafd1ad58de361931f0b4fda5",
        "version": "0.13.4",
        "dir": "hub0134",
        "note": "the release MiniGPT-4 ef1ac08's environment.yml pins -- case D",
    },
    "tf428": {
        "repo": "huggingface/transformers",
        "commit": "50f82e12823ef8844b45a0dd864a78eea80de879",
        "version": "4.28.0.dev0",
        "dir": "tf428/src",
        "note": "main-branch commit from which the v4.28 release branch was cut (parent of "
                "'v4.29.0.dev0'); MiniGPT-4 pins transformers==4.28.0",
    },
    "tf431": {
        "repo": "huggingface/transformers",
        "commit": "07360b6c9c9448d619a82798419ed291dfc6ac8f",
        "version": "4.32.0.dev0 (main-branch equivalent of v4.31.0 for LLaMA)",
        "dir": "tf_llama2/src",
        "note": "main-branch commit '[Llama2] Add support for Llama 2 (#24891)', 2023-07-18: the "
                "LLaMA grouped-query attention (num_key_value_heads) that v4.31.0 shipped as a "
                "cherry-pick; one day after the v4.31 release-branch cut (49eb357)",
    },
    "tf431_pypi": {
        "repo": "huggingface/transformers",
        "pypi": "transformers==4.31.0",
        "wheel": "transformers-4.31.0-py3-none-any.whl",
        "wheel_sha256": "8487aab0195ce1c2a5ae189305118b9720daddbc7b688edb09ccd79e3b149f6b",
        "version": "4.31.0",
        "dir": "tf431_pypi",
        "note": "the first release with LLaMA grouped-query attention (num_key_value_heads), "
                "shipped from commit 07360b6c9 ('[Llama2] Add support for Llama 2', see "
                "PINS['tf431']); used for case B in place of that commit's source checkout",
    },
    "tf437": {
        "repo": "huggingface/transformers",
        "commit": "db9a7e9d3dbd1b595f004597a0502cce0a96135a",
        "version": "4.37.0.dev0",
        "dir": "tf437/src",
        "note": "main-branch commit from which the v4.37 release branch was cut (parent of "
                "'v4.38.dev.0', 2024-01-19): first release whose PhiForCausalLM uses the "
                "q_proj/k_proj/v_proj/dense names of the current microsoft/phi-2 checkpoints",
    },
    "hub0194": {
        "repo": "huggingface/huggingface_hub",
        "tag": "v0.19.4",
        "commit": "a0ca2baf1b1346018b85cc151a04063ec20fc2aa",
        "dir": "hub0194/src",
    },
    "hub": {
        "repo": "huggingface/huggingface_hub",
        "tag": "v0.14.1",
        "commit": "bf2b9ca92074cfd1252095dba5391b13be733e5d",
        "dir": "hub0141/src",
    },
    "mate_backgrounds": {
        "debian_package": "mate-backgrounds",
        "version": "1.26.0-1",
        "dir": "imgsrc/x/usr/share/backgrounds/mate",
        "license": "GPL-2+ (see /usr/share/doc/mate-backgrounds/copyright of that package)",
    },
}

# --------------------------------------------------------------------------------------
# Case definitions
# --------------------------------------------------------------------------------------
PROMPT_TEMPLATE = "###Human: {} ###Assistant: "

CASES = {
    "a": {
        "name": "tiny_vicuna0",
        "outdir": "parity/tiny_vicuna0",
        "tf": "tf428",
        "llm_impl": "minigpt4",  # MiniGPT-4's own minigpt4/models/modeling_llama.py
        "seed": 20230423,
        "image_size": 56,
        "vit": {"width": 64, "depth": 3, "heads": 4, "mlp_ratio": 4.3637, "patch": 14},
        "qformer": {"hidden": 48, "layers": 2, "heads": 4, "intermediate": 96,
                    "cross_attention_freq": 2, "num_query_token": 8, "vocab_size": 128,
                    "max_position_embeddings": 512},
        "llama": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": None, "intermediate": 176,
                  "rms_eps": 1e-6, "max_position_embeddings": 2048},
        "vocab_size": 1000,
        "batch_photos": ["ladybird_640x400.jpg", "twowings_333x500.jpg"],
        "captions": [
            "A red ladybird sits on a leaf.",
            "A brown butterfly with open wings rests on a thin stem in a sunny garden, while "
            "the background is blurred into soft shades of green and yellow, and two more "
            "insects can be seen far away near the flowers on the left side of the picture.",
        ],
        "chat": {"messages_before": [], "question": "What is in this image?"},
        "image_processor": True,
    },
    "b": {
        # An example of a further case: transformers' LlamaForCausalLM as in LLaMA-2
        # (grouped-query attention). Copy and change sizes, seed and texts to make more.
        "name": "tiny_llama2_example",
        "outdir": "parity/tiny_llama2_example",
        "tf": "tf431_pypi",  # transformers 4.31.0 wheel (GQA), see PINS
        "llm_impl": "transformers",
        "seed": 424242,
        "image_size": 70,
        "vit": {"width": 32, "depth": 2, "heads": 2, "mlp_ratio": 4.3637, "patch": 14},
        "qformer": {"hidden": 40, "layers": 2, "heads": 2, "intermediate": 64,
                    "cross_attention_freq": 2, "num_query_token": 6, "vocab_size": 96,
                    "max_position_embeddings": 512},
        "llama": {"hidden": 80, "layers": 2, "heads": 4, "kv_heads": 1, "intermediate": 200,
                  "rms_eps": 1e-5, "max_position_embeddings": 4096},
        "vocab_size": 700,
        "batch_photos": ["ladybird_640x400.jpg", "arc_colors_rgba_357x200.png"],
        "captions": [
            "A beetle on a leaf.",
            "Bright arcs of colour cross a dark picture from one corner to the other.",
        ],
        "chat": {
            "messages_before": [["Human", "<Img><ImageHere></Img> Describe the picture."],
                                ["Assistant", "A small red beetle."]],
            "question": "Where is it?",
        },
        "image_processor": False,
    },
}

# Case D: MiniGPT-4's LLaMA-2 variant (ef1ac08, has_qformer False), run by ef1ac08's own code
# with the transformers release it pins (4.28.0: no grouped-query attention exists there).
PROMPT_TEMPLATE_LLAMA2 = "[INST] {} [/INST] "
CASES["d"] = {
    "name": "tiny_llama2_noqformer",
    "outdir": "parity/tiny_llama2_noqformer",
    "tf": "tf428_pypi",
    "hub": "hub0134",
    "minigpt4": "minigpt4_llama2",
    "llm_impl": "transformers",
    # the HF LLaMA directory keeps tiny_vicuna0's name so that one reader handles both cases
    "hf_dir": "vicuna",
    "seed": 20230917,
    # 84 / 14 = 6: a 6x6 patch grid = 36 patches -> 9 image tokens; 6 is not a multiple of 4,
    # so most 4-patch groups span two patch rows (flat raster grouping, not 2x2 squares)
    "image_size": 84,
    "vit": {"width": 32, "depth": 2, "heads": 2, "mlp_ratio": 4.3637, "patch": 14},
    "llama": {"hidden": 48, "layers": 2, "heads": 4, "kv_heads": None, "intermediate": 128,
              "rms_eps": 1e-5, "max_position_embeddings": 4096},
    "vocab_size": 600,
    # lm_head row of eos (id 2) multiplied by this after drawing, so that the greedy chat answer
    # of this tiny random model ends with eos after a few tokens (shows the eos stop)
    "eos_row_scale": 2.05,
    "batch_photos": ["twowings_333x500.jpg", "freshflower_gray_97x73.jpg"],
    "captions": [
        "A butterfly rests on a thin stem.",
        "A pale flower in grey tones fills most of the small picture, with soft petals around "
        "a darker centre and a blurred background that hides every other detail of the garden.",
    ],
    # per-sample instructions of different lengths (samples["instruction_input"], prompt_list
    # empty): exercises prompt_wrap's padding with the pad embedding
    "instructions": [
        PROMPT_TEMPLATE_LLAMA2.format("<Img><ImageHere></Img> Describe this image."),
        PROMPT_TEMPLATE_LLAMA2.format("<Img><ImageHere></Img> What can you see in this picture? "
                                      "Answer in one short sentence."),
    ],
    "chat": {
        "messages_before": [["Human", "<Img><ImageHere></Img> Describe the picture."],
                            ["Assistant", "A butterfly on a thin stem."]],
        "question": "What colour are its wings?",
    },
    "max_new_tokens": 16,
    "image_processor": False,
}

TOKENIZER_STRINGS_LLAMA2 = [
    "$$",
    "costs $$ 5",
    "A butterfly rests on a thin stem.</s>",
    "A butterfly rests on a thin stem.\n",
    "[INST] <Img><ImageHere></Img> Describe this image in detail. [/INST] ",
    "Please answer my questions.<s>[INST] <Img>",
    "</Img> What colour is it? [/INST] ",
    " [/INST] A butterfly.<s>[INST] Where is it? [/INST] ",
    "text <s> with spaces </s> around",
]

PHOTOS = [
    # (output name, source file under mate-backgrounds, preparation)
    ("ladybird_640x400.jpg", "nature/LadyBird.jpg", "LANCZOS downscale 2560x1600 -> 640x400, JPEG q=90"),
    ("twowings_333x500.jpg", "nature/TwoWings.jpg",
     "centre crop 1066x1600 (portrait 2:3) then LANCZOS downscale -> 333x500, JPEG q=88"),
    ("arc_colors_rgba_357x200.png", "abstract/Arc-Colors-Transparent-Wallpaper.png",
     "LANCZOS downscale 2140x1200 RGBA -> 357x200, PNG (keeps the alpha channel)"),
    ("freshflower_gray_97x73.jpg", "nature/FreshFlower.jpg",
     "convert to 8-bit grayscale (L), LANCZOS downscale 1600x1203 -> 97x73, JPEG q=92 "
     "(smaller than 224: exercises bicubic UPscaling and L->RGB)"),
]

TOKENIZER_STRINGS = [
    "Hello world",
    "Hello world!",
    "hello, world.",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "trailing spaces   ",
    "multiple   inner    spaces",
    "",
    " ",
    "Describe this image in detail.",
    "###Human: <Img><ImageHere></Img> Describe this image in detail. ###Assistant: ",
    "###",
    "a###b",
    "###Human:",
    "line one\nline two",
    "ends with newline\n",
    "\n",
    "tabs\tand\tmore",
    "Numbers 1234567890 and 3.14159",
    "2023-08-15 12:00",
    "MiniGPT-4 uses Vicuna-13B.",
    "naïve café résumé",
    "Straße Größe",
    "日本語のテキスト",
    "Привет мир",
    "emoji 😀 and 🐞 ladybug",
    "👍🏽",
    "mixed <s> special </s> tokens",
    "<unk>",
    "The GNU General Public License is a free, copyleft license for software.",
    "ALL CAPS TEXT",
    "don't can't won't it's",
]

CAPTION_PROCESSOR_STRINGS = [
    "A Small Red Ladybird, sitting on a LEAF!",
    "  two   spaces  and \"quotes\" (brackets) * stars # hashes: colons; semis ~ tildes  ",
    "multi\nline\ncaption\n",
    "Question? Answer. Exclamation! Comma, stays",
    " ".join("word%d" % i for i in range(60)),
    "Ünïcödé CAPITALS stay unicode",
]


# ======================================================================================
# safetensors: own minimal writer/reader (the safetensors package is not available here)
# ======================================================================================
_ST_DTYPES = {"F32": "float32", "F64": "float64", "F16": "float16", "I64": "int64",
              "I32": "int32", "U8": "uint8", "I8": "int8", "BOOL": "bool"}


def st_dtype_name(t):
    import torch
    return {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16",
            torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.int8: "I8",
            torch.bool: "BOOL"}[t.dtype]


def st_save(path, tensors, metadata=None):
    """Write safetensors: u64-LE header size, JSON header, raw little-endian data.

    Tensors are laid out in sorted-name order; the header is space-padded to a
    multiple of 8 bytes (as the reference implementation does)."""
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        data = t.numpy().tobytes()  # x86_64: little endian
        header[name] = {"dtype": st_dtype_name(t), "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hjson = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)


def st_load(path):
    """Return (dict name->torch.Tensor, metadata dict)."""
    import numpy as np
    import torch
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        arr = np.frombuffer(raw[base + a:base + b], dtype=_ST_DTYPES[info["dtype"]])
        out[name] = torch.from_numpy(arr.copy()).reshape(info["shape"])
    return out, meta


# ======================================================================================
# Private stubs (written into $REFENV/stubs; never committed anywhere)
# ======================================================================================
_STUB_FILES = {
    # timm: eva_vit.py needs drop_path / to_2tuple / trunc_normal_ / register_model, and
    # minigpt4/common/dist_utils.py imports timm.models.hub for download_cached_file.
    "timm/__init__.py": "",
    "timm/models/__init__.py": "",
    "timm/models/layers.py": '''
import collections.abc
import torch


def drop_path(x, drop_prob=0.0, training=False):
    # stochastic depth; identity at inference or with drop_prob == 0
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    return x * mask / keep


def to_2tuple(x):
    if isinstance(x, collections.abc.Iterable) and not isinstance(x, str):
        return tuple(x)
    return (x, x)


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
    return torch.nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)
''',
    "timm/models/registry.py": '''
def register_model(fn):
    return fn
''',
    "timm/models/hub.py": '''
def download_cached_file(url, check_hash=True, progress=False):
    raise RuntimeError("no network in the fixture harness: " + str(url))
''',
    # iopath: imported by minigpt4/common/utils.py, never used on our paths
    "iopath/__init__.py": "",
    "iopath/common/__init__.py": "",
    "iopath/common/download.py": '''
def download(*args, **kwargs):
    raise RuntimeError("no network in the fixture harness")
''',
    "iopath/common/file_io.py": '''
import contextlib


@contextlib.contextmanager
def file_lock(path):
    yield


class _PathMgr:
    def __getattr__(self, name):
        raise RuntimeError("iopath is stubbed in the fixture harness")


g_pathmgr = _PathMgr()
''',
    # cv2: only minigpt4/processors/randaugment.py (training augmentation) imports it
    "cv2/__init__.py": '''
def __getattr__(name):
    raise RuntimeError("cv2 is stubbed in the fixture harness (training augmentation only)")
''',
    # safetensors shim (transformers >= 4.31 requires the package; 4.28 uses it if present)
    "safetensors/__init__.py": '''
import json, struct
import numpy as np
import torch as _torch

__version__ = "0.3.1"
_DT = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64,
       "I32": np.int32, "U8": np.uint8, "I8": np.int8, "BOOL": np.bool_}


def _read(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None)
    return raw, 8 + n, header, meta


class safe_open:
    def __init__(self, filename, framework="pt", device="cpu"):
        self._raw, self._base, self._header, self._meta = _read(filename)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def keys(self):
        return list(self._header.keys())

    def metadata(self):
        return self._meta

    def get_tensor(self, name):
        info = self._header[name]
        a, b = info["data_offsets"]
        arr = np.frombuffer(self._raw[self._base + a:self._base + b], dtype=_DT[info["dtype"]])
        return _torch.from_numpy(arr.copy()).reshape(info["shape"])
''',
    "safetensors/torch.py": '''
import json, struct
import torch
from safetensors import safe_open

_NAME = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.int64: "I64",
         torch.int32: "I32", torch.uint8: "U8", torch.int8: "I8", torch.bool: "BOOL"}


def storage_ptr(tensor):
    return tensor.storage().data_ptr()


def storage_size(tensor):
    return tensor.storage().size() * tensor.element_size()


def load_file(filename, device="cpu"):
    with safe_open(filename, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def save_file(tensors, filename, metadata=None):
    header, blobs, off = {}, [], 0
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        b = t.numpy().tobytes()
        header[k] = {"dtype": _NAME[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(filename, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
''',
    # peft: MiniGPT-4 ef1ac08's mini_gpt4.py imports it at module level; only used with lora_r > 0
    "peft/__init__.py": '''
def _unavailable(*args, **kwargs):
    raise RuntimeError("peft is stubbed in the fixture harness (LoRA is not used: lora_r = 0)")


LoraConfig = get_peft_model = get_peft_model_state_dict = _unavailable
prepare_model_for_int8_training = set_peft_model_state_dict = _unavailable
''',
    "safetensors-0.3.1.dist-info/METADATA":
        "Metadata-Version: 2.1\nName: safetensors\nVersion: 0.3.1\n"
        "Summary: private minimal shim for the minigpt4-cpp fixture harness\n",
    "safetensors-0.3.1.dist-info/RECORD": "",
}
# per-environment dist-info (transformers checks the hub version at import)
_HUB_DISTINFO = {"hub": "0.14.1", "hub0194": "0.19.4", "hub0134": None}  # None: the wheel has one


def cmd_setup(args):
    root = os.path.join(args.refenv, "stubs")
    for rel, text in _STUB_FILES.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text.lstrip("\n"))
    missing = [k for k in ("minigpt4", "minigpt4_llama2", "tf428", "tf431_pypi", "hub", "tf428_pypi",
                             "hub0134")
               if not os.path.isdir(os.path.join(args.refenv, PINS[k]["dir"]))]
    if missing:
        print("WARNING: missing reference checkouts:", missing, "(see README.md)")
    print("stubs written to", root)


# ======================================================================================
# Environment for a case: import paths, patches
# ======================================================================================
def enter_refenv(refenv, tfkey, hubkey="hub", mgkey="minigpt4"):
    hubver = _HUB_DISTINFO[hubkey]
    paths = []
    if hubver is not None:  # a source checkout: give it a dist-info (transformers checks it)
        meta = os.path.join(refenv, "stubs_hub%s" % hubver)
        if not os.path.isdir(meta):
            os.makedirs(os.path.join(meta, "huggingface_hub-%s.dist-info" % hubver))
            with open(os.path.join(meta, "huggingface_hub-%s.dist-info" % hubver, "METADATA"), "w") as f:
                f.write("Metadata-Version: 2.1\nName: huggingface_hub\nVersion: %s\n" % hubver)
        paths.append(meta)
    paths += [os.path.join(refenv, "stubs"), os.path.join(refenv, PINS[hubkey]["dir"]),
              os.path.join(refenv, PINS[tfkey]["dir"]),
              os.path.join(refenv, PINS[mgkey]["dir"])]
    for p in paths:
        if not os.path.isdir(p):
            raise SystemExit("missing %s (run the README's setup steps)" % p)
    sys.path[:0] = paths
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # The top-level minigpt4/__init__.py imports the dataset builders (webdataset, ...)
    # which the model code does not need: register a bare package object instead so that
    # minigpt4.models / minigpt4.conversation / minigpt4.processors import normally.
    pkg = types.ModuleType("minigpt4")
    pkg.__path__ = [os.path.join(refenv, PINS[mgkey]["dir"], "minigpt4")]
    sys.modules["minigpt4"] = pkg


def patch_transformers_without_tokenizers():
    """transformers falls back to a dataclass AddedToken when the `tokenizers` package is
    missing; that fallback has no __str__, so the slow LlamaTokenizer re-adds <s> / </s> as NEW
    tokens (ids vocab, vocab+1).  MiniGPT-4's pinned environment had tokenizers 0.13.2, whose
    AddedToken.__str__ returns the content: give the fallback the same behaviour."""
    import transformers.tokenization_utils_base as tub
    if not tub.is_tokenizers_available():
        tub.AddedToken.__str__ = lambda self: self.content


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pin(key, **extra):
    """PINS entry for a manifest (without the private checkout directory)."""
    d = {k: v for k, v in PINS[key].items() if k != "dir"}
    d.update(extra)
    return d


def versions_block(tfkey, hubkey="hub", mgkey="minigpt4"):
    import numpy
    import PIL
    import sentencepiece
    import torch
    import torchvision
    import transformers
    import huggingface_hub
    deb = {}
    for pkg in ("python3-torch", "python3-torchvision", "python3-numpy", "python3-sentencepiece",
                "python3-pil", "sentencepiece"):
        try:
            deb[pkg] = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg],
                                      capture_output=True, text=True).stdout.strip()
        except Exception:
            pass
    return {
        "script": "tests/data/parity/make_fixtures.py (a copy of shared/fixtures/make_fixtures.py "
                  "with case D added)" if mgkey != "minigpt4" else "tests/data/parity/make_fixtures.py",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "sentencepiece": sentencepiece.__version__,
        "debian_packages": deb,
        "transformers": pin(tfkey, version_string=transformers.__version__),
        "huggingface_hub": pin(hubkey, version_string=huggingface_hub.__version__),
        "minigpt4": pin(mgkey),
        "minigpt4_llama2_templates": pin("minigpt4_llama2"),
        "platform": "Debian 12 x86_64, CPU only, float32",
    }


# ======================================================================================
# Deterministic non-trivial random weights
# ======================================================================================
def _gen(seed, name):
    import torch
    g = torch.Generator()
    g.manual_seed((seed * 1000003 + zlib.crc32(name.encode())) % (2 ** 63))
    return g


def randomize_module(module, seed, prefix, special=None):
    """Fill every parameter with seeded values that depend only on (seed, full name).

    norms: weight 1 + 0.1 N(0,1), bias 0.1 N(0,1); linear/conv weights N(0, 1/fan_in);
    linear biases 0.1 N(0,1); embeddings N(0,1); `special` maps a full name to
    (kind, scale) overrides."""
    import torch
    import torch.nn as nn
    special = special or {}
    norm_params = set()
    for mname, m in module.named_modules():
        cls = type(m).__name__
        if isinstance(m, nn.LayerNorm) or "RMSNorm" in cls:
            for pn, _ in m.named_parameters(recurse=False):
                norm_params.add((mname + "." if mname else "") + pn)
    with torch.no_grad():
        for pname, p in module.named_parameters():
            full = prefix + pname
            g = _gen(seed, full)
            if full in special:
                kind, scale = special[full]
                if kind == "normal":
                    p.copy_(torch.randn(p.shape, generator=g) * scale)
                else:
                    raise ValueError(kind)
            elif pname in norm_params:
                if pname.endswith("weight"):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                fan_in = 1
                for s in p.shape[1:]:
                    fan_in *= s
                if "embed_tokens" in pname or "word_embeddings" in pname or \
                        "position_embeddings" in pname:
                    p.copy_(torch.randn(p.shape, generator=g))
                else:
                    p.copy_(torch.randn(p.shape, generator=g) / (fan_in ** 0.5))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


# ======================================================================================
# Tokenizer
# ======================================================================================
def tokenizer_corpus():
    files = []
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(p) and not os.path.islink(p):
            files.append(p)
    return files


def train_tokenizer(out_prefix, vocab_size, work):
    files = tokenizer_corpus()
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as out:
        for p in files:
            with open(p, encoding="utf-8", errors="replace") as f:
                for line in f:
                    line = line.rstrip("\n")
                    if line.strip():
                        out.write(line + "\n")
    # run inside `work` with relative names: the model proto stores input/model_prefix verbatim
    assert os.path.dirname(out_prefix) == work
    cmd = ["spm_train", "--input=corpus.txt", "--model_prefix=tokenizer",
           "--vocab_size=%d" % vocab_size, "--model_type=bpe", "--byte_fallback=true",
           "--split_digits=true", "--add_dummy_prefix=true",
           "--normalization_rule_name=identity", "--remove_extra_whitespaces=false",
           "--unk_id=0", "--bos_id=1", "--eos_id=2", "--pad_id=-1",
           "--character_coverage=0.99995", "--max_sentence_length=4192",
           "--max_sentencepiece_length=16", "--split_by_unicode_script=true",
           "--split_by_whitespace=true", "--split_by_number=true",
           "--allow_whitespace_only_pieces=true", "--input_sentence_size=0",
           "--shuffle_input_sentence=false", "--num_threads=1", "--minloglevel=2"]
    subprocess.run(cmd, check=True, cwd=work)
    with open(corpus, "rb") as f:
        corpus_sha = hashlib.sha256(f.read()).hexdigest()
    return {"command": " ".join(cmd), "corpus_files": files, "corpus_sha256": corpus_sha,
            "corpus_note": "non-empty lines of the regular files in /usr/share/common-licenses "
                           "(Debian base-files), concatenated in sorted path order",
            "sentencepiece_cli": "Debian package sentencepiece " + subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", "sentencepiece"], capture_output=True,
                text=True).stdout.strip()}


# ======================================================================================
# Photos (image_processor fixture inputs)
# ======================================================================================
def prepare_photos(refenv, outdir):
    from PIL import Image
    src_root = os.path.join(refenv, PINS["mate_backgrounds"]["dir"])
    os.makedirs(outdir, exist_ok=True)
    for name, src, _ in PHOTOS:
        dst = os.path.join(outdir, name)
        if os.path.exists(dst):
            continue  # keep existing inputs stable
        im = Image.open(os.path.join(src_root, src))
        if name.startswith("ladybird"):
            im.convert("RGB").resize((640, 400), Image.LANCZOS).save(dst, quality=90)
        elif name.startswith("twowings"):
            im = im.convert("RGB")
            w, h = im.size
            cw = int(round(h * 2 / 3))
            left = (w - cw) // 2
            im.crop((left, 0, left + cw, h)).resize((333, 500), Image.LANCZOS).save(dst, quality=88)
        elif name.startswith("arc_colors"):
            im.convert("RGBA").resize((357, 200), Image.LANCZOS).save(dst, optimize=True)
        elif name.startswith("freshflower"):
            im.convert("L").resize((97, 73), Image.LANCZOS).save(dst, quality=92)


# ======================================================================================
# Weight-name descriptions for manifests
# ======================================================================================
def describe_weight(name):
    rules = [
        ("cls_token", "ViT class token [1,1,width]"),
        ("pos_embed", "ViT absolute position embedding [1,1+num_patches,width] (cls first)"),
        ("patch_embed.proj.weight", "ViT patch embedding Conv2d weight [width,3,14,14], stride 14"),
        ("patch_embed.proj.bias", "ViT patch embedding Conv2d bias"),
        ("attn.qkv.weight", "ViT fused q,k,v projection weight [3*width,width] (no bias in the Linear)"),
        ("attn.q_bias", "ViT query bias; qkv bias = cat(q_bias, zeros, v_bias)"),
        ("attn.v_bias", "ViT value bias; key has NO bias"),
        ("attn.proj", "ViT attention output projection"),
        ("mlp.fc1", "ViT MLP fc1 [int(width*4.3637), width]"),
        ("mlp.fc2", "ViT MLP fc2"),
        ("norm1", "ViT pre-attention LayerNorm (eps 1e-6)"),
        ("norm2", "ViT pre-MLP LayerNorm (eps 1e-6)"),
        ("ln_vision", "LayerNorm on ViT output (eps 1e-5, computed in float32)"),
        ("query_tokens", "Q-Former learned queries [1,num_query_token,qformer_hidden]"),
        ("embeddings.LayerNorm", "Q-Former embeddings LayerNorm applied to the query tokens (eps 1e-12)"),
        ("embeddings.position_ids", "BERT position_ids buffer (int64, unused for queries)"),
        ("embeddings.word_embeddings", "Q-Former text word embeddings (text branch; MiniGPT-4 drops it)"),
        ("embeddings.position_embeddings", "Q-Former text position embeddings (text branch; dropped)"),
        ("crossattention.self.key", "Q-Former cross-attention key (in: vision width)"),
        ("crossattention.self.value", "Q-Former cross-attention value (in: vision width)"),
        ("crossattention.self.query", "Q-Former cross-attention query"),
        ("crossattention.output.dense", "Q-Former cross-attention output dense"),
        ("crossattention.output.LayerNorm", "Q-Former cross-attention post-residual LayerNorm (eps 1e-12)"),
        ("attention.self", "Q-Former self-attention q/k/v"),
        ("attention.output.dense", "Q-Former self-attention output dense"),
        ("attention.output.LayerNorm", "Q-Former self-attention post-residual LayerNorm (eps 1e-12)"),
        ("intermediate_query", "Q-Former query FFN up (GELU erf)"),
        ("output_query.dense", "Q-Former query FFN down"),
        ("output_query.LayerNorm", "Q-Former query FFN post-residual LayerNorm (eps 1e-12)"),
        (".intermediate.", "Q-Former TEXT FFN (dropped by MiniGPT-4)"),
        (".output.dense", "Q-Former TEXT FFN down (dropped by MiniGPT-4)"),
        (".output.LayerNorm", "Q-Former TEXT FFN LayerNorm (dropped by MiniGPT-4)"),
        ("cls.predictions", "Q-Former MLM head (dropped by MiniGPT-4)"),
        ("vision_proj", "BLIP-2 stage-1 head, not used by MiniGPT-4 (loader must ignore)"),
        ("text_proj", "BLIP-2 stage-1 head, not used by MiniGPT-4 (loader must ignore)"),
        ("itm_head", "BLIP-2 stage-1 head, not used by MiniGPT-4 (loader must ignore)"),
        ("temp", "BLIP-2 stage-1 temperature, not used by MiniGPT-4 (loader must ignore)"),
        ("llama_proj", "the trainable projection Q-Former hidden -> LLaMA hidden"),
        ("embed_tokens", "LLaMA token embedding [vocab,hidden]"),
        ("rotary_emb.inv_freq", "LLaMA rotary inverse frequencies buffer 1/10000^(2i/head_dim)"),
        ("q_proj", "LLaMA attention q projection (no bias)"),
        ("k_proj", "LLaMA attention k projection (no bias; [kv_heads*head_dim, hidden])"),
        ("v_proj", "LLaMA attention v projection (no bias; [kv_heads*head_dim, hidden])"),
        ("o_proj", "LLaMA attention output projection (no bias)"),
        ("gate_proj", "LLaMA MLP gate (SiLU) projection"),
        ("up_proj", "LLaMA MLP up projection"),
        ("down_proj", "LLaMA MLP down projection"),
        ("input_layernorm", "LLaMA pre-attention RMSNorm weight"),
        ("post_attention_layernorm", "LLaMA pre-MLP RMSNorm weight"),
        ("norm.weight", "LLaMA final RMSNorm weight"),
        ("lm_head", "LLaMA output projection [vocab,hidden] (not tied)"),
    ]
    for key, text in rules:
        if key in name:
            return text
    return ""


def tensor_entries(tensors, descriptions=None, describe=None):
    out = []
    for k in sorted(tensors):
        t = tensors[k]
        e = {"name": k, "dtype": st_dtype_name(t), "shape": list(t.shape)}
        d = None
        if descriptions and k in descriptions:
            d = descriptions[k]
        elif describe:
            d = describe(k)
        if d:
            e["meaning"] = d
        if t.dtype.is_floating_point and t.numel():
            e["max_abs"] = float(t.abs().max())
        out.append(e)
    return out


def file_entry(root, rel, fmt, description, tensors=None, descriptions=None, describe=None, **extra):
    p = os.path.join(root, rel)
    e = {"path": rel, "bytes": os.path.getsize(p), "sha256": sha256_file(p), "format": fmt,
         "description": description}
    e.update(extra)
    if tensors is not None:
        e["tensors"] = tensor_entries(tensors, descriptions, describe)
    return e


# ======================================================================================
# The case runner
# ======================================================================================
def run_case(args, key):
    case = CASES[key]
    enter_refenv(args.refenv, case["tf"])

    import numpy as np
    import torch
    import torch.nn as nn
    from omegaconf import OmegaConf
    from PIL import Image
    import transformers
    from transformers import LlamaConfig, LlamaTokenizer, GenerationConfig
    from transformers import StoppingCriteriaList

    patch_transformers_without_tokenizers()
    import minigpt4.models  # noqa: F401  (runs minigpt4/models/__init__.py)
    import minigpt4.models.eva_vit as eva_vit
    import minigpt4.models.blip2 as blip2
    import minigpt4.models.mini_gpt4 as mg
    from minigpt4.models.Qformer import BertConfig
    from minigpt4.processors.blip_processors import Blip2ImageEvalProcessor, BlipCaptionProcessor
    import minigpt4.conversation.conversation as conv_mod

    torch.manual_seed(0)
    torch.set_num_threads(2)
    out_root = os.path.join(OUT_ROOT, case["outdir"])
    if os.path.isdir(out_root):
        keep = os.path.join(out_root, "image_processor")
        for entry in os.listdir(out_root):
            p = os.path.join(out_root, entry)
            if p == keep:
                continue
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    os.makedirs(out_root, exist_ok=True)
    work = os.path.join(args.refenv, "work", case["name"])
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    seed = case["seed"]
    V, Q, L = case["vit"], case["qformer"], case["llama"]
    notes = []

    # ---------------------------------------------------------------- tokenizer
    tok_info = train_tokenizer(os.path.join(work, "tokenizer"), case["vocab_size"], work)
    tok_model = os.path.join(out_root, "tokenizer.model")
    shutil.copy(os.path.join(work, "tokenizer.model"), tok_model)
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=tok_model)
    vocab = sp.get_piece_size()
    assert vocab == case["vocab_size"], vocab

    # ---------------------------------------------------------------- patches
    # 1) EVA ViT-g: create_eva_vit_g() hard-codes width 1408 / depth 39 / 16 heads and
    #    downloads eva_vit_g.pth.  Keep every other constructor argument it passes
    #    (patch 14, mlp_ratio 4.3637, qkv_bias, LayerNorm eps 1e-6, no mean pooling) and
    #    point its download at our local file.
    real_vt = eva_vit.VisionTransformer
    eva_path = [None]

    def tiny_vit(**kw):
        assert kw["patch_size"] == 14 and kw["mlp_ratio"] == 4.3637 and kw["qkv_bias"]
        kw.update(embed_dim=V["width"], depth=V["depth"], num_heads=V["heads"])
        return real_vt(**kw)

    eva_vit.VisionTransformer = tiny_vit
    eva_vit.download_cached_file = lambda url, check_hash=True, progress=False: eva_path[0]

    # 2) Q-Former: Blip2Base.init_Qformer() reads BertConfig.from_pretrained("bert-base-uncased");
    #    give it bert-base-uncased's config with the sizes shrunk.
    def tiny_bert_config():
        return BertConfig(vocab_size=Q["vocab_size"], hidden_size=Q["hidden"],
                          num_hidden_layers=Q["layers"], num_attention_heads=Q["heads"],
                          intermediate_size=Q["intermediate"], hidden_act="gelu",
                          hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                          max_position_embeddings=Q["max_position_embeddings"],
                          type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12,
                          pad_token_id=0, position_embedding_type="absolute")

    class _TinyBertConfig:
        @staticmethod
        def from_pretrained(name):
            assert name == "bert-base-uncased"
            return tiny_bert_config()

    blip2.BertConfig = _TinyBertConfig
    # 3) The BERT tokenizer (self.tokenizer) is never used by MiniGPT-4's forward/chat.
    blip2.Blip2Base.init_tokenizer = classmethod(lambda cls: None)
    # 4) LLaMA: MiniGPT-4 loads the LLM with torch_dtype=torch.float16; we need float32.
    if case["llm_impl"] == "minigpt4":
        import minigpt4.models.modeling_llama as llama_mod
        LlamaCls = llama_mod.LlamaForCausalLM
        assert mg.LlamaForCausalLM is LlamaCls
    else:
        LlamaCls = transformers.LlamaForCausalLM

    class _LlamaFp32Loader:
        @staticmethod
        def from_pretrained(path, **kw):
            assert kw.get("torch_dtype") == torch.float16
            kw["torch_dtype"] = torch.float32
            return LlamaCls.from_pretrained(path, **kw)

    mg.LlamaForCausalLM = _LlamaFp32Loader

    # ---------------------------------------------------------------- seed modules
    empty_sd = os.path.join(work, "empty.pth")
    torch.save({}, empty_sd)
    eva_path[0] = empty_sd
    vit = eva_vit.create_eva_vit_g(case["image_size"], 0.0, False, "fp32")
    ln_vision = blip2.LayerNorm(vit.num_features)
    qformer, query_tokens = blip2.Blip2Base.init_Qformer(Q["num_query_token"], vit.num_features)
    assert qformer.config.cross_attention_freq == Q["cross_attention_freq"]
    lcfg_kwargs = dict(vocab_size=vocab, hidden_size=L["hidden"], intermediate_size=L["intermediate"],
                       num_hidden_layers=L["layers"], num_attention_heads=L["heads"],
                       hidden_act="silu", max_position_embeddings=L["max_position_embeddings"],
                       initializer_range=0.02, rms_norm_eps=L["rms_eps"], use_cache=True,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    if L["kv_heads"] is not None:
        lcfg_kwargs["num_key_value_heads"] = L["kv_heads"]
    lcfg = LlamaConfig(**lcfg_kwargs)
    if L["kv_heads"] is not None:
        assert lcfg.num_key_value_heads == L["kv_heads"]
    llama = LlamaCls(lcfg)
    llama_proj = nn.Linear(Q["hidden"], L["hidden"])
    # BLIP-2 stage-1 heads that a real LAVIS checkpoint may carry (ignored by MiniGPT-4)
    extra_heads = {"vision_proj": nn.Linear(Q["hidden"], 16), "text_proj": nn.Linear(Q["hidden"], 16),
                   "itm_head": nn.Linear(Q["hidden"], 2)}

    randomize_module(vit, seed, "visual_encoder.",
                     special={"visual_encoder.pos_embed": ("normal", 0.5),
                              "visual_encoder.cls_token": ("normal", 0.5)})
    randomize_module(ln_vision, seed, "ln_vision.")
    randomize_module(qformer, seed, "Qformer.")
    qt = nn.Module()
    qt.query_tokens = query_tokens
    randomize_module(qt, seed, "", special={"query_tokens": ("normal", 1.0)})
    randomize_module(llama, seed, "llama_model.",
                     special={"llama_model.lm_head.weight": ("normal", 2.0 / L["hidden"] ** 0.5)})
    randomize_module(llama_proj, seed, "llama_proj.")
    for hname, m in extra_heads.items():
        randomize_module(m, seed, hname + ".")

    # ---------------------------------------------------------------- split files
    files = []
    vit_sd = {k: v.clone() for k, v in vit.state_dict().items()}
    torch.save(vit_sd, os.path.join(out_root, "eva_vit_g.pth"))
    st_save(os.path.join(out_root, "eva_vit_g.safetensors"), vit_sd,
            {"format": "pt", "content": "EVA ViT visual_encoder state dict (eva_vit.py names)"})
    files.append(file_entry(out_root, "eva_vit_g.pth", "torch.save (zip) of a flat state dict",
                            "visual encoder weights as LAVIS' eva_vit_g.pth holds them: flat "
                            "{name: tensor}, eva_vit.py names, float32 here",
                            vit_sd, describe=describe_weight))
    files.append(file_entry(out_root, "eva_vit_g.safetensors", "safetensors",
                            "same tensors as eva_vit_g.pth", vit_sd, describe=describe_weight))

    blip_sd = {}
    for k, v in qformer.state_dict().items():
        blip_sd["Qformer." + k] = v.clone()
    blip_sd["query_tokens"] = query_tokens.detach().clone()
    for k, v in ln_vision.state_dict().items():
        blip_sd["ln_vision." + k] = v.clone()
    for hname, m in extra_heads.items():
        for k, v in m.state_dict().items():
            blip_sd[hname + "." + k] = v.clone()
    blip_sd["temp"] = torch.tensor(0.07)
    torch.save({"model": blip_sd}, os.path.join(out_root, "blip2_pretrained.pth"))
    files.append(file_entry(
        out_root, "blip2_pretrained.pth", "torch.save (zip) of {'model': state_dict}",
        "LAVIS BLIP-2 style checkpoint: the FULL Q-Former (incl. the text branch that MiniGPT-4 "
        "drops: cls.*, embeddings.word_embeddings/position_embeddings, layer.N.intermediate/"
        "output), query_tokens, ln_vision.*, plus stage-1 heads (vision_proj, text_proj, "
        "itm_head, temp). MiniGPT-4 loads it with load_state_dict(strict=False), so every key "
        "it has no module for is ignored. Note: cls.predictions.decoder.weight is the SAME "
        "tensor as Qformer.bert.embeddings.word_embeddings.weight (tied) and "
        "cls.predictions.decoder.bias is cls.predictions.bias.",
        {"model/" + k: v for k, v in blip_sd.items()},
        describe=describe_weight))

    proj_sd = {k: v.clone() for k, v in
               (("llama_proj." + k, v) for k, v in llama_proj.state_dict().items())}
    torch.save({"model": proj_sd}, os.path.join(out_root, "pretrained_minigpt4.pth"))
    st_save(os.path.join(out_root, "pretrained_minigpt4.safetensors"), proj_sd,
            {"format": "pt", "content": "MiniGPT-4 checkpoint 'model' dict (llama_proj only)"})
    files.append(file_entry(out_root, "pretrained_minigpt4.pth",
                            "torch.save (zip) of {'model': state_dict}",
                            "MiniGPT-4 released-checkpoint layout: {'model': {'llama_proj.weight', "
                            "'llama_proj.bias'}} (loaded with strict=False over the whole model)",
                            {"model/" + k: v for k, v in proj_sd.items()}, describe=describe_weight))
    files.append(file_entry(out_root, "pretrained_minigpt4.safetensors", "safetensors",
                            "same tensors as pretrained_minigpt4.pth['model']", proj_sd,
                            describe=describe_weight))

    # HF LLaMA directories
    hf_sd = {k: v.clone() for k, v in llama.state_dict().items()}
    hf_tok = LlamaTokenizer(vocab_file=tok_model)
    gen_cfg = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)

    def write_hf_common(d):
        os.makedirs(d, exist_ok=True)
        lcfg.architectures = ["LlamaForCausalLM"]
        lcfg.torch_dtype = "float32"
        lcfg.save_pretrained(d)
        gen_cfg.save_pretrained(d)
        hf_tok.save_pretrained(d)

    layers = L["layers"]
    first_half = [k for k in hf_sd if k.startswith("model.embed_tokens") or any(
        k.startswith("model.layers.%d." % i) for i in range(layers // 2 + layers % 2))]
    second_half = [k for k in hf_sd if k not in first_half]
    vdir = os.path.join(out_root, "vicuna")
    write_hf_common(vdir)
    st_sd = {k: v for k, v in hf_sd.items() if not k.endswith("rotary_emb.inv_freq")}
    weight_map = {}
    total = 0
    for i, names in enumerate((first_half, second_half)):
        shard = "model-%05d-of-00002.safetensors" % (i + 1)
        part = {k: st_sd[k] for k in names if k in st_sd}
        st_save(os.path.join(vdir, shard), part, {"format": "pt"})
        for k in part:
            weight_map[k] = shard
            total += part[k].numel() * part[k].element_size()
    with open(os.path.join(vdir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                  f, indent=2)
    bdir = os.path.join(out_root, "vicuna_bin")
    write_hf_common(bdir)
    torch.save(hf_sd, os.path.join(bdir, "pytorch_model.bin"))
    sbdir = os.path.join(out_root, "vicuna_bin_sharded")
    write_hf_common(sbdir)
    bin_map = {}
    total = 0
    for i, names in enumerate((first_half, second_half)):
        shard = "pytorch_model-%05d-of-00002.bin" % (i + 1)
        part = {k: hf_sd[k] for k in names}
        torch.save(part, os.path.join(sbdir, shard))
        for k in part:
            bin_map[k] = shard
            total += part[k].numel() * part[k].element_size()
    with open(os.path.join(sbdir, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(bin_map.items()))},
                  f, indent=2)

    # ---------------------------------------------------------------- build the real model
    eva_path[0] = os.path.join(out_root, "eva_vit_g.pth")
    prompt_path = os.path.join(args.refenv, PINS["minigpt4"]["dir"], "prompts", "alignment.txt")
    cfg = OmegaConf.create({
        "arch": "mini_gpt4", "model_type": "pretrain_vicuna", "image_size": case["image_size"],
        "drop_path_rate": 0, "use_grad_checkpoint": False, "vit_precision": "fp32",
        "freeze_vit": True, "freeze_qformer": True, "num_query_token": Q["num_query_token"],
        "llama_model": vdir, "q_former_model": os.path.join(out_root, "blip2_pretrained.pth"),
        "prompt_path": prompt_path, "prompt_template": PROMPT_TEMPLATE, "max_txt_len": 32,
        "end_sym": "###", "low_resource": False, "device_8bit": 0,
        "ckpt": os.path.join(out_root, "pretrained_minigpt4.pth"),
    })
    model = mg.MiniGPT4.from_config(cfg)
    model.eval()
    full_sd = model.state_dict()
    seed_full = {}
    seed_full.update({"visual_encoder." + k: v for k, v in vit_sd.items()})
    seed_full.update({k: v for k, v in blip_sd.items() if k.startswith(("Qformer.", "ln_vision.", "query_tokens"))})
    seed_full.update({"llama_model." + k: v for k, v in hf_sd.items()})
    seed_full.update(proj_sd)
    for k, v in full_sd.items():
        assert k in seed_full, "model key without a source file: " + k
        assert torch.equal(v, seed_full[k]), "weight mismatch after loading: " + k
    dropped = sorted(k for k in blip_sd if k not in full_sd)
    notes.append("The model was built by MiniGPT4.from_config() from the split files (eva_vit_g.pth, "
                 "blip2_pretrained.pth, vicuna/ safetensors shards, pretrained_minigpt4.pth); its "
                 "state_dict equals the seeded weights exactly (checked key by key).")
    st_save(os.path.join(out_root, "minigpt4_full.safetensors"), dict(full_sd),
            {"format": "pt", "content": "MiniGPT4.state_dict() (MiniGPT-4 key names)",
             "case": case["name"]})
    files.insert(0, file_entry(out_root, "minigpt4_full.safetensors", "safetensors",
                               "MiniGPT4.state_dict() of the assembled model, MiniGPT-4's own key "
                               "names. Buffers included: Qformer.bert.embeddings.position_ids "
                               "(I64) and llama_model.model.layers.N.self_attn.rotary_emb.inv_freq.",
                               dict(full_sd), describe=describe_weight))

    # check the other HF layouts load to identical weights through transformers
    for d in (bdir, sbdir):
        other = LlamaCls.from_pretrained(d, torch_dtype=torch.float32)
        for k, v in other.state_dict().items():
            assert torch.equal(v, hf_sd[k]), (d, k)
        del other
    hf_files = []
    for d, what in ((vdir, "two safetensors shards + model.safetensors.index.json; tensors of "
                           "rotary_emb.inv_freq are OMITTED (as in current HF checkpoints)"),
                    (bdir, "single pytorch_model.bin (torch.save of the HF state dict, zip "
                           "format), includes rotary_emb.inv_freq buffers (as 2023 checkpoints did)"),
                    (sbdir, "two pytorch_model-0000N-of-00002.bin shards + "
                            "pytorch_model.bin.index.json (the layout Vicuna v0 weights came in)")):
        rel = os.path.relpath(d, out_root)
        for fn in sorted(os.listdir(d)):
            p = os.path.join(d, fn)
            tens = None
            if fn.endswith(".safetensors"):
                tens = st_load(p)[0]
            elif fn.endswith(".bin"):
                tens = torch.load(p, map_location="cpu")
            hf_files.append(file_entry(out_root, rel + "/" + fn,
                                       "safetensors" if fn.endswith(".safetensors") else
                                       ("torch.save (zip)" if fn.endswith(".bin") else "json/sentencepiece"),
                                       "HF LLaMA directory %s/: %s" % (rel, what), tens,
                                       describe=describe_weight))
    files.extend(hf_files)

    # ---------------------------------------------------------------- photos + processor
    photos_dir = os.path.join(OUT_ROOT, CASES["a"]["outdir"], "image_processor")
    prepare_photos(args.refenv, photos_dir)
    io = {}
    desc = {}

    def put(name, t, meaning):
        io[name] = t.detach().cpu().contiguous().clone()
        desc[name] = meaning

    proc_small = Blip2ImageEvalProcessor(image_size=case["image_size"])
    imgs = []
    for fn in case["batch_photos"]:
        imgs.append(proc_small(Image.open(os.path.join(photos_dir, fn)).convert("RGB")))
    image = torch.stack(imgs)
    put("image", image, "input images [B,3,S,S]: image_processor photos %s through MiniGPT-4's "
        "Blip2ImageEvalProcessor(image_size=%d) (Resize((S,S), BICUBIC) on the PIL image, ToTensor, "
        "Normalize(CLIP mean/std))" % (case["batch_photos"], case["image_size"]))

    # ---------------------------------------------------------------- module outputs
    with torch.no_grad():
        x = model.visual_encoder.patch_embed(image)
        x = torch.cat((model.visual_encoder.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + model.visual_encoder.pos_embed
        put("vit_tokens_in", x, "ViT input tokens: cat(cls_token, patch_embed(image)) + pos_embed "
            "[B,1+P,W] (before block 0)")
        blocks = []
        for blk in model.visual_encoder.blocks:
            x = blk(x, None)
            blocks.append(x)
        put("vit_block_outs", torch.stack(blocks), "output of each ViT block [depth,B,1+P,W]")
        vit_out = model.visual_encoder(image)
        assert torch.equal(vit_out, blocks[-1])
        put("vit_out", vit_out, "visual_encoder(image) [B,1+P,W] (no final norm in EVA ViT-g)")
        ln_out = model.ln_vision(vit_out)
        put("ln_vision_out", ln_out, "ln_vision(vit_out) [B,1+P,W] (LayerNorm eps 1e-5)")
        qtok = model.query_tokens.expand(image.shape[0], -1, -1)
        put("qformer_embeddings_out", model.Qformer.bert.embeddings(query_embeds=qtok),
            "Q-Former embeddings output = LayerNorm(query_tokens) (eps 1e-12) [B,NQ,QH]")
        atts = torch.ones(ln_out.shape[:-1], dtype=torch.long)
        qout = model.Qformer.bert(query_embeds=qtok, encoder_hidden_states=ln_out,
                                  encoder_attention_mask=atts, return_dict=True,
                                  output_hidden_states=True)
        put("qformer_hidden_states", torch.stack(qout.hidden_states),
            "Q-Former hidden states [layers+1,B,NQ,QH]: index 0 = embeddings output, i = after layer i-1")
        put("qformer_out", qout.last_hidden_state, "Q-Former last_hidden_state [B,NQ,QH]")
        img_embeds = model.llama_proj(qout.last_hidden_state)
        put("img_embeds", img_embeds, "llama_proj(qformer_out) [B,NQ,LH]")
        enc, enc_atts = model.encode_img(image)
        assert torch.equal(enc, img_embeds) and enc_atts.dtype == torch.long
        # EVA pos_embed bicubic interpolation (used when image_size differs from the checkpoint)
        n_side = int(round((vit_out.shape[1] - 1) ** 0.5)) + 2
        fake = types.SimpleNamespace(patch_embed=types.SimpleNamespace(num_patches=n_side * n_side),
                                     pos_embed=torch.zeros(1, n_side * n_side + 1, V["width"]))
        ck = {"pos_embed": model.visual_encoder.pos_embed.detach().clone()}
        eva_vit.interpolate_pos_embed(fake, ck)
        put("pos_embed_interp", ck["pos_embed"],
            "eva_vit.interpolate_pos_embed() of visual_encoder.pos_embed to a %dx%d grid (bicubic, "
            "align_corners=False, cls token kept) [1,1+%d,W]" % (n_side, n_side, n_side * n_side))

    # ---------------------------------------------------------------- training forwards
    llm = model.llama_model
    captured = {}
    orig_forward = llm.forward

    def capturing_forward(*a, **kw):
        for k, v in kw.items():
            if torch.is_tensor(v):
                captured[k] = v.detach().clone()
        out = orig_forward(*a, **kw)
        captured["logits"] = out.logits.detach().clone()
        return out

    tok_calls = []
    real_tok_call = type(model.llama_tokenizer).__call__

    def stage_forward(prefix, prompt_list, end_sym):
        model.prompt_list = list(prompt_list)
        model.end_sym = end_sym
        model.train()
        model.zero_grad(set_to_none=True)
        captured.clear()
        llm.forward = capturing_forward
        samples = {"image": image.clone(), "text_input": list(case["captions"])}
        loss = model(samples)["loss"]
        loss.backward()
        del llm.forward
        model.eval()
        for name, p in model.named_parameters():
            if p.grad is not None:
                assert name.startswith("llama_proj."), name
        t = model.llama_tokenizer([c + end_sym for c in case["captions"]], return_tensors="pt",
                                  padding="longest", truncation=True, max_length=model.max_txt_len,
                                  add_special_tokens=False)
        put(prefix + "loss", loss.detach().reshape(()), "LM loss returned by MiniGPT4.forward (mean CE over "
            "non -100 targets of the whole batch)")
        put(prefix + "inputs_embeds", captured["inputs_embeds"], "inputs_embeds passed to the LLM: "
            "cat(bos_embed, [p_before_embeds], img_embeds, [p_after_embeds], to_regress_embeds) [B,T,LH]")
        put(prefix + "attention_mask", captured["attention_mask"], "attention_mask passed to the LLM [B,T] "
            "(1 for bos/prompt/image, tokenizer mask for the text; 0 = right padding)")
        put(prefix + "targets", captured["labels"], "labels passed to the LLM [B,T]: -100 for bos+prompt+"
            "image positions and for pad (=eos id) text positions, else the text token id")
        put(prefix + "logits", captured["logits"], "LLM logits of this forward [B,T,vocab]")
        put(prefix + "to_regress_ids", t.input_ids, "tokenizer(caption + end_sym, padding='longest', "
            "truncation=True, max_length=32, add_special_tokens=False).input_ids [B,Ttxt] "
            "(right-padded with pad_token_id = eos = 2)")
        put(prefix + "to_regress_mask", t.attention_mask, "matching attention_mask [B,Ttxt]")
        put(prefix + "grad_llama_proj_weight", model.llama_proj.weight.grad,
            "d loss / d llama_proj.weight after loss.backward() (only llama_proj trainable)")
        put(prefix + "grad_llama_proj_bias", model.llama_proj.bias.grad, "d loss / d llama_proj.bias")
        model.zero_grad(set_to_none=True)
        return loss.item()

    stage2_prompt = PROMPT_TEMPLATE.format("<Img><ImageHere></Img> Describe this image in detail.")
    with open(prompt_path) as f:
        first = [p for p in f.read().splitlines() if "<ImageHere>" in p][0]
    assert PROMPT_TEMPLATE.format(first) == stage2_prompt
    p_before, p_after = stage2_prompt.split("<ImageHere>")
    pb = model.llama_tokenizer(p_before, return_tensors="pt", add_special_tokens=False).input_ids
    pa = model.llama_tokenizer(p_after, return_tensors="pt", add_special_tokens=False).input_ids
    put("stage2_prompt_before_ids", pb[0], "llama_tokenizer(p_before, add_special_tokens=False) ids, "
        "p_before = %r" % p_before)
    put("stage2_prompt_after_ids", pa[0], "llama_tokenizer(p_after, add_special_tokens=False) ids, "
        "p_after = %r" % p_after)
    loss2 = stage_forward("stage2_", [stage2_prompt], "###")
    loss1 = stage_forward("stage1_", [], "\n")

    # ---------------------------------------------------------------- chat
    chat = conv_mod.Chat(model, vis_processor=None, device="cpu")
    hardcoded_stops = [s.tolist() for s in chat.stopping_criteria[0].stops]
    conv = conv_mod.CONV_VISION.copy()
    img_list = []
    with torch.no_grad():
        chat.upload_img(image[0], conv, img_list)
    for role, msg in case["chat"]["messages_before"]:
        if role == "Human" and msg.startswith("<Img><ImageHere></Img>"):
            text = msg[len("<Img><ImageHere></Img>"):].strip()
            chat.ask(text, conv)
        else:
            conv.append_message(conv.roles[0] if role == "Human" else conv.roles[1], msg)
    chat.ask(case["chat"]["question"], conv)
    base_conv = conv.copy()

    gen_log = {}
    real_generate = llm.generate

    def forced_generate(**kw):
        gen_log["chat_kwargs"] = {k: (list(v.shape) if torch.is_tensor(v) else
                                      ("<StoppingCriteriaList>" if k == "stopping_criteria" else v))
                                  for k, v in kw.items()}
        kw.update(gen_log["override"])
        gen_log["embs"] = kw["inputs_embeds"].detach().clone()
        out = real_generate(**kw)
        gen_log["out"] = out.detach().clone()
        return out

    llm.generate = forced_generate
    gen_results = {}

    def answer(tag, override, num_beams=1, repetition_penalty=1.0):
        c = base_conv.copy()
        gen_log.clear()
        gen_log["override"] = override
        with torch.no_grad():
            text, tokens = chat.answer(c, img_list, max_new_tokens=16, num_beams=num_beams,
                                       min_length=1, top_p=0.9, repetition_penalty=repetition_penalty,
                                       length_penalty=1, temperature=1.0, max_length=2000)
        gen_results[tag] = {"output_text": text, "output_token": [int(t) for t in tokens],
                            "raw": gen_log["out"][0].tolist(),
                            "generate_kwargs_from_chat": gen_log["chat_kwargs"],
                            "overrides": {k: (v if not isinstance(v, StoppingCriteriaList) else
                                              "see stopping") for k, v in override.items()},
                            "conversation_after": c.messages}
        return gen_log["out"]

    no_stop = StoppingCriteriaList()
    out_greedy = answer("greedy", {"do_sample": False, "stopping_criteria": no_stop})
    prompt_text = base_conv.copy()
    prompt_text.append_message(prompt_text.roles[1], None)
    prompt_str = prompt_text.get_prompt()
    embs = gen_log["embs"]
    segs = prompt_str.split("<ImageHere>")
    seg_ids = [model.llama_tokenizer(s, return_tensors="pt", add_special_tokens=(i == 0)).input_ids[0]
               for i, s in enumerate(segs)]
    put("chat_seg0_ids", seg_ids[0], "ids of the prompt text before <ImageHere> (add_special_tokens="
        "True: starts with bos=1)")
    put("chat_seg1_ids", seg_ids[1], "ids of the prompt text after <ImageHere> (no special tokens)")
    put("chat_embs", embs, "Chat.get_context_emb(): cat(embed(seg0), img_embeds[0], embed(seg1)) [1,T,LH]")
    with torch.no_grad():
        lo = llm(inputs_embeds=embs, return_dict=True, output_hidden_states=True)
    put("chat_logits", lo.logits, "LLM logits over chat_embs (no attention mask given) [1,T,vocab]")
    put("chat_hidden_states", torch.stack(lo.hidden_states), "LLM hidden states [layers+1,1,T,LH]: "
        "0 = input embeddings, i = after decoder layer i (the LAST entry is after the final RMSNorm)")
    put("gen_greedy_ids", out_greedy[0], "llama_model.generate(inputs_embeds=chat_embs, max_new_tokens=16, "
        "num_beams=1, do_sample=False, min_length=1, top_p=0.9, repetition_penalty=1.0, "
        "length_penalty=1, temperature=1.0, NO stopping criteria) -> [1+n]: starts with the "
        "bos id (generate seeds input_ids with bos when only inputs_embeds is given)")
    # greedy margins (robustness of argmax)
    with torch.no_grad():
        margins = []
        e = embs
        ids = out_greedy[0].tolist()[1:]
        for step, tid in enumerate(ids):
            lg = llm(inputs_embeds=e).logits[0, -1]
            top2 = torch.topk(lg, 2).values
            margins.append(float(top2[0] - top2[1]))
            assert int(lg.argmax()) == tid
            e = torch.cat([e, llm.model.embed_tokens(torch.tensor([[tid]]))], dim=1)
    out_beam = answer("beam3", {"do_sample": False, "stopping_criteria": no_stop}, num_beams=3)
    put("gen_beam3_ids", out_beam[0], "same call with num_beams=3, length_penalty=1 (early_stopping "
        "False), NO stopping criteria -> best beam [1+n]")
    out_rep = answer("greedy_rep1p5", {"do_sample": False, "stopping_criteria": no_stop},
                     repetition_penalty=1.5)
    put("gen_greedy_rep1p5_ids", out_rep[0], "greedy with repetition_penalty=1.5 (HF penalises every id "
        "in input_ids, i.e. the seeded bos and the generated ids; the prompt embeddings are not ids)")
    # the penalty math, independent of whether it flips an argmax: processed scores of the
    # last step of the rep=1.5 run (input_ids = bos + the first n-1 generated ids)
    rep_ids = out_rep[:, :-1]
    with torch.no_grad():
        e = torch.cat([embs, llm.model.embed_tokens(rep_ids[:, 1:])], dim=1)
        last_logits = llm(inputs_embeds=e).logits[:, -1, :]
    gc_rep = copy.deepcopy(llm.generation_config)
    gc_rep.update(do_sample=False, min_length=1, repetition_penalty=1.5, num_beams=1,
                  max_new_tokens=16, length_penalty=1)
    from transformers import LogitsProcessorList
    proc_rep = llm._get_logits_processor(generation_config=gc_rep, input_ids_seq_length=1,
                                         encoder_input_ids=rep_ids[:, :1], prefix_allowed_tokens_fn=None,
                                         logits_processor=LogitsProcessorList())
    assert int(proc_rep(rep_ids, last_logits.clone()).argmax()) == int(out_rep[0, -1])
    put("rep1p5_last_step_logits", last_logits[0], "raw LLM logits at the last step of the rep=1.5 run")
    put("rep1p5_last_step_input_ids", rep_ids[0], "input_ids generate holds at that step (bos + "
        "generated ids so far); the repetition penalty applies to exactly these ids")
    put("rep1p5_last_step_scores", proc_rep(rep_ids, last_logits.clone())[0],
        "logits after HF's processors for repetition_penalty=1.5: for every id in input_ids, "
        "score<0 -> score*1.5, else score/1.5 (each id once)")
    out_rep05 = answer("greedy_rep0p5", {"do_sample": False, "stopping_criteria": no_stop},
                       repetition_penalty=0.5)
    put("gen_greedy_rep0p5_ids", out_rep05[0], "greedy with repetition_penalty=0.5 (<1 REWARDS "
        "repeats, so unlike 1.5 it changes the output of this tiny random model)")
    out_chatstop = answer("greedy_chat_stop", {"do_sample": False})
    put("gen_greedy_chatstop_ids", out_chatstop[0], "greedy with Chat's OWN stopping criteria "
        "(hard-coded LLaMA ids [835] and [2277, 29937] meaning '###'; in this tiny vocab they are "
        "arbitrary tokens)")
    greedy_new = out_greedy[0].tolist()[1:]
    k_stop = 5
    stop_seq = greedy_new[k_stop:k_stop + 2]
    custom_stop = StoppingCriteriaList([conv_mod.StoppingCriteriaSub(stops=[torch.tensor(stop_seq)])])
    out_stop = answer("greedy_seq_stop", {"do_sample": False, "stopping_criteria": custom_stop})
    put("gen_greedy_seqstop_ids", out_stop[0], "greedy with StoppingCriteriaSub(stops=[%s]) (the greedy "
        "tokens at new positions %d,%d): generation ends right after the FIRST occurrence of the stop "
        "sequence among the generated ids (it stays in the output)" % (stop_seq, k_stop, k_stop + 1))
    del llm.generate
    # sampling scores at step 0 (what the demo's do_sample=True would sample from)
    gc = copy.deepcopy(llm.generation_config)
    gc.update(do_sample=True, top_p=0.9, temperature=1.0, min_length=1, repetition_penalty=1.0,
              num_beams=1, max_new_tokens=16, length_penalty=1)
    from transformers import LogitsProcessorList
    warper = llm._get_logits_warper(gc)
    first_ids = torch.tensor([[1]])
    processor = llm._get_logits_processor(generation_config=gc, input_ids_seq_length=1,
                                          encoder_input_ids=first_ids, prefix_allowed_tokens_fn=None,
                                          logits_processor=LogitsProcessorList())
    with torch.no_grad():
        s0 = processor(first_ids, lo.logits[:, -1, :].clone())
        s0 = warper(first_ids, s0)
    put("sample_step0_scores", s0[0], "scores the demo (do_sample=True, top_p=0.9, temperature=1.0, "
        "and HF's default top_k=50) samples the first token from: logits processors then warpers "
        "(temperature, top_k=50, top_p=0.9) applied to chat_logits[0,-1]; filtered entries are -inf")
    gen_info = {
        "warpers": [type(w).__name__ for w in warper],
        "processors": [type(p).__name__ for p in processor],
        "greedy_top1_minus_top2_logit_margins": margins,
        "greedy_min_margin": min(margins),
        "chat_hardcoded_stop_ids": hardcoded_stops,
        "tokenizer_encodings_of_###": {
            "'###' (no leading space)": model.llama_tokenizer("###", add_special_tokens=False).input_ids,
            "' ###'": model.llama_tokenizer(" ###", add_special_tokens=False).input_ids,
            "'x###' pieces": model.llama_tokenizer.tokenize("x###"),
        },
        "results": gen_results,
        "custom_stop_sequence": stop_seq,
    }

    # ---------------------------------------------------------------- write io
    io_meta = {"format": "pt", "case": case["name"],
               "content": "inputs and expected outputs; see manifest.json"}
    st_save(os.path.join(out_root, "io.safetensors"), io, io_meta)
    files.append(file_entry(out_root, "io.safetensors", "safetensors",
                            "inputs and expected outputs (F32 unless noted; ids I64)", io, desc))

    # ---------------------------------------------------------------- tokenizer cases
    tcases = []
    tok = model.llama_tokenizer  # pad_token set to eos by MiniGPT-4 (does not change encode)
    for s in TOKENIZER_STRINGS:
        ids_sp = sp.encode(s)
        with_sp = tok(s, add_special_tokens=True).input_ids
        without = tok(s, add_special_tokens=False).input_ids
        tcases.append({
            "text": s,
            "sentencepiece_ids": ids_sp,
            "sentencepiece_pieces": sp.encode(s, out_type=str),
            "sentencepiece_decode": sp.decode(ids_sp),
            "hf_tokenize": tok.tokenize(s),
            "hf_ids_add_special_tokens_true": with_sp,
            "hf_ids_add_special_tokens_false": without,
            "hf_decode_of_ids_with_special": tok.decode(with_sp),
            "hf_decode_of_ids_with_special_skip_special": tok.decode(with_sp, skip_special_tokens=True),
            "hf_decode_of_ids_without_special": tok.decode(without),
        })
    tok_json = {
        "tokenizer_model": "tokenizer.model",
        "vocab_size": vocab,
        "special_ids": {"unk": sp.unk_id(), "bos": sp.bos_id(), "eos": sp.eos_id(), "pad": sp.pad_id()},
        "hf_tokenizer": "transformers LlamaTokenizer (slow, sentencepiece), %s; loaded from vicuna/ "
                        "with use_fast=False, then MiniGPT-4 sets pad_token = eos_token" %
                        PINS[case["tf"]]["version"],
        "notes": [
            "hf_ids_add_special_tokens_true = [bos] + sentencepiece ids (add_bos_token=True, "
            "add_eos_token=False), EXCEPT that the HF slow tokenizer first splits the text on its "
            "special tokens (<s>, </s>, <unk>) and maps them to their ids, while raw sentencepiece "
            "encodes those strings as ordinary characters",
            "decode: special tokens are emitted verbatim, with a space inserted before a special "
            "token that follows normal text; the sentencepiece decoder strips the dummy-prefix "
            "space of the first piece",
            "byte_fallback: characters absent from the vocab become <0xNN> byte pieces (ids 3..258)",
        ],
        "cases": tcases,
    }
    with open(os.path.join(out_root, "tokenizer_cases.json"), "w", encoding="utf-8") as f:
        json.dump(tok_json, f, indent=1, ensure_ascii=False)

    # ---------------------------------------------------------------- conversation cases
    conv_json = conversation_cases(args.refenv, conv_mod)
    with open(os.path.join(out_root, "conversation_cases.json"), "w", encoding="utf-8") as f:
        json.dump(conv_json, f, indent=1, ensure_ascii=False)

    # ---------------------------------------------------------------- caption processor
    cp = BlipCaptionProcessor()
    cap_json = {"processor": "minigpt4.processors.blip_processors.BlipCaptionProcessor(prompt='', "
                             "max_words=50)",
                "used_by": "stage-1 webdataset datasets (laion, cc_sbu) apply it to every caption; "
                           "the stage-2 cc_sbu_align dataset does NOT (raw caption text)",
                "cases": [{"text": s, "output": cp(s)} for s in CAPTION_PROCESSOR_STRINGS]}
    with open(os.path.join(out_root, "caption_processor_cases.json"), "w", encoding="utf-8") as f:
        json.dump(cap_json, f, indent=1, ensure_ascii=False)

    # ---------------------------------------------------------------- image processor
    if case["image_processor"]:
        image_processor_fixture(photos_dir, Blip2ImageEvalProcessor, case)

    # ---------------------------------------------------------------- manifest
    for fn, what in (("tokenizer_cases.json", "tokenizer cases (see file)"),
                     ("conversation_cases.json", "Conversation.get_prompt() cases"),
                     ("caption_processor_cases.json", "BlipCaptionProcessor cases"),
                     ("tokenizer.model", "sentencepiece model (LLaMA-like BPE)")):
        files.append(file_entry(out_root, fn, "json" if fn.endswith("json") else "sentencepiece", what))

    manifest = build_manifest(case, key, vocab, tok_info, files, gen_info, notes, prompt_str,
                              stage2_prompt, loss1, loss2, model, base_conv, dropped, hf_tok)
    with open(os.path.join(out_root, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
    print("wrote", out_root)


def conversation_cases(refenv, conv_mod, sep2023_mod=None):
    """Exact prompt strings of Conversation.get_prompt() for a 2-round chat.

    conv_mod: bbd7883's conversation module (CONV_VISION); sep2023_mod: ef1ac08's (loaded from
    its file when not given)."""
    import importlib.util
    out = {"cases": []}

    def two_rounds(conv, ask, human, assistant, note, source):
        conv = conv.copy()
        steps = []
        conv.append_message(conv.roles[0], "<Img><ImageHere></Img>")  # Chat.upload_img
        ask("What is in this image?", conv)
        conv.append_message(conv.roles[1], None)  # Chat.answer
        steps.append({"after": "upload_img, ask('What is in this image?'), answer() placeholder",
                      "messages": copy.deepcopy(conv.messages), "prompt": conv.get_prompt()})
        conv.messages[-1][1] = "A small red ladybird on a leaf."
        ask("What colour is the leaf?", conv)
        conv.append_message(conv.roles[1], None)
        steps.append({"after": "answer set to 'A small red ladybird on a leaf.', ask('What colour is "
                               "the leaf?'), answer() placeholder",
                      "messages": copy.deepcopy(conv.messages), "prompt": conv.get_prompt()})
        out["cases"].append({"template": note, "source": source,
                             "system": conv.system, "roles": list(conv.roles), "sep": conv.sep,
                             "sep2": conv.sep2, "sep_style": conv.sep_style.name, "steps": steps})

    def ask_of(chat_cls):
        return lambda text, conv: chat_cls.ask(None, text, conv)

    two_rounds(conv_mod.CONV_VISION, ask_of(conv_mod.Chat), "Human", "Assistant",
               "CONV_VISION (Vicuna v0, '###' separator) — the one this case's chat uses",
               "%s@%s minigpt4/conversation/conversation.py" % (PINS["minigpt4"]["repo"],
                                                                PINS["minigpt4"]["commit"][:7]))
    if sep2023_mod is None:
        path = os.path.join(refenv, PINS["minigpt4_llama2"]["dir"], "minigpt4", "conversation",
                            "conversation.py")
        spec = importlib.util.spec_from_file_location("minigpt4_sep2023_conversation", path)
        m2 = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m2)
    else:
        m2 = sep2023_mod
    src2 = "%s@%s minigpt4/conversation/conversation.py" % (PINS["minigpt4_llama2"]["repo"],
                                                          PINS["minigpt4_llama2"]["commit"][:7])
    two_rounds(m2.CONV_VISION_Vicuna0, ask_of(m2.Chat), "Human: ", "Assistant: ",
               "CONV_VISION_Vicuna0 (Sep 2023 code: roles carry ': ', so the open assistant turn "
               "ends with 'Assistant: ' — one trailing space more than CONV_VISION)", src2)
    two_rounds(m2.CONV_VISION_LLama2, ask_of(m2.Chat), "<s>[INST] ", " [/INST] ",
               "CONV_VISION_LLama2 ('[INST]' template, empty separator; note the literal '<s>' text "
               "inside the roles, which the HF slow tokenizer maps to the bos id)", src2)
    return out


def image_processor_fixture(photos_dir, Blip2ImageEvalProcessor, case):
    import numpy as np
    import torch
    from PIL import Image
    from torchvision import transforms
    from torchvision.transforms.functional import InterpolationMode
    proc = Blip2ImageEvalProcessor(image_size=224)
    resize = transforms.Resize((224, 224), interpolation=InterpolationMode.BICUBIC)
    tensors, desc, entries = {}, {}, []
    for i, (fn, src, how) in enumerate(PHOTOS):
        p = os.path.join(photos_dir, fn)
        im = Image.open(p)
        mode = im.mode
        size = im.size
        rgb = im.convert("RGB")
        stem = os.path.splitext(fn)[0]
        tensors[stem + ".decoded_rgb"] = torch.from_numpy(np.asarray(rgb).copy())
        desc[stem + ".decoded_rgb"] = "PIL Image.open(%s).convert('RGB') as uint8 [H,W,3]" % fn
        tensors[stem + ".resized_rgb"] = torch.from_numpy(np.asarray(resize(rgb)).copy())
        desc[stem + ".resized_rgb"] = ("uint8 [224,224,3]: torchvision Resize((224,224), BICUBIC) on the "
                                       "PIL image (= PIL Image.resize BICUBIC, with PIL's antialiasing "
                                       "support scaling when downsampling)")
        tensors[stem + ".pixel_values"] = proc(rgb)
        desc[stem + ".pixel_values"] = ("float32 [3,224,224]: Blip2ImageEvalProcessor(224)(image) = "
                                        "Normalize(mean,std)(ToTensor(resized)); ToTensor divides by 255")
        entries.append({"file": fn, "index": i, "pil_mode": mode, "size_wh": list(size),
                        "bytes": os.path.getsize(p), "sha256": sha256_file(p),
                        "source": "Debian package mate-backgrounds %s: /usr/share/backgrounds/mate/%s"
                                  % (PINS["mate_backgrounds"]["version"], src),
                        "license": PINS["mate_backgrounds"]["license"], "prepared_as": how})
    out = os.path.join(photos_dir, "expected.safetensors")
    st_save(out, tensors, {"format": "pt", "content": "BLIP-2 eval image processor expectations"})
    man = {
        "format": "minigpt4-parity-fixture/image_processor", "format_version": 1,
        "processor": {
            "name": "minigpt4.processors.blip_processors.Blip2ImageEvalProcessor(image_size=224)",
            "steps": ["PIL.Image.open(path).convert('RGB') (alpha is DROPPED, not composited; L is "
                      "replicated; no EXIF orientation is applied)",
                      "torchvision.transforms.Resize((224,224), interpolation=BICUBIC) -> PIL resize",
                      "ToTensor(): HWC uint8 -> CHW float32 / 255",
                      "Normalize(mean=(0.48145466,0.4578275,0.40821073), std=(0.26862954,0.26130258,"
                      "0.27577711))"],
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
        "images": entries,
        "expected": {"path": "expected.safetensors", "bytes": os.path.getsize(out),
                     "sha256": sha256_file(out), "tensors": tensor_entries(tensors, desc)},
        "tolerance": {
            "decoded_rgb": "JPEG decoders may differ by +-1..2 per channel (IDCT/upsampling); PNG exact",
            "resized_rgb": "exact with a PIL-compatible bicubic (a=-0.5, support scaled by the "
                           "downscale factor, two 8-bit passes horizontal then vertical); OpenCV "
                           "INTER_CUBIC (a=-0.75, no antialias) differs by tens of levels when "
                           "downscaling",
            "pixel_values": {"atol": 1e-5, "rtol": 0,
                             "note": "given resized_rgb is exact; one uint8 level = 1/255/std ~ 0.015"},
        },
        "generator": {"torchvision": __import__("torchvision").__version__,
                      "pillow": __import__("PIL").__version__, "minigpt4": pin("minigpt4")},
    }
    with open(os.path.join(photos_dir, "manifest.json"), "w") as f:
        json.dump(man, f, indent=1)


def build_manifest(case, key, vocab, tok_info, files, gen_info, notes, prompt_str, stage2_prompt,
                   loss1, loss2, model, base_conv, dropped, hf_tok):
    V, Q, L = case["vit"], case["qformer"], case["llama"]
    n_patch = (case["image_size"] // V["patch"]) ** 2
    head_dim = L["hidden"] // L["heads"]
    cfg = {
        "image_size": case["image_size"],
        "batch_size": len(case["captions"]),
        "vision": {"class": "minigpt4.models.eva_vit.VisionTransformer via create_eva_vit_g()",
                   "patch_size": V["patch"], "width": V["width"], "depth": V["depth"],
                   "heads": V["heads"], "mlp_ratio": V["mlp_ratio"],
                   "mlp_hidden": int(V["width"] * V["mlp_ratio"]), "num_patches": n_patch,
                   "tokens": n_patch + 1, "qkv_bias": "q_bias and v_bias, key bias zero",
                   "layer_norm_eps": 1e-6, "gelu": "exact (erf) nn.GELU", "final_norm": False,
                   "use_mean_pooling": False, "drop_path_rate": 0, "precision": "fp32",
                   "attention_scale": "head_dim ** -0.5 applied to q before q@k^T"},
        "ln_vision": {"class": "minigpt4.models.blip2.LayerNorm (computes in float32)", "eps": 1e-5},
        "qformer": {"class": "minigpt4.models.Qformer.BertLMHeadModel (LAVIS); MiniGPT-4 sets cls, "
                             "embeddings.word_embeddings, embeddings.position_embeddings, "
                             "layer[i].output, layer[i].intermediate to None",
                    "hidden_size": Q["hidden"], "num_hidden_layers": Q["layers"],
                    "num_attention_heads": Q["heads"], "intermediate_size": Q["intermediate"],
                    "cross_attention_freq": Q["cross_attention_freq"],
                    "cross_attention_layers": [i for i in range(Q["layers"])
                                               if i % Q["cross_attention_freq"] == 0],
                    "encoder_width": V["width"], "num_query_token": Q["num_query_token"],
                    "layer_norm_eps": 1e-12, "hidden_act": "gelu (exact erf)",
                    "vocab_size_text_branch": Q["vocab_size"],
                    "max_position_embeddings": Q["max_position_embeddings"],
                    "attention": "self-attention over the queries without mask; cross-attention "
                                 "queries -> ln_vision_out with an all-ones encoder mask; "
                                 "post-LN residual blocks (BERT)"},
        "llama": {"class": ("minigpt4.models.modeling_llama.LlamaForCausalLM (MiniGPT-4's copy of "
                            "transformers 4.28 LLaMA)") if case["llm_impl"] == "minigpt4" else
                  "transformers.LlamaForCausalLM (%s)" % PINS[case["tf"]]["version"],
                  "vocab_size": vocab, "hidden_size": L["hidden"], "num_hidden_layers": L["layers"],
                  "num_attention_heads": L["heads"],
                  "num_key_value_heads": L["kv_heads"] if L["kv_heads"] else L["heads"],
                  "head_dim": head_dim, "intermediate_size": L["intermediate"],
                  "rms_norm_eps": L["rms_eps"], "rope_theta": 10000.0, "rope": "rotate_half (GPT-NeoX "
                  "style: first half/second half of head_dim), cos/sin cached in float32",
                  "hidden_act": "silu", "tie_word_embeddings": False,
                  "max_position_embeddings": L["max_position_embeddings"],
                  "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
        "llama_proj": {"in": Q["hidden"], "out": L["hidden"], "bias": True},
        "minigpt4": {"from_config": {"image_size": case["image_size"], "num_query_token": Q["num_query_token"],
                                     "vit_precision": "fp32", "freeze_vit": True, "freeze_qformer": True,
                                     "max_txt_len": 32, "low_resource": False,
                                     "prompt_template": PROMPT_TEMPLATE,
                                     "prompt_path": "prompts/alignment.txt (MiniGPT-4 repo)"},
                     "stage2": {"prompt": stage2_prompt, "end_sym": "###", "max_txt_len": 32,
                                "how_fixed": "model.prompt_list = [prompt] so random.choice() returns it "
                                             "(it is prompt_list[0] of prompts/alignment.txt)"},
                     "stage1": {"prompt": None, "end_sym": "\n", "max_txt_len": 32,
                                "how": "model.prompt_list = []"},
                     "captions": case["captions"],
                     "llama_tokenizer": {"class": "LlamaTokenizer (slow)", "padding_side": "right",
                                         "pad_token": "</s> (MiniGPT-4 sets pad_token = eos_token)",
                                         "pad_token_id": 2}},
    }
    tol = {
        "default": {"atol": 1e-4, "rtol": 1e-4},
        "per_tensor": {
            "image": {"atol": 0, "rtol": 0, "note": "input"},
            "*loss": {"atol": 1e-5, "rtol": 1e-5},
            "*grad_llama_proj_*": {"atol": 1e-5, "rtol": 1e-3},
            "*logits": {"atol": 2e-4, "rtol": 1e-4},
            "*ids / *targets / *mask": "exact (integers)",
            "sample_step0_scores": "finite entries atol 2e-4; the set of -inf entries must match exactly",
        },
        "note": "float32 on CPU. Values are O(1) by construction (see max_abs per tensor). "
                "Generation ids must match exactly; greedy_min_margin in 'generation' tells how far "
                "the greedy argmax was from a tie.",
    }
    chat = {
        "image_index": 0,
        "template": "CONV_VISION (Vicuna v0, '###')",
        "messages": base_conv.messages + [[base_conv.roles[1], None]],
        "prompt": prompt_str,
        "max_new_tokens": 16,
        "answer_postprocessing": "Chat.answer: drop a leading 0 then a leading 1 from outputs[0], "
                                 "decode, split('###')[0], split('Assistant:')[-1].strip()",
        "demo_differences": "the real Chat.answer calls generate(do_sample=True); the fixtures force "
                            "do_sample=False (everything else is passed unchanged from Chat.answer) "
                            "and replace the stopping criteria as listed per result",
    }
    chat.update(gen_info)
    return {
        "format": "minigpt4-parity-fixture",
        "format_version": 1,
        "case": case["name"],
        "description": "Tiny MiniGPT-4 (EVA ViT + ln_vision + Q-Former + llama_proj + LLaMA) with "
                       "seeded random float32 weights, built and run by the original Python code.",
        "generator": versions_block(case["tf"]),
        "seed": case["seed"],
        "weight_init": "every parameter drawn from torch.Generator(seed*1000003 + crc32(full name)): "
                       "LayerNorm/RMSNorm weight 1+0.1N, bias 0.1N; Linear/Conv weight N(0,1/fan_in); "
                       "biases (incl. q_bias, v_bias) 0.1N; embeddings N(0,1); pos_embed, cls_token "
                       "0.5N; query_tokens N(0,1); lm_head N(0, 4/hidden)",
        "config": cfg,
        "tokenizer": dict(tok_info, vocab_size=vocab),
        "files": files,
        "training": {"stage2_loss": loss2, "stage1_loss": loss1},
        "generation": chat,
        "tolerance": tol,
        "blip2_keys_ignored_by_minigpt4": dropped,
        "notes": notes + [
            "io.safetensors tensor meanings are under files[path=io.safetensors].tensors[].meaning",
            "Chat prompt tokens: only the FIRST segment gets bos (add_special_tokens=i==0)",
            "Training sequence layout per sample: [bos] + prompt_before + image(NQ) + prompt_after + "
            "text tokens + right padding; stage 1 has no prompt parts. The prompt is identical for the "
            "whole batch, so padding only occurs at the end.",
        ],
    }


# ======================================================================================
# Sanity check: reload written files and re-run the forward pieces
# ======================================================================================
def run_check(args, key):
    case = CASES[key]
    enter_refenv(args.refenv, case["tf"])
    import torch
    import transformers
    patch_transformers_without_tokenizers()
    import minigpt4.models  # noqa: F401
    out_root = os.path.join(OUT_ROOT, case["outdir"])
    io, meta = st_load(os.path.join(out_root, "io.safetensors"))
    full, _ = st_load(os.path.join(out_root, "minigpt4_full.safetensors"))
    man = json.load(open(os.path.join(out_root, "manifest.json")))
    # 1) every listed file exists with the recorded hash
    for fe in man["files"]:
        p = os.path.join(out_root, fe["path"])
        assert sha256_file(p) == fe["sha256"], fe["path"]
    # 2) .pth and .safetensors twins agree; split files agree with the full state dict
    evapth = torch.load(os.path.join(out_root, "eva_vit_g.pth"), map_location="cpu")
    evast, _ = st_load(os.path.join(out_root, "eva_vit_g.safetensors"))
    for k, v in evapth.items():
        assert torch.equal(v, evast[k]) and torch.equal(v, full["visual_encoder." + k]), k
    blip = torch.load(os.path.join(out_root, "blip2_pretrained.pth"), map_location="cpu")["model"]
    for k, v in full.items():
        if k.startswith(("Qformer.", "ln_vision.", "query_tokens")):
            assert torch.equal(v, blip[k]), k
    proj = torch.load(os.path.join(out_root, "pretrained_minigpt4.pth"), map_location="cpu")["model"]
    projst, _ = st_load(os.path.join(out_root, "pretrained_minigpt4.safetensors"))
    for k in ("llama_proj.weight", "llama_proj.bias"):
        assert torch.equal(proj[k], full[k]) and torch.equal(projst[k], full[k]), k
    # 3) HF dirs load through transformers and reproduce the chat logits
    if case["llm_impl"] == "minigpt4":
        import minigpt4.models.modeling_llama as llama_mod
        LlamaCls = llama_mod.LlamaForCausalLM
    else:
        LlamaCls = transformers.LlamaForCausalLM
    for d in ("vicuna", "vicuna_bin", "vicuna_bin_sharded"):
        m = LlamaCls.from_pretrained(os.path.join(out_root, d), torch_dtype=torch.float32).eval()
        for k, v in m.state_dict().items():
            assert torch.equal(v, full["llama_model." + k]), (d, k)
        with torch.no_grad():
            lg = m(inputs_embeds=io["chat_embs"]).logits
            assert torch.equal(lg, io["chat_logits"]), d
            g = m.generate(inputs_embeds=io["chat_embs"], max_new_tokens=16, num_beams=1,
                           do_sample=False, min_length=1, top_p=0.9, repetition_penalty=1.0,
                           length_penalty=1, temperature=1.0)
            assert torch.equal(g[0], io["gen_greedy_ids"]), (d, g, io["gen_greedy_ids"])
            b = m.generate(inputs_embeds=io["chat_embs"], max_new_tokens=16, num_beams=3,
                           do_sample=False, min_length=1, top_p=0.9, repetition_penalty=1.0,
                           length_penalty=1, temperature=1.0)
            assert torch.equal(b[0], io["gen_beam3_ids"]), d
        tok = transformers.LlamaTokenizer.from_pretrained(os.path.join(out_root, d), use_fast=False)
        assert tok.vocab_size == man["tokenizer"]["vocab_size"]
    # 4) rebuild the vision/Q-Former path from minigpt4_full.safetensors with fresh modules
    import minigpt4.models.eva_vit as eva_vit
    import minigpt4.models.blip2 as blip2
    from minigpt4.models.Qformer import BertConfig, BertLMHeadModel
    from functools import partial
    import torch.nn as nn
    V, Q = case["vit"], case["qformer"]
    vit = eva_vit.VisionTransformer(img_size=case["image_size"], patch_size=14, use_mean_pooling=False,
                                    embed_dim=V["width"], depth=V["depth"], num_heads=V["heads"],
                                    mlp_ratio=4.3637, qkv_bias=True, drop_path_rate=0,
                                    norm_layer=partial(nn.LayerNorm, eps=1e-6))
    vit.load_state_dict({k[len("visual_encoder."):]: v for k, v in full.items()
                         if k.startswith("visual_encoder.")})
    ln = blip2.LayerNorm(V["width"])
    ln.load_state_dict({"weight": full["ln_vision.weight"], "bias": full["ln_vision.bias"]})
    bc = BertConfig(vocab_size=Q["vocab_size"], hidden_size=Q["hidden"], num_hidden_layers=Q["layers"],
                    num_attention_heads=Q["heads"], intermediate_size=Q["intermediate"],
                    max_position_embeddings=Q["max_position_embeddings"])
    bc.encoder_width = V["width"]
    bc.add_cross_attention = True
    bc.cross_attention_freq = Q["cross_attention_freq"]
    bc.query_length = Q["num_query_token"]
    qf = BertLMHeadModel(bc)
    missing, unexpected = qf.load_state_dict({k[len("Qformer."):]: v for k, v in full.items()
                                              if k.startswith("Qformer.")}, strict=False)
    assert not unexpected, unexpected
    assert all(m.startswith(("cls.", "bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings"))
               or ".intermediate." in m or ".output." in m for m in missing), missing
    vit.eval(), qf.eval()
    with torch.no_grad():
        vo = vit(io["image"])
        assert torch.equal(vo, io["vit_out"])
        lo = ln(vo)
        assert torch.equal(lo, io["ln_vision_out"])
        qo = qf.bert(query_embeds=full["query_tokens"].expand(vo.shape[0], -1, -1),
                     encoder_hidden_states=lo,
                     encoder_attention_mask=torch.ones(lo.shape[:-1], dtype=torch.long),
                     return_dict=True).last_hidden_state
        assert torch.equal(qo, io["qformer_out"])
        ie = torch.nn.functional.linear(qo, full["llama_proj.weight"], full["llama_proj.bias"])
        assert torch.equal(ie, io["img_embeds"])
    print("check %s: OK (%d io tensors, %d weights)" % (case["name"], len(io), len(full)))


# ======================================================================================
# Case D: MiniGPT-4's LLaMA-2 variant without Q-Former (ef1ac08 code, transformers 4.28.0)
# ======================================================================================
def run_case_llama2(args, key):
    case = CASES[key]
    enter_refenv(args.refenv, case["tf"], case["hub"], case["minigpt4"])

    import importlib.util
    import torch
    import torch.nn as nn
    from omegaconf import OmegaConf
    from PIL import Image
    import transformers
    from transformers import LlamaConfig, LlamaTokenizer, GenerationConfig
    from transformers import StoppingCriteriaList, LogitsProcessorList

    assert transformers.__version__ == PINS[case["tf"]]["version"], transformers.__version__
    patch_transformers_without_tokenizers()
    import minigpt4.models  # noqa: F401  (runs minigpt4/models/__init__.py)
    import minigpt4.models.eva_vit as eva_vit
    import minigpt4.models.blip2 as blip2
    import minigpt4.models.mini_gpt4 as mg
    from minigpt4.processors.blip_processors import Blip2ImageEvalProcessor, BlipCaptionProcessor
    import minigpt4.conversation.conversation as conv_mod
    assert mg.LlamaForCausalLM is transformers.LlamaForCausalLM  # ef1ac08 uses transformers' LLaMA
    LlamaCls = transformers.LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(2)
    out_root = os.path.join(OUT_ROOT, case["outdir"])
    shutil.rmtree(out_root, ignore_errors=True)
    os.makedirs(out_root)
    work = os.path.join(args.refenv, "work", case["name"])
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    seed = case["seed"]
    V, L = case["vit"], case["llama"]
    notes = []

    # ---------------------------------------------------------------- tokenizer
    tok_info = train_tokenizer(os.path.join(work, "tokenizer"), case["vocab_size"], work)
    tok_model = os.path.join(out_root, "tokenizer.model")
    shutil.copy(os.path.join(work, "tokenizer.model"), tok_model)
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=tok_model)
    vocab = sp.get_piece_size()
    assert vocab == case["vocab_size"], vocab

    # ---------------------------------------------------------------- patches
    # 1) EVA ViT-g as in case A: only embed_dim / depth / num_heads are shrunk; the download
    #    of eva_vit_g.pth is pointed at our local file.
    real_vt = eva_vit.VisionTransformer
    eva_path = [None]

    def tiny_vit(**kw):
        assert kw["patch_size"] == 14 and kw["mlp_ratio"] == 4.3637 and kw["qkv_bias"]
        kw.update(embed_dim=V["width"], depth=V["depth"], num_heads=V["heads"])
        return real_vt(**kw)

    eva_vit.VisionTransformer = tiny_vit
    eva_vit.download_cached_file = lambda url, check_hash=True, progress=False: eva_path[0]
    # 2) the unused BERT tokenizer (self.tokenizer = self.init_tokenizer()) is skipped
    blip2.Blip2Base.init_tokenizer = classmethod(lambda cls: None)

    # 3) has_qformer False must never build a Q-Former nor read the BLIP-2 checkpoint (the only
    #    place ln_vision could be loaded from): make both fail loudly if they are reached.
    def _no_qformer(*a, **k):
        raise AssertionError("has_qformer=False reached the Q-Former / BLIP-2 loading code")

    blip2.Blip2Base.init_Qformer = classmethod(_no_qformer)
    blip2.Blip2Base.load_from_pretrained = _no_qformer

    # 4) LLaMA is loaded with torch_dtype=torch.float16; we need float32.
    class _LlamaFp32Loader:
        @staticmethod
        def from_pretrained(path, **kw):
            assert kw.get("torch_dtype") == torch.float16
            kw["torch_dtype"] = torch.float32
            return LlamaCls.from_pretrained(path, **kw)

    mg.LlamaForCausalLM = _LlamaFp32Loader

    # ---------------------------------------------------------------- seed modules
    empty_sd = os.path.join(work, "empty.pth")
    torch.save({}, empty_sd)
    eva_path[0] = empty_sd
    vit = eva_vit.create_eva_vit_g(case["image_size"], 0.0, False, "fp32")
    n_patch = vit.patch_embed.num_patches
    assert n_patch % 4 == 0, n_patch
    lcfg = LlamaConfig(vocab_size=vocab, hidden_size=L["hidden"], intermediate_size=L["intermediate"],
                       num_hidden_layers=L["layers"], num_attention_heads=L["heads"],
                       hidden_act="silu", max_position_embeddings=L["max_position_embeddings"],
                       initializer_range=0.02, rms_norm_eps=L["rms_eps"], use_cache=True,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    assert L["kv_heads"] is None and not hasattr(lcfg, "num_key_value_heads")
    llama = LlamaCls(lcfg)
    llama_proj = nn.Linear(4 * V["width"], L["hidden"])
    randomize_module(vit, seed, "visual_encoder.",
                     special={"visual_encoder.pos_embed": ("normal", 0.5),
                              "visual_encoder.cls_token": ("normal", 0.5)})
    randomize_module(llama, seed, "llama_model.",
                     special={"llama_model.lm_head.weight": ("normal", 2.0 / L["hidden"] ** 0.5)})
    randomize_module(llama_proj, seed, "llama_proj.")
    with torch.no_grad():
        llama.lm_head.weight[2] *= case["eos_row_scale"]

    # ---------------------------------------------------------------- split files
    files = []
    vit_sd = {k: v.clone() for k, v in vit.state_dict().items()}
    torch.save(vit_sd, os.path.join(out_root, "eva_vit_g.pth"))
    st_save(os.path.join(out_root, "eva_vit_g.safetensors"), vit_sd,
            {"format": "pt", "content": "EVA ViT visual_encoder state dict (eva_vit.py names)"})
    files.append(file_entry(out_root, "eva_vit_g.pth", "torch.save (zip) of a flat state dict",
                            "visual encoder weights as LAVIS' eva_vit_g.pth holds them: flat "
                            "{name: tensor}, eva_vit.py names, float32 here",
                            vit_sd, describe=describe_weight))
    files.append(file_entry(out_root, "eva_vit_g.safetensors", "safetensors",
                            "same tensors as eva_vit_g.pth", vit_sd, describe=describe_weight))
    proj_sd = {"llama_proj." + k: v.clone() for k, v in llama_proj.state_dict().items()}
    torch.save({"model": proj_sd}, os.path.join(out_root, "pretrained_minigpt4.pth"))
    st_save(os.path.join(out_root, "pretrained_minigpt4.safetensors"), proj_sd,
            {"format": "pt", "content": "MiniGPT-4 checkpoint 'model' dict (llama_proj only)"})
    files.append(file_entry(out_root, "pretrained_minigpt4.pth",
                            "torch.save (zip) of {'model': state_dict}",
                            "MiniGPT-4 (LLaMA-2) released-checkpoint layout: {'model': {'llama_proj.weight' "
                            "[LH, 4*W], 'llama_proj.bias'}} (loaded with strict=False over the whole "
                            "model); it holds NO ln_vision",
                            {"model/" + k: v for k, v in proj_sd.items()}, describe=describe_weight))
    files.append(file_entry(out_root, "pretrained_minigpt4.safetensors", "safetensors",
                            "same tensors as pretrained_minigpt4.pth['model']", proj_sd,
                            describe=describe_weight))

    hf_sd = {k: v.clone() for k, v in llama.state_dict().items()}
    hf_tok = LlamaTokenizer(vocab_file=tok_model)
    gen_cfg = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    hdir = os.path.join(out_root, case["hf_dir"])
    os.makedirs(hdir)
    lcfg.architectures = ["LlamaForCausalLM"]
    lcfg.torch_dtype = "float32"
    lcfg.save_pretrained(hdir)
    gen_cfg.save_pretrained(hdir)
    hf_tok.save_pretrained(hdir)
    layers = L["layers"]
    first_half = [k for k in hf_sd if k.startswith("model.embed_tokens") or any(
        k.startswith("model.layers.%d." % i) for i in range(layers // 2 + layers % 2))]
    second_half = [k for k in hf_sd if k not in first_half]
    st_sd = {k: v for k, v in hf_sd.items() if not k.endswith("rotary_emb.inv_freq")}
    weight_map, total = {}, 0
    for i, names in enumerate((first_half, second_half)):
        shard = "model-%05d-of-00002.safetensors" % (i + 1)
        part = {k: st_sd[k] for k in names if k in st_sd}
        st_save(os.path.join(hdir, shard), part, {"format": "pt"})
        for k in part:
            weight_map[k] = shard
            total += part[k].numel() * part[k].element_size()
    with open(os.path.join(hdir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                  f, indent=2)

    # ---------------------------------------------------------------- build the real model
    eva_path[0] = os.path.join(out_root, "eva_vit_g.pth")
    prompt_path = os.path.join(args.refenv, PINS[case["minigpt4"]]["dir"], "prompts", "alignment.txt")
    # the keys of minigpt4/configs/models/minigpt4_llama2.yaml + train_configs/minigpt4_llama2_
    # stage2_finetune.yaml, with vit_precision fp32, max_txt_len 32 and our local paths.
    # q_former_model is left at its default URL: it must not be touched (see patch 3).
    cfg = OmegaConf.create({
        "arch": "mini_gpt4", "model_type": "pretrain_llama2", "image_size": case["image_size"],
        "drop_path_rate": 0, "use_grad_checkpoint": False, "vit_precision": "fp32",
        "freeze_vit": True, "has_qformer": False, "prompt": "",
        "llama_model": hdir, "prompt_path": prompt_path, "prompt_template": PROMPT_TEMPLATE_LLAMA2,
        "max_txt_len": 32, "end_sym": "</s>", "low_resource": False, "device_8bit": 0,
        "ckpt": os.path.join(out_root, "pretrained_minigpt4.pth"),
    })
    model = mg.MiniGPT4.from_config(cfg)
    model.eval()
    assert model.has_qformer is False and not hasattr(model, "Qformer")
    full_sd = model.state_dict()
    assert torch.equal(model.ln_vision.weight, torch.ones(V["width"])) and \
        torch.equal(model.ln_vision.bias, torch.zeros(V["width"])), "ln_vision is not default-initialised"
    seed_full = {"visual_encoder." + k: v for k, v in vit_sd.items()}
    seed_full["ln_vision.weight"] = torch.ones(V["width"])
    seed_full["ln_vision.bias"] = torch.zeros(V["width"])
    seed_full.update({"llama_model." + k: v for k, v in hf_sd.items()})
    seed_full.update(proj_sd)
    assert sorted(full_sd) == sorted(seed_full), sorted(set(full_sd) ^ set(seed_full))
    for k, v in full_sd.items():
        assert torch.equal(v, seed_full[k]), "weight mismatch after loading: " + k
    pad_id = model.llama_tokenizer.pad_token_id
    assert model.llama_tokenizer.pad_token == "$$"
    assert pad_id == model.llama_tokenizer.convert_tokens_to_ids("$$") == sp.piece_to_id("$$")
    dollar_in_vocab = sp.piece_to_id("$$") != sp.unk_id()
    notes.append("The model was built by MiniGPT4.from_config() (ef1ac08, has_qformer False) from the "
                 "split files (eva_vit_g.pth, %s/ safetensors shards, pretrained_minigpt4.pth); its "
                 "state_dict equals the seeded weights exactly (checked key by key). No Q-Former was "
                 "built and no BLIP-2 checkpoint was read (Blip2Base.init_Qformer and "
                 "load_from_pretrained were replaced by functions that fail)." % case["hf_dir"])
    notes.append("ln_vision is NEVER loaded for this variant: it keeps nn.LayerNorm's default init "
                 "(weight 1, bias 0) -- it is still a normalisation (eps 1e-5), not an identity. "
                 "minigpt4_full.safetensors lists it (ones/zeros); no other file holds it.")
    st_save(os.path.join(out_root, "minigpt4_full.safetensors"), dict(full_sd),
            {"format": "pt", "content": "MiniGPT4.state_dict() (MiniGPT-4 key names)",
             "case": case["name"]})
    files.insert(0, file_entry(out_root, "minigpt4_full.safetensors", "safetensors",
                               "MiniGPT4.state_dict() of the assembled model (has_qformer False), "
                               "MiniGPT-4's own key names: visual_encoder.*, ln_vision.* (default "
                               "init ones/zeros: never loaded), llama_proj.*, llama_model.* incl. "
                               "the llama_model.model.layers.N.self_attn.rotary_emb.inv_freq buffers. "
                               "No Qformer.* / query_tokens.",
                               dict(full_sd), describe=describe_weight))
    rel = case["hf_dir"]
    for fn in sorted(os.listdir(hdir)):
        p = os.path.join(hdir, fn)
        tens = st_load(p)[0] if fn.endswith(".safetensors") else None
        files.append(file_entry(out_root, rel + "/" + fn,
                                "safetensors" if tens is not None else "json/sentencepiece",
                                "HF LLaMA directory %s/ (LLaMA-2 style weights; named and laid out "
                                "as tiny_vicuna0's vicuna/): two safetensors shards + "
                                "model.safetensors.index.json; the rotary_emb.inv_freq buffers are "
                                "OMITTED" % rel, tens,
                                describe=describe_weight))

    # ---------------------------------------------------------------- image + module outputs
    photos_dir = os.path.join(OUT_ROOT, CASES["a"]["outdir"], "image_processor")
    for fn in case["batch_photos"]:
        assert os.path.exists(os.path.join(photos_dir, fn)), "run case-a first (photos): " + fn
    io, desc = {}, {}

    def put(name, t, meaning):
        io[name] = t.detach().cpu().contiguous().clone()
        desc[name] = meaning

    proc_small = Blip2ImageEvalProcessor(image_size=case["image_size"])
    image = torch.stack([proc_small(Image.open(os.path.join(photos_dir, fn)).convert("RGB"))
                         for fn in case["batch_photos"]])
    put("image", image, "input images [B,3,S,S]: tiny_vicuna0/image_processor photos %s through "
        "MiniGPT-4's Blip2ImageEvalProcessor(image_size=%d) (Resize((S,S), BICUBIC) on the PIL image, "
        "ToTensor, Normalize(CLIP mean/std))" % (case["batch_photos"], case["image_size"]))
    B = image.shape[0]
    W = V["width"]
    with torch.no_grad():
        x = model.visual_encoder.patch_embed(image)
        x = torch.cat((model.visual_encoder.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + model.visual_encoder.pos_embed
        put("vit_tokens_in", x, "ViT input tokens: cat(cls_token, patch_embed(image)) + pos_embed "
            "[B,1+P,W] (before block 0)")
        blocks = []
        for blk in model.visual_encoder.blocks:
            x = blk(x, None)
            blocks.append(x)
        put("vit_block_outs", torch.stack(blocks), "output of each ViT block [depth,B,1+P,W]")
        vit_out = model.visual_encoder(image)
        assert torch.equal(vit_out, blocks[-1])
        put("vit_out", vit_out, "visual_encoder(image) [B,1+P,W] (no final norm in EVA ViT-g)")
        ln_out = model.ln_vision(vit_out)
        put("ln_vision_out", ln_out, "ln_vision(vit_out) [B,1+P,W]: LayerNorm eps 1e-5 with its DEFAULT "
            "init weight=1, bias=0 (never loaded for has_qformer False)")
        grouped = ln_out[:, 1:, :].reshape(B, n_patch // 4, 4 * W)
        # the same thing spelled out: group g = concat(patch 4g, 4g+1, 4g+2, 4g+3) (raster order)
        spelled = torch.stack([torch.cat([ln_out[:, 1 + 4 * g + j, :] for j in range(4)], dim=-1)
                               for g in range(n_patch // 4)], dim=1)
        assert torch.equal(grouped, spelled)
        put("image_tokens_concat4", grouped, "ln_vision_out[:, 1:, :] (cls token DROPPED) viewed as "
            "[B,P/4,4W]: image token g = concat(patch tokens 4g, 4g+1, 4g+2, 4g+3) along the feature "
            "axis, patches in flat raster (row-major) order -- NOT 2x2 squares")
        img_embeds = model.llama_proj(grouped)
        put("img_embeds", img_embeds, "llama_proj(image_tokens_concat4) [B,P/4,LH] = "
            "MiniGPT4.encode_img(image)[0]")
        enc, enc_atts = model.encode_img(image)
        assert torch.equal(enc, img_embeds) and enc_atts.dtype == torch.long
        assert tuple(enc_atts.shape) == (B, n_patch // 4) and bool((enc_atts == 1).all())
        n_side = int(round(n_patch ** 0.5)) + 2
        fake = types.SimpleNamespace(patch_embed=types.SimpleNamespace(num_patches=n_side * n_side),
                                     pos_embed=torch.zeros(1, n_side * n_side + 1, W))
        ck = {"pos_embed": model.visual_encoder.pos_embed.detach().clone()}
        eva_vit.interpolate_pos_embed(fake, ck)
        put("pos_embed_interp", ck["pos_embed"],
            "eva_vit.interpolate_pos_embed() of visual_encoder.pos_embed to a %dx%d grid (bicubic, "
            "align_corners=False, cls token kept) [1,1+%d,W]" % (n_side, n_side, n_side * n_side))
        # a patch count that is not a multiple of 4 is an error in encode_img (view fails)
        real_ve = model.visual_encoder
        odd_error = None
        try:
            class _NinePatchViT(nn.Module):  # a ViT output with 9 patch tokens (+ cls)
                def forward(self, img):
                    return torch.zeros(img.shape[0], 1 + 9, W)

            model.visual_encoder = _NinePatchViT()
            model.encode_img(image[:1])
        except RuntimeError as e:
            odd_error = str(e)
        finally:
            model.visual_encoder = real_ve
        assert odd_error is not None
        notes.append("encode_img with a patch count that is not a multiple of 4 (here a fake ViT "
                     "output of 1+9 tokens) raises in image_embeds.view(bs, int(pn / 4), int(hs * 4)): "
                     "RuntimeError %r" % odd_error)

    # ---------------------------------------------------------------- training forwards
    llm = model.llama_model
    captured = {}
    orig_forward = llm.forward

    def capturing_forward(*a, **kw):
        for k, v in kw.items():
            if torch.is_tensor(v):
                captured[k] = v.detach().clone()
        out = orig_forward(*a, **kw)
        captured["logits"] = out.logits.detach().clone()
        return out

    mask_dtypes = {}

    def stage_forward(prefix, prompt_list, end_sym, instructions=None, what="", keep_logits=True):
        model.prompt_list = list(prompt_list)
        model.end_sym = end_sym
        model.train()
        model.zero_grad(set_to_none=True)
        captured.clear()
        llm.forward = capturing_forward
        samples = {"image": image.clone(), "answer": list(case["captions"])}
        if instructions is not None:
            samples["instruction_input"] = list(instructions)
        loss = model(samples)["loss"]
        loss.backward()
        del llm.forward
        model.eval()
        for name, p in model.named_parameters():
            if p.grad is not None:
                assert name.startswith("llama_proj."), name
        t = model.llama_tokenizer([c + end_sym for c in case["captions"]], return_tensors="pt",
                                  padding="longest", truncation=True, max_length=model.max_txt_len,
                                  add_special_tokens=False)
        mask_dtypes[prefix] = str(captured["attention_mask"].dtype)
        put(prefix + "loss", loss.detach().reshape(()), "LM loss returned by MiniGPT4.forward (mean CE "
            "over the non -100 targets of the whole batch)" + what)
        put(prefix + "inputs_embeds", captured["inputs_embeds"], "inputs_embeds passed to the LLM [B,T,LH]"
            + what)
        put(prefix + "attention_mask", captured["attention_mask"].long(), "attention_mask passed to the "
            "LLM [B,T] (stored as I64; the original passes %s)" % captured["attention_mask"].dtype + what)
        put(prefix + "targets", captured["labels"], "labels passed to the LLM [B,T]: -100 for bos, "
            "prompt, image and padding positions; the caption+end_sym token ids elsewhere (the end "
            "token is a target: padding uses the '$$' pad id %d, not eos)" % pad_id + what)
        if keep_logits:
            put(prefix + "logits", captured["logits"], "LLM logits of this forward [B,T,vocab]" + what)
        put(prefix + "to_regress_ids", t.input_ids, "llama_tokenizer(caption + end_sym, padding='longest', "
            "truncation=True, max_length=32, add_special_tokens=False).input_ids [B,Ttxt], right-padded "
            "with pad_token_id = convert_tokens_to_ids('$$') = %d" % pad_id)
        put(prefix + "to_regress_mask", t.attention_mask, "matching attention_mask [B,Ttxt]")
        put(prefix + "grad_llama_proj_weight", model.llama_proj.weight.grad,
            "d loss / d llama_proj.weight after loss.backward() (only llama_proj trainable)" + what)
        put(prefix + "grad_llama_proj_bias", model.llama_proj.bias.grad, "d loss / d llama_proj.bias" + what)
        model.zero_grad(set_to_none=True)
        return loss.item()

    stage2_prompt = PROMPT_TEMPLATE_LLAMA2.format("<Img><ImageHere></Img> Describe this image in detail.")
    assert stage2_prompt in model.prompt_list and model.prompt_list[0] == stage2_prompt
    p_before, p_after = stage2_prompt.split("<ImageHere>")
    pb = model.llama_tokenizer(p_before, return_tensors="pt", add_special_tokens=False).input_ids
    pa = model.llama_tokenizer(p_after, return_tensors="pt", add_special_tokens=False).input_ids
    put("stage2_prompt_before_ids", pb[0], "llama_tokenizer(p_before, add_special_tokens=False) ids, "
        "p_before = %r" % p_before)
    put("stage2_prompt_after_ids", pa[0], "llama_tokenizer(p_after, add_special_tokens=False) ids, "
        "p_after = %r" % p_after)
    loss2 = stage_forward("stage2_", [stage2_prompt], "</s>")
    loss1 = stage_forward("stage1_", [], "\n")
    for i, ins in enumerate(case["instructions"]):
        b_, a_ = ins.split("<ImageHere>")
        put("instr_prompt%d_before_ids" % i, model.llama_tokenizer(b_, return_tensors="pt",
            add_special_tokens=False).input_ids[0], "instruction %d: ids of %r (no special tokens)" % (i, b_))
        put("instr_prompt%d_after_ids" % i, model.llama_tokenizer(a_, return_tensors="pt",
            add_special_tokens=False).input_ids[0], "instruction %d: ids of %r (no special tokens)" % (i, a_))
    loss_i = stage_forward("instr_", [], "</s>", instructions=case["instructions"], keep_logits=False,
                           what=" -- per-sample instructions of different lengths "
                                "(samples['instruction_input'], prompt_list empty, end_sym '</s>'): row i = "
                                "[bos, instr_i_before, image, instr_i_after, text_i, text pad, then the "
                                "prompt padding (pad embedding, mask 0, target -100)]")
    pad_embed = llm.model.embed_tokens.weight[pad_id].detach()
    put("pad_embed", pad_embed, "embed_tokens(pad_token_id) [LH]: prompt_wrap fills the short "
        "instruction rows with this embedding (visible in instr_inputs_embeds)")

    # ---------------------------------------------------------------- chat (CONV_VISION_LLama2)
    chat = conv_mod.Chat(model, vis_processor=None, device="cpu")
    hardcoded_stops = [s.tolist() for s in chat.stopping_criteria[0].stops]
    conv = conv_mod.CONV_VISION_LLama2.copy()
    img_list = []
    with torch.no_grad():
        chat.upload_img(image[0], conv, img_list)
    for role, msg in case["chat"]["messages_before"]:
        if role == "Human" and msg.startswith("<Img><ImageHere></Img>"):
            chat.ask(msg[len("<Img><ImageHere></Img>"):].strip(), conv)
        else:
            conv.append_message(conv.roles[0] if role == "Human" else conv.roles[1], msg)
    chat.ask(case["chat"]["question"], conv)
    base_conv = conv.copy()

    gen_log = {}
    real_generate = llm.generate

    def forced_generate(**kw):
        gen_log["chat_kwargs"] = {k: (list(v.shape) if torch.is_tensor(v) else
                                      ("<StoppingCriteriaList>" if k == "stopping_criteria" else v))
                                  for k, v in kw.items()}
        kw.update(gen_log["override"])
        gen_log["embs"] = kw["inputs_embeds"].detach().clone()
        out = real_generate(**kw)
        gen_log["out"] = out.detach().clone()
        return out

    llm.generate = forced_generate
    gen_results = {}
    max_new = case["max_new_tokens"]

    def answer(tag, override, num_beams=1, repetition_penalty=1.0):
        c = base_conv.copy()
        gen_log.clear()
        gen_log["override"] = override
        with torch.no_grad():
            text, tokens = chat.answer(c, img_list, max_new_tokens=max_new, num_beams=num_beams,
                                       min_length=1, top_p=0.9, repetition_penalty=repetition_penalty,
                                       length_penalty=1, temperature=1.0, max_length=2000)
        gen_results[tag] = {"output_text": text, "output_token": [int(t) for t in tokens],
                            "raw": gen_log["out"][0].tolist(),
                            "stopped_at_eos": bool(gen_log["out"][0, -1] == 2 and
                                                   gen_log["out"].shape[1] - 1 < max_new),
                            "generate_kwargs_from_chat": gen_log["chat_kwargs"],
                            "overrides": {k: (v if not isinstance(v, StoppingCriteriaList) else
                                              "see stopping") for k, v in override.items()},
                            "conversation_after": c.messages,
                            "prompt_after": c.get_prompt()}
        return gen_log["out"]

    no_stop = StoppingCriteriaList()
    out_greedy = answer("greedy", {"do_sample": False, "stopping_criteria": no_stop})
    prompt_text = base_conv.copy()
    prompt_text.append_message(prompt_text.roles[1], None)
    prompt_str = prompt_text.get_prompt()
    embs = gen_log["embs"]
    segs = prompt_str.split("<ImageHere>")
    assert len(segs) == 2
    seg_ids = [model.llama_tokenizer(s, return_tensors="pt", add_special_tokens=(i == 0)).input_ids[0]
               for i, s in enumerate(segs)]
    with torch.no_grad():
        re_embs = torch.cat([llm.model.embed_tokens(seg_ids[0][None]), img_list[0],
                             llm.model.embed_tokens(seg_ids[1][None])], dim=1)
    assert torch.equal(re_embs, embs)
    n_bos0 = int((seg_ids[0] == 1).sum())
    n_bos1 = int((seg_ids[1] == 1).sum())
    put("chat_seg0_ids", seg_ids[0], "ids of the prompt text before <ImageHere> (add_special_tokens=True): "
        "bos=1 from the tokenizer, then the system text, then ANOTHER bos=1 from the literal '<s>' of "
        "the role '<s>[INST] ' (%d bos ids in all)" % n_bos0)
    put("chat_seg1_ids", seg_ids[1], "ids of the prompt text after <ImageHere> (add_special_tokens=False); "
        "each later round's literal '<s>[INST] ' gives a bos id here too (%d here)" % n_bos1)
    put("chat_img_embeds", img_list[0], "Chat.upload_img: encode_img(image[0:1])[0] [1,P/4,LH] (a batch-1 "
        "encode; equals img_embeds[0] to ~1e-6)")
    put("chat_embs", embs, "Chat.get_context_emb(): cat(embed(seg0), chat_img_embeds, embed(seg1)) [1,T,LH]")
    with torch.no_grad():
        lo = llm(inputs_embeds=embs, return_dict=True, output_hidden_states=True)
    put("chat_logits", lo.logits, "LLM logits over chat_embs (no attention mask given) [1,T,vocab]")
    put("chat_hidden_states", torch.stack(lo.hidden_states), "LLM hidden states [layers+1,1,T,LH]: "
        "0 = input embeddings, i = after decoder layer i (the LAST entry is after the final RMSNorm)")
    put("gen_greedy_ids", out_greedy[0], "llama_model.generate(inputs_embeds=chat_embs, max_new_tokens=%d, "
        "num_beams=1, do_sample=False, min_length=1, top_p=0.9, repetition_penalty=1.0, "
        "length_penalty=1, temperature=1.0, NO stopping criteria) -> [1+n]: starts with the bos id "
        "(generate seeds input_ids with bos when only inputs_embeds is given); generation also ends "
        "at eos=2 (generation_config.eos_token_id), which stays in the output" % max_new)
    with torch.no_grad():
        margins = []
        e = embs
        for tid in out_greedy[0].tolist()[1:]:
            lg = llm(inputs_embeds=e).logits[0, -1]
            top2 = torch.topk(lg, 2).values
            margins.append(float(top2[0] - top2[1]))
            assert int(lg.argmax()) == tid
            e = torch.cat([e, llm.model.embed_tokens(torch.tensor([[tid]]))], dim=1)
    assert gen_results["greedy"]["stopped_at_eos"], "greedy did not end with eos: change eos_row_scale"
    out_beam = answer("beam3", {"do_sample": False, "stopping_criteria": no_stop}, num_beams=3)
    put("gen_beam3_ids", out_beam[0], "same call with num_beams=3, length_penalty=1 (early_stopping "
        "False), NO stopping criteria -> best beam [1+n]")
    out_chatstop = answer("greedy_chat_stop", {"do_sample": False})
    put("gen_greedy_chatstop_ids", out_chatstop[0], "greedy with Chat's OWN stopping criteria (still the "
        "hard-coded LLaMA '###' ids [835] and [2277, 29937] in ef1ac08, also for LLaMA-2; ids >= vocab "
        "here, so they never match) plus eos")
    del llm.generate
    gc = copy.deepcopy(llm.generation_config)
    gc.update(do_sample=True, top_p=0.9, temperature=1.0, min_length=1, repetition_penalty=1.0,
              num_beams=1, max_new_tokens=max_new, length_penalty=1)
    warper = llm._get_logits_warper(gc)
    first_ids = torch.tensor([[1]])
    processor = llm._get_logits_processor(generation_config=gc, input_ids_seq_length=1,
                                          encoder_input_ids=first_ids, prefix_allowed_tokens_fn=None,
                                          logits_processor=LogitsProcessorList())
    with torch.no_grad():
        s0 = warper(first_ids, processor(first_ids, lo.logits[:, -1, :].clone()))
    put("sample_step0_scores", s0[0], "scores the demo (do_sample=True, top_p=0.9, temperature=1.0, "
        "and HF's default top_k=50) samples the first token from: logits processors then warpers "
        "(temperature, top_k=50, top_p=0.9) applied to chat_logits[0,-1]; filtered entries are -inf")
    gen_info = {
        "warpers": [type(w).__name__ for w in warper],
        "processors": [type(p).__name__ for p in processor],
        "greedy_top1_minus_top2_logit_margins": margins,
        "greedy_min_margin": min(margins),
        "chat_hardcoded_stop_ids": hardcoded_stops,
        "eos_token_id": int(llm.generation_config.eos_token_id),
        "results": gen_results,
        "chat_seg0_bos_count": n_bos0,
        "chat_seg1_bos_count": n_bos1,
    }

    # ---------------------------------------------------------------- write io
    st_save(os.path.join(out_root, "io.safetensors"), io,
            {"format": "pt", "case": case["name"], "content": "inputs and expected outputs; see manifest.json"})
    files.append(file_entry(out_root, "io.safetensors", "safetensors",
                            "inputs and expected outputs (F32 unless noted; ids I64)", io, desc))

    # ---------------------------------------------------------------- tokenizer cases
    tok = model.llama_tokenizer
    tcases = []
    for s in TOKENIZER_STRINGS + TOKENIZER_STRINGS_LLAMA2:
        ids_sp = sp.encode(s)
        with_sp = tok(s, add_special_tokens=True).input_ids
        without = tok(s, add_special_tokens=False).input_ids
        tcases.append({
            "text": s,
            "sentencepiece_ids": ids_sp,
            "sentencepiece_pieces": sp.encode(s, out_type=str),
            "sentencepiece_decode": sp.decode(ids_sp),
            "hf_tokenize": tok.tokenize(s),
            "hf_ids_add_special_tokens_true": with_sp,
            "hf_ids_add_special_tokens_false": without,
            "hf_decode_of_ids_with_special": tok.decode(with_sp),
            "hf_decode_of_ids_with_special_skip_special": tok.decode(with_sp, skip_special_tokens=True),
            "hf_decode_of_ids_without_special": tok.decode(without),
        })
    tok_json = {
        "tokenizer_model": "tokenizer.model",
        "vocab_size": vocab,
        "special_ids": {"unk": sp.unk_id(), "bos": sp.bos_id(), "eos": sp.eos_id(), "pad": sp.pad_id()},
        "minigpt4_pad_token": "$$",
        "minigpt4_pad_token_id": pad_id,
        "dollar_dollar_is_a_piece": dollar_in_vocab,
        "hf_tokenizer": "transformers LlamaTokenizer (slow, sentencepiece), %s; loaded from %s/ with "
                        "use_fast=False, then MiniGPT-4 ef1ac08 sets pad_token = '$$'" %
                        (PINS[case["tf"]]["version"], case["hf_dir"]),
        "notes": [
            "hf_ids_add_special_tokens_true = [bos] + sentencepiece ids (add_bos_token=True, "
            "add_eos_token=False), EXCEPT that the HF slow tokenizer first splits the text on its "
            "special tokens (<s>, </s>, <unk>) and maps them to their ids, while raw sentencepiece "
            "encodes those strings as ordinary characters; each chunk between special tokens is "
            "encoded on its own (with the dummy-prefix space); whitespace next to a special token is "
            "kept (the special tokens are AddedToken with lstrip=rstrip=False)",
            "'$$' is only the pad token's string: it is NOT split out of text like <s>/</s> (not in the "
            "no-split list), so '$$' in text is encoded as ordinary characters",
            "hf_decode_of_ids_with_special_skip_special also skips the pad id %d (pad_token '$$' -> "
            "%s), since skip_special_tokens drops all_special_ids" % (pad_id, "its piece" if dollar_in_vocab
                                                                    else "unk"),
            "decode: special tokens are emitted verbatim, with a space inserted before a special "
            "token that follows normal text; the sentencepiece decoder strips the dummy-prefix "
            "space of the first piece",
            "byte_fallback: characters absent from the vocab become <0xNN> byte pieces (ids 3..258)",
        ],
        "cases": tcases,
    }
    with open(os.path.join(out_root, "tokenizer_cases.json"), "w", encoding="utf-8") as f:
        json.dump(tok_json, f, indent=1, ensure_ascii=False)

    # ---------------------------------------------------------------- conversation cases
    path0 = os.path.join(args.refenv, PINS["minigpt4"]["dir"], "minigpt4", "conversation", "conversation.py")
    spec0 = importlib.util.spec_from_file_location("minigpt4_bbd7883_conversation", path0)
    m0 = importlib.util.module_from_spec(spec0)
    spec0.loader.exec_module(m0)
    conv_json = conversation_cases(args.refenv, m0, sep2023_mod=conv_mod)
    with open(os.path.join(out_root, "conversation_cases.json"), "w", encoding="utf-8") as f:
        json.dump(conv_json, f, indent=1, ensure_ascii=False)

    # ---------------------------------------------------------------- caption processor
    cp = BlipCaptionProcessor()
    cap_json = {"processor": "minigpt4.processors.blip_processors.BlipCaptionProcessor(prompt='', "
                             "max_words=50) (identical in bbd7883 and ef1ac08)",
                "used_by": "stage-1 webdataset datasets (laion, cc_sbu) apply it to every caption (ef1ac08 "
                           "returns it under the key 'answer'); the stage-2 cc_sbu_align dataset does NOT",
                "cases": [{"text": s, "output": cp(s)} for s in CAPTION_PROCESSOR_STRINGS]}
    with open(os.path.join(out_root, "caption_processor_cases.json"), "w", encoding="utf-8") as f:
        json.dump(cap_json, f, indent=1, ensure_ascii=False)

    for fn, what in (("tokenizer_cases.json", "tokenizer cases (see file)"),
                     ("conversation_cases.json", "Conversation.get_prompt() cases"),
                     ("caption_processor_cases.json", "BlipCaptionProcessor cases"),
                     ("tokenizer.model", "sentencepiece model (LLaMA-like BPE)")):
        files.append(file_entry(out_root, fn, "json" if fn.endswith("json") else "sentencepiece", what))

    manifest = build_manifest_llama2(case, vocab, tok_info, files, gen_info, notes, prompt_str,
                                     stage2_prompt, {"stage2_loss": loss2, "stage1_loss": loss1,
                                                     "instr_loss": loss_i},
                                     base_conv, pad_id, dollar_in_vocab, n_patch, mask_dtypes)
    with open(os.path.join(out_root, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
    print("wrote", out_root, "(%d bytes)" % sum(
        os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(out_root) for fn in fns))


def build_manifest_llama2(case, vocab, tok_info, files, gen_info, notes, prompt_str, stage2_prompt,
                          losses, base_conv, pad_id, dollar_in_vocab, n_patch, mask_dtypes):
    V, L = case["vit"], case["llama"]
    head_dim = L["hidden"] // L["heads"]
    W = V["width"]
    mg_src = "%s@%s" % (PINS["minigpt4_llama2"]["repo"], PINS["minigpt4_llama2"]["commit"][:7])
    cfg = {
        "image_size": case["image_size"],
        "batch_size": len(case["captions"]),
        "vision": {"class": "minigpt4.models.eva_vit.VisionTransformer via create_eva_vit_g()",
                   "patch_size": V["patch"], "width": W, "depth": V["depth"],
                   "heads": V["heads"], "mlp_ratio": V["mlp_ratio"],
                   "mlp_hidden": int(W * V["mlp_ratio"]), "num_patches": n_patch,
                   "grid": int(round(n_patch ** 0.5)),
                   "tokens": n_patch + 1, "qkv_bias": "q_bias and v_bias, key bias zero",
                   "layer_norm_eps": 1e-6, "gelu": "exact (erf) nn.GELU", "final_norm": False,
                   "use_mean_pooling": False, "drop_path_rate": 0, "precision": "fp32",
                   "attention_scale": "head_dim ** -0.5 applied to q before q@k^T"},
        "ln_vision": {"class": "minigpt4.models.blip2.LayerNorm (computes in float32)", "eps": 1e-5,
                      "weights": "never loaded for has_qformer False (only Blip2Base.load_from_pretrained, "
                                 "i.e. the BLIP-2 checkpoint, ever held it): nn.LayerNorm default init "
                                 "weight=1, bias=0; stored only in minigpt4_full.safetensors",
                      "weight_init": "ones/zeros (default)"},
        "image_tokens": {"drop_cls": True, "group": 4, "num_image_tokens": n_patch // 4,
                         "token_dim": 4 * W,
                         "order": "flat raster: image token g = concat(ln_vision_out[:, 1+4g+j, :] for "
                                  "j in 0..3) along features, i.e. ln_vision_out[:,1:,:].view(B, P/4, 4W); "
                                  "groups are 4 consecutive patches of the row-major patch sequence (they "
                                  "wrap across patch rows when the grid side is not a multiple of 4), "
                                  "not 2x2 squares",
                         "patch_count_not_multiple_of_4": "error (the view in encode_img raises)",
                         "source": mg_src + " minigpt4/models/mini_gpt4.py encode_img (has_qformer False)"},
        "llama": {"class": "transformers.LlamaForCausalLM (transformers %s, as MiniGPT-4 ef1ac08 "
                           "imports it)" % PINS[case["tf"]]["version"],
                  "hf_dir": case["hf_dir"],
                  "vocab_size": vocab, "hidden_size": L["hidden"], "num_hidden_layers": L["layers"],
                  "num_attention_heads": L["heads"], "num_key_value_heads": L["heads"],
                  "num_key_value_heads_note": "transformers 4.28.0 has no grouped-query attention; "
                                              "config.json has no num_key_value_heads key (= heads)",
                  "head_dim": head_dim, "intermediate_size": L["intermediate"],
                  "rms_norm_eps": L["rms_eps"], "rope_theta": 10000.0, "rope": "rotate_half (GPT-NeoX "
                  "style: first half/second half of head_dim), cos/sin cached in float32",
                  "hidden_act": "silu", "tie_word_embeddings": False,
                  "max_position_embeddings": L["max_position_embeddings"],
                  "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
        "llama_proj": {"in": 4 * W, "out": L["hidden"], "bias": True},
        "minigpt4": {
            "has_qformer": False,
            "model_type": "pretrain_llama2",
            "source": mg_src,
            "from_config": {"image_size": case["image_size"], "has_qformer": False,
                            "vit_precision": "fp32", "freeze_vit": True,
                            "max_txt_len": 32, "low_resource": False, "lora_r": 0,
                            "prompt_template": PROMPT_TEMPLATE_LLAMA2,
                            "prompt_path": "prompts/alignment.txt (MiniGPT-4 repo)",
                            "end_sym": "</s>"},
            "stage2": {"prompt": stage2_prompt, "end_sym": "</s>", "max_txt_len": 32,
                       "how_fixed": "model.prompt_list = [prompt] so random.choice() returns it "
                                    "(it is prompt_list[0] of prompts/alignment.txt)",
                       "from": "train_configs/minigpt4_llama2_stage2_finetune.yaml (max_txt_len there "
                               "is 160; 32 here)"},
            "stage1": {"prompt": None, "end_sym": "\n", "max_txt_len": 32,
                       "how": "model.prompt_list = [] and no 'instruction_input' in the samples",
                       "from": "train_configs/minigpt4_llama2_stage1_pretrain.yaml sets no end_sym: the "
                               "class default '\\n' applies"},
            "instr": {"instructions": case["instructions"], "end_sym": "</s>", "max_txt_len": 32,
                      "how": "model.prompt_list = [] and samples['instruction_input'] = the two "
                             "instructions (one per sample, different lengths)"},
            "samples_text_key": "answer",
            "captions": case["captions"],
            "attention_mask_dtype_passed_to_llm": mask_dtypes,
            "llama_tokenizer": {"class": "LlamaTokenizer (slow)", "padding_side": "right",
                                "pad_token": "$$ (MiniGPT-4 ef1ac08 sets pad_token = '$$')",
                                "pad_token_id": pad_id,
                                "pad_token_id_rule": "convert_tokens_to_ids('$$') = sentencepiece "
                                                     "piece_to_id('$$'): the piece's id if the vocabulary "
                                                     "has it, else unk (0)",
                                "dollar_dollar_is_a_piece": dollar_in_vocab},
        },
    }
    tol = {
        "default": {"atol": 1e-4, "rtol": 1e-4},
        "per_tensor": {
            "image": {"atol": 0, "rtol": 0, "note": "input"},
            "*loss": {"atol": 1e-5, "rtol": 1e-5},
            "*grad_llama_proj_*": {"atol": 1e-5, "rtol": 1e-3},
            "*logits": {"atol": 2e-4, "rtol": 1e-4},
            "*ids / *targets / *mask": "exact (integers)",
            "sample_step0_scores": "finite entries atol 2e-4; the set of -inf entries must match exactly",
        },
        "note": "float32 on CPU. Values are O(1) by construction (see max_abs per tensor). "
                "Generation ids must match exactly; greedy_min_margin in 'generation' tells how far "
                "the greedy argmax was from a tie.",
    }
    chat = {
        "image_index": 0,
        "template": "CONV_VISION_LLama2 ('[INST]', %s minigpt4/conversation/conversation.py)" % mg_src,
        "roles": list(base_conv.roles),
        "sep": base_conv.sep,
        "messages": base_conv.messages + [[base_conv.roles[1], None]],
        "prompt": prompt_str,
        "max_new_tokens": case["max_new_tokens"],
        "answer_postprocessing": "Chat.answer (unchanged from bbd7883): drop a leading 0 then a leading 1 "
                                 "from outputs[0], decode(skip_special_tokens=False, so a final eos "
                                 "decodes to '</s>'), split('###')[0], split('Assistant:')[-1].strip()",
        "demo_differences": "the real Chat.answer calls generate(do_sample=True); the fixtures force "
                            "do_sample=False (everything else is passed unchanged from Chat.answer) "
                            "and replace the stopping criteria as listed per result",
    }
    chat.update(gen_info)
    versions = versions_block(case["tf"], case["hub"], case["minigpt4"])
    versions["minigpt4"]["note"] = ("last commit before the MiniGPT-v2 refactor; case D runs its whole "
                                    "model code: mini_gpt4.py with has_qformer False, transformers' "
                                    "LlamaForCausalLM, Chat with CONV_VISION_LLama2")
    versions["minigpt4_vicuna0_template"] = pin("minigpt4")
    versions["minigpt4_vicuna0_template"]["used_for"] = "conversation_cases.json CONV_VISION only"
    del versions["minigpt4_llama2_templates"]
    return {
        "format": "minigpt4-parity-fixture",
        "format_version": 1,
        "case": case["name"],
        "description": "Tiny MiniGPT-4 LLaMA-2 variant WITHOUT Q-Former (EVA ViT + ln_vision + 4-patch "
                       "concat + llama_proj + LLaMA) with seeded random float32 weights, built and run by "
                       "the original Python code of MiniGPT-4 ef1ac08 with transformers 4.28.0.",
        "generator": versions,
        "seed": case["seed"],
        "weight_init": "every parameter drawn from torch.Generator(seed*1000003 + crc32(full name)): "
                       "RMSNorm weight 1+0.1N; Linear/Conv weight N(0,1/fan_in); biases (incl. q_bias, "
                       "v_bias, llama_proj.bias) 0.1N; ViT LayerNorm weight 1+0.1N, bias 0.1N; embeddings "
                       "N(0,1); pos_embed, cls_token 0.5N; lm_head N(0, 4/hidden), then its eos row "
                       "(id 2) multiplied by %s so that the greedy chat answer ends with eos. ln_vision "
                       "is NOT drawn: the original code leaves it at weight 1, bias 0" % case["eos_row_scale"],
        "config": cfg,
        "tokenizer": dict(tok_info, vocab_size=vocab),
        "files": files,
        "training": losses,
        "generation": chat,
        "tolerance": tol,
        "not_in_this_case": {
            "files": ["blip2_pretrained.pth (no Q-Former)",
                      "vicuna_bin/, vicuna_bin_sharded/ (only the vicuna/ safetensors directory, "
                      "whose name config.llama.hf_dir repeats)",
                      "image_processor/ (tiny_vicuna0 only)"],
            "config_keys": ["config.qformer", "config.minigpt4.from_config.num_query_token / freeze_qformer",
                            "blip2_keys_ignored_by_minigpt4"],
            "io_tensors": ["qformer_embeddings_out", "qformer_hidden_states", "qformer_out",
                           "gen_greedy_rep1p5_ids", "rep1p5_last_step_logits", "rep1p5_last_step_input_ids",
                           "rep1p5_last_step_scores", "gen_greedy_rep0p5_ids", "gen_greedy_seqstop_ids"],
            "generation_keys": ["tokenizer_encodings_of_###", "custom_stop_sequence"],
        },
        "new_in_this_case": {
            "config_keys": ["config.image_tokens", "config.vision.grid", "config.ln_vision.weights",
                            "config.llama.hf_dir", "config.minigpt4.has_qformer (false)",
                            "config.minigpt4.model_type", "config.minigpt4.instr",
                            "config.minigpt4.samples_text_key",
                            "config.minigpt4.attention_mask_dtype_passed_to_llm",
                            "config.minigpt4.llama_tokenizer.pad_token_id_rule",
                            "generation.roles / sep / eos_token_id / chat_seg0_bos_count / "
                            "chat_seg1_bos_count", "generation.results.*.stopped_at_eos / prompt_after",
                            "training.instr_loss"],
            "io_tensors": {
                "image_tokens_concat4": "[B,P/4,4W] ln_vision_out without cls, 4 consecutive patches "
                                        "concatenated (the input of llama_proj)",
                "chat_img_embeds": "[1,P/4,LH] the batch-1 encode of image[0] that Chat uses",
                "instr_*": "the training forward with per-sample instructions of different lengths "
                           "(same suffixes as stage1_/stage2_, but NO instr_logits, to save space)",
                "instr_prompt{0,1}_{before,after}_ids": "ids of each instruction's halves",
                "pad_embed": "[LH] embedding of the pad id that fills the short instruction rows",
            },
        },
        "notes": notes + [
            "io.safetensors tensor meanings are under files[path=io.safetensors].tensors[].meaning",
            "img_embeds is [B, P/4, LH]: the number of image tokens is num_patches/4 "
            "(config.image_tokens.num_image_tokens), where tiny_vicuna0 has num_query_token",
            "Training sequence layout per sample (ef1ac08 forward): [bos] + prompt_before + image(P/4) + "
            "prompt_after + text tokens + text right padding (pad id = '$$' -> %d) + prompt padding. "
            "Targets: -100 for bos/prompt/image, the text ids where they are not the pad id (so the end "
            "token '</s>' = 2 IS a target), -100 for padding. Stage 1 has no prompt parts; with one "
            "prompt for the whole batch there is no prompt padding." % pad_id,
            "Chat prompt tokens: only the FIRST segment gets the tokenizer's bos (add_special_tokens=i==0); "
            "the literal '<s>' in the role '<s>[INST] ' is mapped to the bos id by the slow tokenizer, so "
            "segment 0 holds two bos ids and every later round adds one more",
            "Generation stops at eos (2) through generation_config.eos_token_id; Chat's own stopping "
            "criteria are still the '###' ids of the Vicuna code (never hit here). A final eos is kept "
            "in the ids and decodes to '</s>' in Chat.answer's text (skip_special_tokens is False)",
        ],
    }


def run_check_llama2(args, key):
    case = CASES[key]
    enter_refenv(args.refenv, case["tf"], case["hub"], case["minigpt4"])
    import torch
    import torch.nn as nn
    import transformers
    from functools import partial
    patch_transformers_without_tokenizers()
    import minigpt4.models  # noqa: F401
    import minigpt4.models.eva_vit as eva_vit
    import minigpt4.models.blip2 as blip2
    torch.set_num_threads(2)
    out_root = os.path.join(OUT_ROOT, case["outdir"])
    io, _ = st_load(os.path.join(out_root, "io.safetensors"))
    full, _ = st_load(os.path.join(out_root, "minigpt4_full.safetensors"))
    man = json.load(open(os.path.join(out_root, "manifest.json")))
    # 1) every listed file exists with the recorded hash; nothing unlisted besides manifest.json
    listed = {fe["path"] for fe in man["files"]}
    for fe in man["files"]:
        assert sha256_file(os.path.join(out_root, fe["path"])) == fe["sha256"], fe["path"]
    present = {os.path.relpath(os.path.join(dp, fn), out_root) for dp, _, fns in os.walk(out_root) for fn in fns}
    assert present - listed == {"manifest.json"}, present - listed
    assert not any(k.startswith(("Qformer.", "query_tokens")) for k in full)
    assert torch.equal(full["ln_vision.weight"], torch.ones_like(full["ln_vision.weight"]))
    assert torch.equal(full["ln_vision.bias"], torch.zeros_like(full["ln_vision.bias"]))
    # 2) twins agree with the full state dict
    evapth = torch.load(os.path.join(out_root, "eva_vit_g.pth"), map_location="cpu")
    evast, _ = st_load(os.path.join(out_root, "eva_vit_g.safetensors"))
    assert sorted(evapth) == sorted(evast)
    for k, v in evapth.items():
        assert torch.equal(v, evast[k]) and torch.equal(v, full["visual_encoder." + k]), k
    proj = torch.load(os.path.join(out_root, "pretrained_minigpt4.pth"), map_location="cpu")["model"]
    projst, _ = st_load(os.path.join(out_root, "pretrained_minigpt4.safetensors"))
    assert sorted(proj) == sorted(projst) == ["llama_proj.bias", "llama_proj.weight"]
    for k in proj:
        assert torch.equal(proj[k], full[k]) and torch.equal(projst[k], full[k]), k
    # 3) the HF dir loads through transformers and reproduces the chat logits / greedy / beam
    d = os.path.join(out_root, man["config"]["llama"]["hf_dir"])
    m = transformers.LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
    for k, v in m.state_dict().items():
        assert torch.equal(v, full["llama_model." + k]), k
    res = man["generation"]["results"]
    with torch.no_grad():
        assert torch.equal(m(inputs_embeds=io["chat_embs"]).logits, io["chat_logits"])
        kw = dict(inputs_embeds=io["chat_embs"], max_new_tokens=man["generation"]["max_new_tokens"],
                  do_sample=False, min_length=1, top_p=0.9, repetition_penalty=1.0, length_penalty=1,
                  temperature=1.0)
        g = m.generate(num_beams=1, **kw)
        assert torch.equal(g[0], io["gen_greedy_ids"]) and g[0].tolist() == res["greedy"]["raw"]
        b = m.generate(num_beams=3, **kw)
        assert torch.equal(b[0], io["gen_beam3_ids"]) and b[0].tolist() == res["beam3"]["raw"]
    tok = transformers.LlamaTokenizer.from_pretrained(d, use_fast=False)
    assert tok.vocab_size == man["tokenizer"]["vocab_size"]
    tok.pad_token = "$$"
    assert tok.pad_token_id == man["config"]["minigpt4"]["llama_tokenizer"]["pad_token_id"]
    s0, s1 = man["generation"]["prompt"].split("<ImageHere>")
    assert tok(s0).input_ids == io["chat_seg0_ids"].tolist()
    assert tok(s1, add_special_tokens=False).input_ids == io["chat_seg1_ids"].tolist()
    # 4) rebuild the vision path from minigpt4_full.safetensors with fresh modules
    V = case["vit"]
    vit = eva_vit.VisionTransformer(img_size=case["image_size"], patch_size=14, use_mean_pooling=False,
                                    embed_dim=V["width"], depth=V["depth"], num_heads=V["heads"],
                                    mlp_ratio=4.3637, qkv_bias=True, drop_path_rate=0,
                                    norm_layer=partial(nn.LayerNorm, eps=1e-6))
    vit.load_state_dict({k[len("visual_encoder."):]: v for k, v in full.items()
                         if k.startswith("visual_encoder.")})
    ln = blip2.LayerNorm(V["width"])  # default init, as in the model
    vit.eval()
    with torch.no_grad():
        vo = vit(io["image"])
        assert torch.equal(vo, io["vit_out"])
        lo = ln(vo)
        assert torch.equal(lo, io["ln_vision_out"])
        g4 = lo[:, 1:, :].reshape(lo.shape[0], -1, 4 * V["width"])
        assert torch.equal(g4, io["image_tokens_concat4"])
        ie = torch.nn.functional.linear(g4, full["llama_proj.weight"], full["llama_proj.bias"])
        assert torch.equal(ie, io["img_embeds"])
        ie1 = torch.nn.functional.linear(ln(vit(io["image"][:1]))[:, 1:, :].reshape(1, -1, 4 * V["width"]),
                                         full["llama_proj.weight"], full["llama_proj.bias"])
        assert torch.equal(ie1, io["chat_img_embeds"])
    print("check %s: OK (%d io tensors, %d weights)" % (case["name"], len(io), len(full)))


def run_spec_llama2(args, key):
    """Independent plain-PyTorch re-implementation of case D from the manifest's description
    (no MiniGPT-4 / transformers code)."""
    import torch
    import torch.nn.functional as F
    import sentencepiece as spm
    case = CASES[key]
    root = os.path.join(OUT_ROOT, case["outdir"])
    man = json.load(open(os.path.join(root, "manifest.json")))
    sd, _ = st_load(os.path.join(root, "minigpt4_full.safetensors"))
    io, _ = st_load(os.path.join(root, "io.safetensors"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(root, "tokenizer.model"))
    c = man["config"]
    V, L, IT = c["vision"], c["llama"], c["image_tokens"]
    mgc = c["minigpt4"]
    pad_id = sp.piece_to_id("$$")  # unk (0) where '$$' is not a piece
    assert pad_id == mgc["llama_tokenizer"]["pad_token_id"]
    report = {}

    def cmp(name, got, want):
        assert got.shape == want.shape, (name, got.shape, want.shape)
        d = float((got.double() - want.double()).abs().max()) if got.numel() else 0.0
        report[name] = d
        return d

    def hf_encode(text, bos):
        """slow LlamaTokenizer: split out <s> </s> <unk>, sentencepiece-encode each other chunk."""
        import re
        ids = [1] if bos else []
        for chunk in re.split(r"(<s>|</s>|<unk>)", text):
            if chunk in ("<s>", "</s>", "<unk>"):
                ids.append({"<s>": 1, "</s>": 2, "<unk>": 0}[chunk])
            elif chunk:
                ids += sp.encode(chunk)
        return ids

    # ---- EVA ViT
    img = io["image"]
    pe = "visual_encoder."
    x = F.conv2d(img, sd[pe + "patch_embed.proj.weight"], sd[pe + "patch_embed.proj.bias"],
                 stride=V["patch_size"]).flatten(2).transpose(1, 2)
    B = x.shape[0]
    x = torch.cat([sd[pe + "cls_token"].expand(B, -1, -1), x], 1) + sd[pe + "pos_embed"]
    cmp("vit_tokens_in", x, io["vit_tokens_in"])
    W, H = V["width"], V["heads"]
    hd = W // H
    for i in range(V["depth"]):
        p = pe + "blocks.%d." % i
        h = F.layer_norm(x, (W,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        qkv_b = torch.cat([sd[p + "attn.q_bias"], torch.zeros_like(sd[p + "attn.v_bias"]), sd[p + "attn.v_bias"]])
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], qkv_b).reshape(B, -1, 3, H, hd).permute(2, 0, 3, 1, 4)
        a = torch.softmax((qkv[0] * hd ** -0.5) @ qkv[1].transpose(-1, -2), -1)
        o = (a @ qkv[2]).transpose(1, 2).reshape(B, -1, W)
        x = x + F.linear(o, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (W,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        x = x + h
    cmp("vit_out", x, io["vit_out"])
    # ln_vision: never loaded -> plain LayerNorm without affine change (weight 1, bias 0)
    lv = F.layer_norm(x, (W,), None, None, 1e-5)
    cmp("ln_vision_out", lv, io["ln_vision_out"])
    # drop cls, 4 consecutive patch tokens concatenated
    P = lv.shape[1] - 1
    assert P == V["num_patches"] and P % 4 == 0 and IT["num_image_tokens"] == P // 4
    g4 = torch.stack([torch.cat([lv[:, 1 + 4 * g + j] for j in range(4)], -1) for g in range(P // 4)], 1)
    cmp("image_tokens_concat4", g4, io["image_tokens_concat4"])

    # ---- LLaMA
    LH, NH = L["hidden_size"], L["num_attention_heads"]
    KV = L["num_key_value_heads"]
    HD = LH // NH
    eps = L["rms_norm_eps"]
    emb = sd["llama_model.model.embed_tokens.weight"]

    def rms(t, w):
        return w * (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps))

    def rot(t):
        return torch.cat([-t[..., t.shape[-1] // 2:], t[..., :t.shape[-1] // 2]], -1)

    def llama(xe, mask2d=None):
        Bz, T, _ = xe.shape
        inv = 1.0 / (10000 ** (torch.arange(0, HD, 2).float() / HD))
        fr = torch.outer(torch.arange(T, dtype=torch.float32), inv)
        e2 = torch.cat([fr, fr], -1)
        cos, sin = e2.cos(), e2.sin()
        allowed = torch.ones(T, T).tril().bool()[None, None]
        if mask2d is not None:
            allowed = allowed & mask2d.bool()[:, None, None, :]
        hcur = xe
        for i in range(L["num_hidden_layers"]):
            p = "llama_model.model.layers.%d." % i
            hn = rms(hcur, sd[p + "input_layernorm.weight"])
            q = F.linear(hn, sd[p + "self_attn.q_proj.weight"]).view(Bz, T, NH, HD).transpose(1, 2)
            k = F.linear(hn, sd[p + "self_attn.k_proj.weight"]).view(Bz, T, KV, HD).transpose(1, 2)
            v = F.linear(hn, sd[p + "self_attn.v_proj.weight"]).view(Bz, T, KV, HD).transpose(1, 2)
            q = q * cos + rot(q) * sin
            k = k * cos + rot(k) * sin
            k = k.repeat_interleave(NH // KV, dim=1)
            v = v.repeat_interleave(NH // KV, dim=1)
            s = (q @ k.transpose(-1, -2)) / HD ** 0.5
            s = s.masked_fill(~allowed, torch.finfo(s.dtype).min)
            o = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(Bz, T, LH)
            hcur = hcur + F.linear(o, sd[p + "self_attn.o_proj.weight"])
            hn = rms(hcur, sd[p + "post_attention_layernorm.weight"])
            m = F.silu(F.linear(hn, sd[p + "mlp.gate_proj.weight"])) * F.linear(hn, sd[p + "mlp.up_proj.weight"])
            hcur = hcur + F.linear(m, sd[p + "mlp.down_proj.weight"])
        return F.linear(rms(hcur, sd["llama_model.model.norm.weight"]), sd["llama_model.lm_head.weight"])

    # ---- training forwards: [bos] prompt_before image prompt_after text text-pad prompt-pad
    stages = (("stage2", [mgc["stage2"]["prompt"]] * B, mgc["stage2"]["end_sym"]),
              ("stage1", None, mgc["stage1"]["end_sym"]),
              ("instr", mgc["instr"]["instructions"], mgc["instr"]["end_sym"]))
    for stage, prompts, end_sym in stages:
        proj_w = sd["llama_proj.weight"].clone().requires_grad_(True)
        proj_b = sd["llama_proj.bias"].clone().requires_grad_(True)
        ie = F.linear(g4, proj_w, proj_b)
        if stage == "stage2":
            cmp("img_embeds", ie, io["img_embeds"])
        rows = [hf_encode(t + end_sym, False)[:32] for t in mgc["captions"]]
        Tt = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad_id] * (Tt - len(r)) for r in rows])
        tmask = torch.tensor([[1] * len(r) + [0] * (Tt - len(r)) for r in rows])
        assert torch.equal(ids, io[stage + "_to_regress_ids"]) and torch.equal(tmask, io[stage + "_to_regress_mask"])
        if prompts:
            pw = []
            for i, pr in enumerate(prompts):
                before, after = pr.split("<ImageHere>")
                pw.append(torch.cat([emb[torch.tensor(hf_encode(before, False), dtype=torch.long)], ie[i],
                                     emb[torch.tensor(hf_encode(after, False), dtype=torch.long)]], 0))
        else:
            pw = [ie[i] for i in range(B)]
        Lp = max(t.shape[0] for t in pw)
        xs, ms, ts = [], [], []
        for i in range(B):
            n = pw[i].shape[0]
            xs.append(torch.cat([emb[1][None], pw[i], emb[ids[i]], emb[pad_id][None].expand(Lp - n, -1)], 0))
            ms.append(torch.cat([torch.ones(1 + n, dtype=torch.long), tmask[i], torch.zeros(Lp - n, dtype=torch.long)]))
            ts.append(torch.cat([torch.full((1 + n,), -100), ids[i].masked_fill(ids[i] == pad_id, -100),
                                 torch.full((Lp - n,), -100)]))
        xe, am, tg = torch.stack(xs), torch.stack(ms), torch.stack(ts)
        assert torch.equal(am, io[stage + "_attention_mask"]), stage
        assert torch.equal(tg, io[stage + "_targets"]), stage
        cmp(stage + "_inputs_embeds", xe, io[stage + "_inputs_embeds"])
        lg = llama(xe, am)
        if stage + "_logits" in io:  # instr_ keeps no logits (size)
            cmp(stage + "_logits", lg, io[stage + "_logits"])
        loss = F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), tg[:, 1:].reshape(-1), ignore_index=-100)
        loss.backward()
        cmp(stage + "_loss", loss.detach(), io[stage + "_loss"])
        cmp(stage + "_grad_llama_proj_weight", proj_w.grad, io[stage + "_grad_llama_proj_weight"])
        cmp(stage + "_grad_llama_proj_bias", proj_b.grad, io[stage + "_grad_llama_proj_bias"])

    # ---- chat: CONV_VISION_LLama2 prompt, bos + text; '<s>' in the roles -> bos id
    with torch.no_grad():
        s0, s1 = man["generation"]["prompt"].split("<ImageHere>")
        i0 = torch.tensor(hf_encode(s0, True))
        i1 = torch.tensor(hf_encode(s1, False))
        assert torch.equal(i0, io["chat_seg0_ids"]) and torch.equal(i1, io["chat_seg1_ids"])
        assert int((i0 == 1).sum()) == man["generation"]["chat_seg0_bos_count"] >= 2
        ie1 = F.linear(torch.stack([torch.cat([F.layer_norm(x[:1], (W,), None, None, 1e-5)[:, 1 + 4 * g + j]
                                               for j in range(4)], -1) for g in range(P // 4)], 1),
                       sd["llama_proj.weight"], sd["llama_proj.bias"])
        cmp("chat_img_embeds", ie1, io["chat_img_embeds"])
        xe = torch.cat([emb[i0][None], ie1, emb[i1][None]], 1)
        cmp("chat_embs", xe, io["chat_embs"])
        cmp("chat_logits", llama(xe), io["chat_logits"])
        out = [1]
        for _ in range(man["generation"]["max_new_tokens"]):
            nxt = int(llama(xe)[0, -1].argmax())
            out.append(nxt)
            if nxt == 2:  # eos
                break
            xe = torch.cat([xe, emb[nxt][None, None]], 1)
        assert out == io["gen_greedy_ids"].tolist(), (out, io["gen_greedy_ids"].tolist())
    print("spec check %s: ids/masks/targets/greedy equal; max |spec - golden| per tensor:" % case["name"])
    for k, v in report.items():
        print("   %-34s %.3g" % (k, v))
    return report


# ======================================================================================
# Case C: a tiny Phi-2 style causal LM (transformers' PhiForCausalLM)
# ======================================================================================
PHI_CASE = {
    "name": "tiny_phi2",
    "outdir": "parity/tiny_phi2",
    "tf": "tf437",
    "hub": "hub0194",
    "seed": 31415,
    "config": {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 4, "partial_rotary_factor": 0.4,
               "hidden_act": "gelu_new", "layer_norm_eps": 1e-5, "rope_theta": 10000.0,
               "max_position_embeddings": 2048, "qk_layernorm": False, "tie_word_embeddings": False,
               "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attention_dropout": 0.0,
               "bos_token_id": 500, "eos_token_id": 500},
    "seq_len": 12,
}


def enter_phi_env(args):
    """transformers 4.37 imports `tokenizers` unconditionally in convert_slow_tokenizer.py (reached
    through models/__init__ -> mt5 -> t5 tokenizer).  Give it importable placeholders WITHOUT a
    dist-info, so transformers still reports tokenizers as unavailable; nothing here uses it."""
    d = os.path.join(args.refenv, "stubs_tokenizers", "tokenizers")
    os.makedirs(d, exist_ok=True)
    body = ("class _Placeholder:\n    def __init__(self, *a, **k):\n"
            "        raise RuntimeError('tokenizers is a placeholder in the fixture harness')\n\n")
    with open(os.path.join(d, "__init__.py"), "w") as f:
        f.write(body + "".join("%s = _Placeholder\n" % n for n in
                               ("AddedToken", "Regex", "Tokenizer", "Encoding")) +
                "".join("class %s:\n    pass\n\n" % n for n in
                        ("decoders", "normalizers", "pre_tokenizers", "processors", "trainers")))
    with open(os.path.join(d, "models.py"), "w") as f:
        f.write(body + "".join("%s = _Placeholder\n" % n for n in ("BPE", "Unigram", "WordPiece", "WordLevel")))
    sys.path.insert(0, os.path.dirname(d))
    enter_refenv(args.refenv, PHI_CASE["tf"], PHI_CASE["hub"])


def run_phi_case(args):
    case = PHI_CASE
    enter_phi_env(args)
    import torch
    import transformers
    from transformers import PhiConfig, PhiForCausalLM, GenerationConfig
    torch.manual_seed(0)
    torch.set_num_threads(2)
    root = os.path.join(OUT_ROOT, case["outdir"])
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(root, "phi2"))
    cfg = PhiConfig(**case["config"])
    cfg.architectures = ["PhiForCausalLM"]
    cfg.torch_dtype = "float32"
    model = PhiForCausalLM(cfg)
    randomize_module(model, case["seed"], "",
                     special={"lm_head.weight": ("normal", 2.0 / cfg.hidden_size ** 0.5)})
    model.eval()
    d = os.path.join(root, "phi2")
    cfg.save_pretrained(d)
    GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id).save_pretrained(d)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    st_save(os.path.join(d, "model.safetensors"), sd, {"format": "pt"})
    # reload through transformers and use THAT model for everything
    model = PhiForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    g = _gen(case["seed"], "input_ids")
    ids = torch.randint(0, 500, (2, case["seq_len"]), generator=g)
    io, desc = {}, {}

    def put(name, t, meaning):
        io[name] = t.detach().cpu().contiguous().clone()
        desc[name] = meaning

    put("input_ids", ids, "fixed input ids [2,T] (seeded, all < 500, no eos)")
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids, output_hidden_states=True, return_dict=True)
    put("logits", out.logits, "PhiForCausalLM(input_ids).logits [2,T,V] (no attention mask; positions 0..T-1)")
    put("hidden_states", torch.stack(out.hidden_states), "hidden states [layers+1,2,T,H]: 0 = embeddings, "
        "i = after decoder layer i; the LAST entry is after model.final_layernorm")
    put("loss", out.loss.reshape(()), "HF causal-LM loss with labels = input_ids (shifted mean CE)")
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        lo_m = model(input_ids=ids, attention_mask=mask).logits
    put("masked_attention_mask", mask, "attention mask with the first 3 positions of row 1 masked (as left padding)")
    put("masked_logits", lo_m, "logits with that mask [2,T,V]. In a plain forward position_ids stay 0..T-1 "
        "(only generate() derives them from the mask); masked keys get finfo.min. Compare only positions "
        "whose mask is 1: fully masked query rows are implementation-defined")
    gen_common = dict(max_new_tokens=16, do_sample=False, pad_token_id=cfg.eos_token_id)
    with torch.no_grad():
        greedy = model.generate(input_ids=ids[:1], **gen_common)
        greedy_b = model.generate(input_ids=ids, **gen_common)
        beam = model.generate(input_ids=ids[:1], num_beams=3, length_penalty=1.0, **gen_common)
        lp_ids = ids.clone()
        lp_ids[1, :3] = cfg.eos_token_id
        greedy_lp = model.generate(input_ids=lp_ids, attention_mask=mask, **gen_common)
        alone = model.generate(input_ids=ids[1:2, 3:], **gen_common)
        assert torch.equal(alone[0], greedy_lp[1, 3:]), (alone, greedy_lp)
    put("greedy_ids", greedy[0], "generate(input_ids=input_ids[:1], max_new_tokens=16, do_sample=False): "
        "prompt ids followed by the new ids")
    put("greedy_ids_batch", greedy_b, "same for both rows at once [2,T+16] (no padding)")
    put("beam3_ids", beam[0], "num_beams=3, length_penalty=1.0 (early_stopping False), row 0")
    put("greedy_leftpad_input_ids", lp_ids, "row 1 left-padded: first 3 ids replaced by the pad (=eos) id")
    put("greedy_leftpad_ids", greedy_lp, "generate with that attention mask: generation computes "
        "position_ids = cumsum(mask)-1 (masked positions get 1), so row 1 yields exactly what "
        "generate gives for its 9 unpadded ids alone (checked)")
    margins = []
    with torch.no_grad():
        seq = ids[:1]
        for _ in range(16):
            lg = model(input_ids=seq).logits[0, -1]
            top2 = torch.topk(lg, 2).values
            margins.append(float(top2[0] - top2[1]))
            seq = torch.cat([seq, lg.argmax().view(1, 1)], 1)
        assert torch.equal(seq[0], greedy[0])
    st_save(os.path.join(root, "io.safetensors"), io, {"format": "pt", "case": case["name"]})
    files = [file_entry(root, "phi2/model.safetensors", "safetensors",
                        "PhiForCausalLM state dict with HF names (as microsoft/phi-2 >= Jan 2024)", sd,
                        describe=lambda n: {
                            "embed_tokens": "token embedding [V,H]",
                            "q_proj": "attention q projection (with bias)",
                            "k_proj": "attention k projection (with bias)",
                            "v_proj": "attention v projection (with bias)",
                            "dense": "attention output projection (with bias)",
                            "fc1": "MLP up (gelu_new = tanh approximation)",
                            "fc2": "MLP down",
                            "input_layernorm": "the ONE LayerNorm per layer, feeding attention AND MLP",
                            "final_layernorm": "final LayerNorm",
                            "lm_head": "output projection with bias (not tied)",
                        }.get(next((k for k in ("embed_tokens", "q_proj", "k_proj", "v_proj", "dense", "fc1",
                                                "fc2", "input_layernorm", "final_layernorm", "lm_head")
                                    if k in n), ""), "")),
             file_entry(root, "phi2/config.json", "json", "PhiConfig.save_pretrained"),
             file_entry(root, "phi2/generation_config.json", "json", "GenerationConfig"),
             file_entry(root, "io.safetensors", "safetensors", "inputs and expected outputs", io, desc)]
    c = case["config"]
    hd = c["hidden_size"] // c["num_attention_heads"]
    manifest = {
        "format": "minigpt4-parity-fixture", "format_version": 1, "case": case["name"],
        "description": "Tiny Phi-2 style causal LM (TinyGPT-V's LLM family) with seeded random float32 "
                       "weights, run by transformers' PhiForCausalLM.",
        "generator": {"script": "tests/data/parity/make_fixtures.py",
                      "python": sys.version.split()[0], "torch": torch.__version__,
                      "transformers": pin(case["tf"], version_string=transformers.__version__),
                      "huggingface_hub": pin(case["hub"])},
        "seed": case["seed"],
        "weight_init": "as tiny_vicuna0: LayerNorm weight 1+0.1N, bias 0.1N; Linear weight N(0,1/fan_in), "
                       "bias 0.1N; embeddings N(0,1); lm_head weight N(0,4/hidden)",
        "config": dict(c, head_dim=hd, rotary_ndims=int(hd * c["partial_rotary_factor"]),
                       architecture=[
                           "x = embed_tokens(ids)  (embd_pdrop 0)",
                           "per layer: h = LayerNorm(x) (input_layernorm, eps 1e-5); "
                           "x = x + dense(attn(h)) + fc2(gelu_new(fc1(h)))  (parallel attention and MLP, "
                           "one shared LayerNorm)",
                           "attn: q,k,v = Linear+bias; RoPE on the first rotary_ndims dims of each head only "
                           "(rotate_half over those dims: cat(-x2, x1) with halves of rotary_ndims), "
                           "the rest passes through; scores computed in float32, / sqrt(head_dim), "
                           "causal mask (finfo.min), softmax float32",
                           "logits = lm_head(final_layernorm(x)) + lm_head.bias, cast to float32",
                       ]),
        "files": files,
        "generation": {"greedy_top1_minus_top2_logit_margins": margins,
                       "greedy_min_margin": min(margins),
                       "note": "greedy/beam stop at eos_token_id=500 if produced; pad_token_id=500"},
        "tolerance": {"default": {"atol": 1e-4, "rtol": 1e-4}, "logits": {"atol": 2e-4, "rtol": 1e-4},
                      "loss": {"atol": 1e-5, "rtol": 1e-5}, "ids": "exact"},
        "notes": ["gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))",
                  "no tokenizer in this case (Phi-2 uses the GPT-2/CodeGen BPE); ids are given directly",
                  "masked_logits: only positions whose attention_mask is 1 are meaningful"],
    }
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print("wrote", root, "greedy min margin %.4f" % min(margins))


def run_phi_spec_check(args):
    import math
    import torch
    import torch.nn.functional as F
    root = os.path.join(OUT_ROOT, PHI_CASE["outdir"])
    man = json.load(open(os.path.join(root, "manifest.json")))
    c = man["config"]
    sd, _ = st_load(os.path.join(root, "phi2", "model.safetensors"))
    io, _ = st_load(os.path.join(root, "io.safetensors"))
    H, NH, HD, R = c["hidden_size"], c["num_attention_heads"], c["head_dim"], c["rotary_ndims"]
    KV = c["num_key_value_heads"]

    def gelu_new(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))

    def rot(t):
        return torch.cat([-t[..., t.shape[-1] // 2:], t[..., :t.shape[-1] // 2]], -1)

    def phi(ids):
        B, T = ids.shape
        x = sd["model.embed_tokens.weight"][ids]
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, R, 2).float() / R))
        fr = torch.outer(torch.arange(T).float(), inv)
        e = torch.cat([fr, fr], -1)
        cos, sin = e.cos(), e.sin()
        causal = torch.ones(T, T).tril().bool()
        for i in range(c["num_hidden_layers"]):
            p = "model.layers.%d." % i
            h = F.layer_norm(x, (H,), sd[p + "input_layernorm.weight"], sd[p + "input_layernorm.bias"],
                             c["layer_norm_eps"])
            q = F.linear(h, sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.q_proj.bias"]).view(B, T, NH, HD).transpose(1, 2)
            k = F.linear(h, sd[p + "self_attn.k_proj.weight"], sd[p + "self_attn.k_proj.bias"]).view(B, T, KV, HD).transpose(1, 2)
            v = F.linear(h, sd[p + "self_attn.v_proj.weight"], sd[p + "self_attn.v_proj.bias"]).view(B, T, KV, HD).transpose(1, 2)
            q = torch.cat([q[..., :R] * cos + rot(q[..., :R]) * sin, q[..., R:]], -1)
            k = torch.cat([k[..., :R] * cos + rot(k[..., :R]) * sin, k[..., R:]], -1)
            k = k.repeat_interleave(NH // KV, 1)
            v = v.repeat_interleave(NH // KV, 1)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(HD)
            s = s.masked_fill(~causal, torch.finfo(s.dtype).min)
            a = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, H)
            a = F.linear(a, sd[p + "self_attn.dense.weight"], sd[p + "self_attn.dense.bias"])
            m = F.linear(gelu_new(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                         sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
            x = x + a + m
        x = F.layer_norm(x, (H,), sd["model.final_layernorm.weight"], sd["model.final_layernorm.bias"],
                         c["layer_norm_eps"])
        return F.linear(x, sd["lm_head.weight"], sd["lm_head.bias"])

    with torch.no_grad():
        lg = phi(io["input_ids"])
        d = float((lg - io["logits"]).abs().max())
        loss = F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), io["input_ids"][:, 1:].reshape(-1))
        seq = io["input_ids"][:1]
        for _ in range(16):
            seq = torch.cat([seq, phi(seq)[0, -1].argmax().view(1, 1)], 1)
    assert seq[0].tolist() == io["greedy_ids"].tolist()
    print("spec check tiny_phi2: greedy ids equal; max |logits diff| %.3g, |loss diff| %.3g"
          % (d, abs(float(loss) - float(io["loss"]))))


# ======================================================================================
# Independent re-implementation from the manifest's description (no MiniGPT-4 / transformers
# code): validates that the documented semantics reproduce the golden values.
# ======================================================================================
def run_spec_check(args, key):
    import torch
    import torch.nn.functional as F
    import sentencepiece as spm
    case = CASES[key]
    root = os.path.join(OUT_ROOT, case["outdir"])
    man = json.load(open(os.path.join(root, "manifest.json")))
    sd, _ = st_load(os.path.join(root, "minigpt4_full.safetensors"))
    io, _ = st_load(os.path.join(root, "io.safetensors"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(root, "tokenizer.model"))
    c = man["config"]
    V, Q, L = c["vision"], c["qformer"], c["llama"]
    report = {}

    def cmp(name, got, want):
        d = float((got.double() - want.double()).abs().max()) if got.numel() else 0.0
        report[name] = d
        return d

    def mha(xq, xkv, pre, heads, mask=None):
        wq, bq = sd[pre + "query.weight"], sd[pre + "query.bias"]
        wk, bk = sd[pre + "key.weight"], sd[pre + "key.bias"]
        wv, bv = sd[pre + "value.weight"], sd[pre + "value.bias"]
        B, Tq, _ = xq.shape
        Tk = xkv.shape[1]
        hd = wq.shape[0] // heads
        q = F.linear(xq, wq, bq).view(B, Tq, heads, hd).transpose(1, 2)
        k = F.linear(xkv, wk, bk).view(B, Tk, heads, hd).transpose(1, 2)
        v = F.linear(xkv, wv, bv).view(B, Tk, heads, hd).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5, dim=-1)
        return (a @ v).transpose(1, 2).reshape(B, Tq, heads * hd)

    # ---- EVA ViT
    img = io["image"]
    pe = "visual_encoder."
    x = F.conv2d(img, sd[pe + "patch_embed.proj.weight"], sd[pe + "patch_embed.proj.bias"],
                 stride=V["patch_size"]).flatten(2).transpose(1, 2)
    B = x.shape[0]
    x = torch.cat([sd[pe + "cls_token"].expand(B, -1, -1), x], 1) + sd[pe + "pos_embed"]
    cmp("vit_tokens_in", x, io["vit_tokens_in"])
    W, H = V["width"], V["heads"]
    hd = W // H
    for i in range(V["depth"]):
        p = pe + "blocks.%d." % i
        h = F.layer_norm(x, (W,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        qkv_b = torch.cat([sd[p + "attn.q_bias"], torch.zeros_like(sd[p + "attn.v_bias"]), sd[p + "attn.v_bias"]])
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], qkv_b).reshape(B, -1, 3, H, hd).permute(2, 0, 3, 1, 4)
        a = torch.softmax((qkv[0] * hd ** -0.5) @ qkv[1].transpose(-1, -2), -1)
        o = (a @ qkv[2]).transpose(1, 2).reshape(B, -1, W)
        x = x + F.linear(o, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (W,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        x = x + h
    cmp("vit_out", x, io["vit_out"])
    lv = F.layer_norm(x, (W,), sd["ln_vision.weight"], sd["ln_vision.bias"], 1e-5)
    cmp("ln_vision_out", lv, io["ln_vision_out"])
    # ---- Q-Former
    QH = Q["hidden_size"]
    qb = "Qformer.bert."
    h = F.layer_norm(sd["query_tokens"].expand(B, -1, -1), (QH,), sd[qb + "embeddings.LayerNorm.weight"],
                     sd[qb + "embeddings.LayerNorm.bias"], 1e-12)
    cmp("qformer_embeddings_out", h, io["qformer_embeddings_out"])
    for i in range(Q["num_hidden_layers"]):
        p = qb + "encoder.layer.%d." % i

        def post(t, res, name):
            return F.layer_norm(F.linear(t, sd[p + name + ".dense.weight"], sd[p + name + ".dense.bias"]) + res,
                                (QH,), sd[p + name + ".LayerNorm.weight"], sd[p + name + ".LayerNorm.bias"], 1e-12)
        h = post(mha(h, h, p + "attention.self.", Q["num_attention_heads"]), h, "attention.output")
        if i % Q["cross_attention_freq"] == 0:
            h = post(mha(h, lv, p + "crossattention.self.", Q["num_attention_heads"]), h, "crossattention.output")
        f = F.gelu(F.linear(h, sd[p + "intermediate_query.dense.weight"], sd[p + "intermediate_query.dense.bias"]))
        h = post(f, h, "output_query")
    cmp("qformer_out", h, io["qformer_out"])
    qout = h

    # ---- LLaMA
    LH, NH = L["hidden_size"], L["num_attention_heads"]
    KV = L["num_key_value_heads"]
    HD = LH // NH
    eps = L["rms_norm_eps"]
    emb = sd["llama_model.model.embed_tokens.weight"]

    def rms(t, w):
        return w * (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps))

    def rot(t):
        return torch.cat([-t[..., t.shape[-1] // 2:], t[..., :t.shape[-1] // 2]], -1)

    def llama(xe, mask2d=None):
        Bz, T, _ = xe.shape
        pos = torch.arange(T, dtype=torch.float32)
        inv = 1.0 / (10000 ** (torch.arange(0, HD, 2).float() / HD))
        fr = torch.outer(pos, inv)
        e2 = torch.cat([fr, fr], -1)
        cos, sin = e2.cos(), e2.sin()
        allowed = torch.ones(T, T).tril().bool()[None, None]
        if mask2d is not None:
            allowed = allowed & mask2d.bool()[:, None, None, :]
        hcur = xe
        for i in range(L["num_hidden_layers"]):
            p = "llama_model.model.layers.%d." % i
            hn = rms(hcur, sd[p + "input_layernorm.weight"])
            q = F.linear(hn, sd[p + "self_attn.q_proj.weight"]).view(Bz, T, NH, HD).transpose(1, 2)
            k = F.linear(hn, sd[p + "self_attn.k_proj.weight"]).view(Bz, T, KV, HD).transpose(1, 2)
            v = F.linear(hn, sd[p + "self_attn.v_proj.weight"]).view(Bz, T, KV, HD).transpose(1, 2)
            q = q * cos + rot(q) * sin
            k = k * cos + rot(k) * sin
            k = k.repeat_interleave(NH // KV, dim=1)
            v = v.repeat_interleave(NH // KV, dim=1)
            s = (q @ k.transpose(-1, -2)) / HD ** 0.5
            s = s.masked_fill(~allowed, torch.finfo(s.dtype).min)
            o = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(Bz, T, LH)
            hcur = hcur + F.linear(o, sd[p + "self_attn.o_proj.weight"])
            hn = rms(hcur, sd[p + "post_attention_layernorm.weight"])
            m = F.silu(F.linear(hn, sd[p + "mlp.gate_proj.weight"])) * F.linear(hn, sd[p + "mlp.up_proj.weight"])
            hcur = hcur + F.linear(m, sd[p + "mlp.down_proj.weight"])
        return F.linear(rms(hcur, sd["llama_model.model.norm.weight"]), sd["llama_model.lm_head.weight"])

    # ---- training forwards
    mg = man["config"]["minigpt4"]
    for stage, prompt, end_sym in (("stage2", mg["stage2"]["prompt"], "###"), ("stage1", None, "\n")):
        proj_w = sd["llama_proj.weight"].clone().requires_grad_(True)
        proj_b = sd["llama_proj.bias"].clone().requires_grad_(True)
        ie = F.linear(qout, proj_w, proj_b)
        if stage == "stage2":
            cmp("img_embeds", ie, io["img_embeds"])
        rows = [sp.encode(t + end_sym)[:32] for t in mg["captions"]]
        Tt = max(len(r) for r in rows)
        ids = torch.tensor([r + [2] * (Tt - len(r)) for r in rows])
        tmask = torch.tensor([[1] * len(r) + [0] * (Tt - len(r)) for r in rows])
        parts = [emb[torch.ones(B, 1, dtype=torch.long)]]
        if prompt:
            before, after = prompt.split("<ImageHere>")
            parts += [emb[torch.tensor(sp.encode(before))].expand(B, -1, -1), ie,
                      emb[torch.tensor(sp.encode(after))].expand(B, -1, -1)]
        else:
            parts += [ie]
        prefix = sum(t.shape[1] for t in parts)
        parts.append(emb[ids])
        xe = torch.cat(parts, 1)
        am = torch.cat([torch.ones(B, prefix, dtype=torch.long), tmask], 1)
        tg = torch.cat([torch.full((B, prefix), -100), ids.masked_fill(ids == 2, -100)], 1)
        assert torch.equal(am, io[stage + "_attention_mask"]), stage
        assert torch.equal(tg, io[stage + "_targets"]), stage
        cmp(stage + "_inputs_embeds", xe, io[stage + "_inputs_embeds"])
        lg = llama(xe, am)
        cmp(stage + "_logits", lg, io[stage + "_logits"])
        loss = F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), tg[:, 1:].reshape(-1), ignore_index=-100)
        loss.backward()
        cmp(stage + "_loss", loss.detach(), io[stage + "_loss"])
        cmp(stage + "_grad_llama_proj_weight", proj_w.grad, io[stage + "_grad_llama_proj_weight"])
        cmp(stage + "_grad_llama_proj_bias", proj_b.grad, io[stage + "_grad_llama_proj_bias"])

    # ---- chat
    with torch.no_grad():
        ie = F.linear(qout, sd["llama_proj.weight"], sd["llama_proj.bias"])
        s0, s1 = man["generation"]["prompt"].split("<ImageHere>")
        i0 = torch.tensor([1] + sp.encode(s0))
        i1 = torch.tensor(sp.encode(s1))
        assert torch.equal(i0, io["chat_seg0_ids"]) and torch.equal(i1, io["chat_seg1_ids"])
        xe = torch.cat([emb[i0][None], ie[:1], emb[i1][None]], 1)
        cmp("chat_embs", xe, io["chat_embs"])
        cmp("chat_logits", llama(xe), io["chat_logits"])
        out = [1]
        for _ in range(16):
            nxt = int(llama(xe)[0, -1].argmax())
            out.append(nxt)
            xe = torch.cat([xe, emb[nxt][None, None]], 1)
        assert out == io["gen_greedy_ids"].tolist(), (out, io["gen_greedy_ids"].tolist())
    worst = max(report.values())
    print("spec check %s: greedy ids equal; max |spec - golden| per tensor:" % case["name"])
    for k, v in report.items():
        print("   %-34s %.3g" % (k, v))
    return report


# ======================================================================================
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["setup", "case-a", "case-b", "case-c", "case-d", "check-a",
                                      "check-b", "check-d", "spec-a", "spec-b", "spec-c", "spec-d",
                                      "check", "all"])
    ap.add_argument("--refenv", default=DEFAULT_REFENV)
    ap.add_argument("--seed", type=int, default=None, help="override the case seed (exploration only)")
    args = ap.parse_args()
    if args.seed is not None and args.stage in ("case-a", "case-b", "case-d"):
        CASES[args.stage[-1]]["seed"] = args.seed
    if args.stage == "setup":
        cmd_setup(args)
    elif args.stage == "case-d":
        run_case_llama2(args, "d")
    elif args.stage == "check-d":
        run_check_llama2(args, "d")
    elif args.stage == "spec-d":
        run_spec_llama2(args, "d")
    elif args.stage in ("case-a", "case-b"):
        run_case(args, args.stage[-1])
    elif args.stage in ("check-a", "check-b"):
        run_check(args, args.stage[-1])
    elif args.stage in ("spec-a", "spec-b"):
        run_spec_check(args, args.stage[-1])
    elif args.stage == "case-c":
        run_phi_case(args)
    elif args.stage == "spec-c":
        run_phi_spec_check(args)
    else:
        stages = ["check-a", "check-b", "check-d", "spec-a", "spec-b", "spec-c", "spec-d"] \
            if args.stage == "check" else \
            ["setup", "case-a", "case-b", "case-c", "case-d", "check-a", "check-b", "check-d",
             "spec-a", "spec-b", "spec-c", "spec-d"]
        for st in stages:
            subprocess.run([sys.executable, os.path.abspath(__file__), st, "--refenv", args.refenv],
                           check=True)


if __name__ == "__main__":
    main()
