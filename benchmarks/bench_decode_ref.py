#!/usr/bin/env python3
r"""Batch-1 greedy decoding on the CPU: minigpt4-cpp next to Hugging Face and llama.cpp.

For each model shape it runs the C++ binary `bench_decode`, which writes a random LLaMA (or,
for the phi2 shapes, a random Phi-2) as a Hugging Face directory (config.json + model.safetensors) and times minigpt4::generate in fp32,
bf16 and int8; then, in the same run, on the SAME weights:
  - Hugging Face transformers: AutoModelForCausalLM.from_pretrained(dir, dtype=fp32 / bf16)
    (LlamaForCausalLM or PhiForCausalLM by config.json) and
    generate(do_sample=False), and for int8 the fp32 model with its decoder projections
    converted by torch.ao.quantization.quantize_dynamic (qint8, per channel: PyTorch's own
    CPU int8 path; transformers has no CPU 8-bit loader);
  - llama.cpp (llama-cpp-python, built from source by pip): GGUF files written here from the
    same safetensors with the `gguf` package, f32 / f16 / q8_0, driven token by token through
    the low-level llama_decode API with greedy argmax. LLaMA shapes only: the GGUF writer here
    knows LLaMA's tensor layout, so the phi2 shapes compare with Hugging Face alone.
Before timing llama.cpp the f32 GGUF's logits are compared with Hugging Face fp32's on the
prompt (top-1 equal, max |diff|), which proves the layout (Q/K row permutation for llama.cpp's
rotary convention, metadata) is right. Time to first token (TTFT: prompt prefill + the first
token) and decode tokens/s (1000 / median ms between consecutive tokens after the first) are
measured the same way on every side, with the same prompt ids, token count and threads; the
roofline is the memory bandwidth bench_decode measured over the weight bytes one token reads.

    .venv/bin/python benchmarks/bench_decode_ref.py --cpp-bin build/benchmarks/bench_decode \
        --threads 2 [--shape tiny|quickstart|1b|phi2-8l|phi2|all] [--prompt 64] [--new-tokens N] [--repeats R] \
        [--workdir DIR] [--keep] [--json PATH]

Each backend runs in its own child process (this script with --worker), so that the Python
PyTorch, llama.cpp's threads and the C++ binary never share a process and each starts with
its memory free. Needs transformers, llama-cpp-python and gguf in the venv (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ROWS = ("fp32", "bf16", "int8")  # the default --rows: C++ / HF precisions; llama.cpp: f32, f16, q8_0
HF_ROWS = ("fp32", "bf16", "int8")  # what the Hugging Face worker runs
# q8 / q4: C++'s group-wise formats (groups of 32) against llama.cpp's q8_0 and q4_0; q4k: llama.cpp's
# q4_K_S alone (C++ has no k-quant), to set beside the q4 row. q4_0 and q4_K_S are made from the f16
# file by llama.cpp's own quantiser (llama_model_quantize), as its users make them: output.weight in
# q6_K, the rest in the named type.
LLAMACPP_TYPE = {"fp32": "f32", "bf16": "f16", "int8": "q8_0", "q8": "q8_0", "q4": "q4_0", "q4k": "q4_K_S"}
LLAMACPP_QUANTISED = {"q4_0": 2, "q4_K_S": 14}  # llama_ftype values (LLAMA_FTYPE_MOSTLY_*)
DEFAULTS = {"tiny": {"new_tokens": 128, "repeats": 5}, "quickstart": {"new_tokens": 128, "repeats": 5},
            "1b": {"new_tokens": 32, "repeats": 3}, "phi2-8l": {"new_tokens": 32, "repeats": 3},
            "phi2": {"new_tokens": 16, "repeats": 2}}
LLAMACPP_SHAPES = {"tiny", "quickstart", "1b"}  # write_gguf knows LLaMA's layout only
DISK_GB = {"1b": 13, "phi2-8l": 4, "phi2": 12}  # safetensors (+ GGUF files for LLaMA)


# ----------------------------------------------------------------------------- helpers

def median(values):
    return statistics.median(values) if values else float("nan")


def summarise(ttfts: list[float], intervals: list[float], tokens: list[int], **extra) -> dict:
    step = median(intervals)
    return {"ttft_ms": ttfts, "ttft_ms_median": median(ttfts), "decode_step_ms": intervals,
            "decode_step_ms_median": step, "decode_tok_s": 1000.0 / step if intervals else float("nan"),
            "tokens": tokens, **extra}


def pool(total: dict, new: dict) -> None:
    """Adds one round's per-row results to `total`. Each round keeps its own medians; the figures
    reported are the best round's (shortest median TTFT, shortest median step), because on a
    shared machine another job can only slow a round down. The pooled medians are kept too."""
    for row, r in new.items():
        if not isinstance(r, dict):
            continue
        if "skipped" in r or "decode_step_ms" not in r:
            total.setdefault(row, r)
            continue
        t = total.setdefault(row, {k: v for k, v in r.items() if k not in ("ttft_ms", "decode_step_ms")} |
                             {"ttft_ms": [], "decode_step_ms": [], "rounds": []})
        t["ttft_ms"] += r["ttft_ms"]
        t["decode_step_ms"] += r["decode_step_ms"]
        t["rounds"].append({"ttft_ms_median": median(r["ttft_ms"]), "decode_step_ms_median": median(r["decode_step_ms"]),
                            **({"gemv_ms": r["gemv_ms"]} if "gemv_ms" in r else {})})
        t["ttft_ms_median"] = min(x["ttft_ms_median"] for x in t["rounds"])
        t["decode_step_ms_median"] = min(x["decode_step_ms_median"] for x in t["rounds"])
        t["decode_tok_s"] = 1000.0 / t["decode_step_ms_median"]
        t["ttft_ms_median_pooled"] = median(t["ttft_ms"])
        t["decode_tok_s_pooled"] = 1000.0 / median(t["decode_step_ms"])
        if "gemv_ms" in r:
            t["gemv_ms"] = min(x["gemv_ms"] for x in t["rounds"])


def read_safetensors(path: Path):
    """name -> numpy array (memory-mapped, read-only) of a safetensors file."""
    import numpy as np

    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "I8": np.int8}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        out[name] = data[begin:end].view(dtypes[info["dtype"]]).reshape(info["shape"])
    return out


# ----------------------------------------------------------------------------- GGUF

def rotary_rows_for_llamacpp(w, n_head: int):
    """Hugging Face's LLaMA q/k rows use rotate_half pairs (i, i + d/2) within a head; llama.cpp's
    LLaMA rope pairs adjacent rows (2i, 2i + 1). Per head, row i of the first half goes to 2i and
    row i of the second half to 2i + 1."""
    rows, cols = w.shape
    d = rows // n_head
    return w.reshape(n_head, 2, d // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def write_gguf(hf_dir: Path, out: Path, kind: str) -> dict:
    """Writes the Hugging Face LLaMA in hf_dir as a llama.cpp GGUF: kind f32, f16 or q8_0 (2-D
    weights; norms stay f32; a q8_0 tensor whose rows are not a multiple of the 32-value block
    falls back to f16, as llama.cpp's converter does). A dummy SentencePiece-style vocabulary
    of the model's size (<unk>, <s>, </s>, 256 byte tokens, then filler pieces) makes the file
    loadable; generation is fed token ids, so the pieces never matter."""
    import gguf
    import numpy as np

    cfg = json.loads((hf_dir / "config.json").read_text())
    tensors = read_safetensors(hf_dir / "model.safetensors")
    H, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    V = cfg["vocab_size"]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind]

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(f"bench_decode random llama {kind}")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(H)
    w.add_block_count(L)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(H // n_head)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    w.add_vocab_size(V)
    w.add_file_type(file_type)

    # Tokenizer: "llama" (SentencePiece) model with byte-fallback pieces.
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    if V < len(tokens):
        raise ValueError(f"vocabulary {V} is smaller than the {len(tokens)} special and byte tokens")
    tokens += [f"\u2581t{i}".encode() for i in range(V - len(tokens))]
    types += [gguf.TokenType.NORMAL] * (V - len(types))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(V - 259)])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for i in range(L):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"

    fallback = []
    for hf_name, gg_name in names.items():
        data = tensors[hf_name]
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = rotary_rows_for_llamacpp(np.asarray(data), n_head)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = rotary_rows_for_llamacpp(np.asarray(data), n_kv)
        if data.ndim == 1 or kind == "f32":
            w.add_tensor(gg_name, np.ascontiguousarray(data, dtype=np.float32))
        elif kind == "f16" or data.shape[-1] % 32 != 0:
            if kind == "q8_0":
                fallback.append(gg_name)
            w.add_tensor(gg_name, np.asarray(data, dtype=np.float16))
        else:
            q = gguf.quants.quantize(np.asarray(data, dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gg_name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"path": str(out), "bytes": out.stat().st_size, "f16_fallback": fallback}


def quantise_gguf(src: Path, out: Path, kind: str, threads: int) -> dict:
    """llama.cpp's own quantiser (llama_model_quantize, as `llama-quantize` runs it) from an f16 GGUF."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMACPP_QUANTISED[kind]
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize {src} -> {kind} returned {rc}")
    return {"path": str(out), "bytes": out.stat().st_size, "f16_fallback": []}


def gguf_bytes_per_token(path: Path) -> int:
    """Bytes of every tensor of a GGUF file but token_embd (of which a token reads one row)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    total = 0
    for t in r.tensors:
        if t.name == "token_embd.weight":
            total += int(t.n_bytes) // int(t.shape[-1] if len(t.shape) > 1 else 1)
        else:
            total += int(t.n_bytes)
    return total


# ----------------------------------------------------------------------------- workers

def worker_hf(task: dict) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(task["threads"])
    torch.set_num_interop_threads(1)
    hf_dir, prompt, n_new = task["hf_dir"], task["prompt_ids"], task["new_tokens"]
    ids = torch.tensor([prompt], dtype=torch.long)
    mask = torch.ones_like(ids)

    class Stamps(BaseStreamer):
        def __init__(self):
            self.times, self.tokens, self.seen_prompt = [], [], False

        def put(self, value):
            if not self.seen_prompt:  # generate() first streams the prompt ids
                self.seen_prompt = True
                return
            self.times.append(time.perf_counter())
            self.tokens += value.flatten().tolist()

        def end(self):
            pass

    def run(model, n):
        s = Stamps()
        start = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, streamer=s,
                       pad_token_id=0, num_beams=1)
        ttft = (s.times[0] - start) * 1e3
        return ttft, [(b - a) * 1e3 for a, b in zip(s.times, s.times[1:])], s.tokens

    results = {"transformers": transformers.__version__, "torch": torch.__version__}
    for row in task["rows"]:
        with torch.no_grad():
            dtype = torch.bfloat16 if row == "bf16" else torch.float32
            model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).eval()
            model.generation_config.eos_token_id = None  # always max_new_tokens, as on the other sides
            if row == "fp32":
                logits = model(ids).logits[0, -1].float()
                results["reference_logits"] = logits.tolist()
            if row == "int8":
                from torch.ao.quantization import quantize_dynamic
                from torch.ao.quantization.qconfig import per_channel_dynamic_qconfig

                # The decoder projections only, as minigpt4-cpp and bitsandbytes keep lm_head dense.
                model.model.layers = quantize_dynamic(model.model.layers,
                                                      {torch.nn.Linear: per_channel_dynamic_qconfig},
                                                      dtype=torch.qint8)
            for _ in range(task["warmup"]):
                run(model, min(8, n_new))
            ttfts, intervals, tokens = [], [], []
            for r in range(task["repeats"]):
                ttft, steps, toks = run(model, n_new)
                print(f"  HF {row} run {r + 1}: ttft {ttft:.2f} ms, decode median {median(steps):.3f} ms/token",
                      flush=True)
                ttfts.append(ttft)
                intervals += steps
                if r == 0:
                    tokens = toks
            results[row] = summarise(ttfts, intervals, tokens)
            del model
    return results


def worker_llamacpp(task: dict) -> dict:
    import ctypes

    import llama_cpp
    import numpy as np

    threads, prompt, n_new = task["threads"], task["prompt_ids"], task["new_tokens"]
    n_ctx = len(prompt) + n_new + 16
    results = {"llama_cpp_python": llama_cpp.__version__}
    for row, path in task["files"].items():
        llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=max(len(prompt), 32), n_ubatch=max(len(prompt), 32),
                              n_threads=threads, n_threads_batch=threads, logits_all=False, verbose=False,
                              use_mmap=True)
        ctx, n_vocab = llm.ctx, llm.n_vocab()
        batch = llama_cpp.llama_batch_init(max(len(prompt), 1), 0, 1)

        def decode(tokens, pos0):
            """One llama_decode of `tokens` at positions pos0.., logits for the last only; returns them."""
            batch.n_tokens = len(tokens)
            for i, t in enumerate(tokens):
                batch.token[i] = t
                batch.pos[i] = pos0 + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i == len(tokens) - 1
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))

        def clear():
            mem = llama_cpp.llama_get_memory(ctx)
            llama_cpp.llama_memory_clear(mem, True)

        def run(n):
            clear()
            stamps, tokens = [], []
            start = time.perf_counter()
            logits = decode(prompt, 0)
            tok = int(np.argmax(logits))
            stamps.append(time.perf_counter())
            tokens.append(tok)
            for i in range(1, n):
                logits = decode([tok], len(prompt) + i - 1)
                tok = int(np.argmax(logits))
                stamps.append(time.perf_counter())
                tokens.append(tok)
            return (stamps[0] - start) * 1e3, [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:])], tokens

        clear()
        first_logits = decode(prompt, 0).copy()
        for _ in range(task["warmup"]):
            run(min(8, n_new))
        ttfts, intervals, tokens = [], [], []
        for r in range(task["repeats"]):
            ttft, steps, toks = run(n_new)
            print(f"  llama.cpp {LLAMACPP_TYPE[row]} run {r + 1}: ttft {ttft:.2f} ms, decode median "
                  f"{median(steps):.3f} ms/token", flush=True)
            ttfts.append(ttft)
            intervals += steps
            if r == 0:
                tokens = toks
        results[row] = summarise(ttfts, intervals, tokens, prompt_logits=first_logits.tolist(), file=path)
        llama_cpp.llama_batch_free(batch)
        llm.close() if hasattr(llm, "close") else None
        del llm
    return results


def run_worker(kind: str, task: dict, tmp: Path) -> dict:
    task_path, out_path = tmp / f"{kind}_task.json", tmp / f"{kind}_out.json"
    task_path.write_text(json.dumps(task))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--task", str(task_path),
           "--out", str(out_path)]
    subprocess.run(cmd, check=True)
    return json.loads(out_path.read_text())


# ----------------------------------------------------------------------------- main

def compare_logits(a, b) -> dict:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return {"top1_equal": bool(np.argmax(a) == np.argmax(b)), "max_abs_diff": float(np.max(np.abs(a - b))),
            "logit_range": float(np.max(np.abs(a))), "top1": [int(np.argmax(a)), int(np.argmax(b))]}


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def fmt(v, digits=2) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and v == v else "-"


def main() -> int:
    global ROWS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["hf", "llamacpp"], help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=["tiny", "quickstart", "1b", "phi2-8l", "phi2", "all"], default="all",
                        help="all: tiny and 1b")
    parser.add_argument("--threads", type=int, default=2, help="threads on every side (default 2)")
    parser.add_argument("--prompt", type=int, default=64, help="prompt length in tokens")
    parser.add_argument("--new-tokens", type=int, default=0,
                        help="generated tokens per run (0: tiny/quickstart 128, 1b/phi2-8l 32, phi2 16)")
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed runs per precision (0: tiny/quickstart 5, 1b/phi2-8l 3, phi2 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed short runs (8 tokens) per precision")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run C++, HF and llama.cpp in turn this many times per shape and pool the runs")
    parser.add_argument("--cpp-bin", default="build/benchmarks/bench_decode",
                        help="the bench_decode binary (relative: to the cwd, else to the repository root)")
    parser.add_argument("--skip", default="", help="comma-separated sides to leave out: cpp, hf, llamacpp")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help="comma-separated precisions: fp32, bf16, int8, q8, q4 (C++ and llama.cpp), q4k "
                             "(llama.cpp's q4_K_S alone)")
    parser.add_argument("--workdir", help="where weights and GGUF files go (default: a new directory in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the weights and GGUF files")
    parser.add_argument("--json", help="write every side's results to this file")
    args = parser.parse_args()

    if args.worker:
        task = json.loads(Path(args.task).read_text())
        out = worker_hf(task) if args.worker == "hf" else worker_llamacpp(task)
        Path(args.out).write_text(json.dumps(out))
        return 0

    skip = set(filter(None, args.skip.split(",")))
    ROWS = tuple(filter(None, args.rows.split(",")))
    unknown = [r for r in ROWS if r not in LLAMACPP_TYPE]
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)} (known: {', '.join(LLAMACPP_TYPE)})")
    binary = Path(args.cpp_bin)
    if not binary.is_absolute() and not binary.exists():
        binary = REPO_ROOT / binary
    if not binary.exists():
        print(f"error: {args.cpp_bin} not found (ninja -C build bench_decode, or pass --cpp-bin)", file=sys.stderr)
        return 1
    shapes = ["tiny", "1b"] if args.shape == "all" else [args.shape]
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_decode_", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(workdir).free / 1e9
    print(f"work directory {workdir} ({free_gb:.1f} GB free); threads {args.threads} on every side", flush=True)
    for shape in shapes:
        if free_gb < DISK_GB.get(shape, 0):
            print(f"error: the {shape} shape needs about {DISK_GB[shape]} GB of disk (1b: safetensors 4.4, GGUF f32 "
                  f"4.4 + f16 2.2 + q8_0 1.2; phi2: safetensors 11.1; phi2-8l: 3.4)", file=sys.stderr)
            return 1

    report = {"threads": args.threads, "load_before": os.getloadavg(), "cpus": os.cpu_count(), "shapes": {}}
    try:
        for shape in shapes:
            new_tokens = args.new_tokens or DEFAULTS[shape]["new_tokens"]
            repeats = args.repeats or DEFAULTS[shape]["repeats"]
            tmp = workdir / shape
            tmp.mkdir(exist_ok=True)
            shape_skip = skip | (set() if shape in LLAMACPP_SHAPES else {"llamacpp"})
            if shape not in LLAMACPP_SHAPES and "llamacpp" not in skip:
                print(f"{shape}: llama.cpp left out (this script writes GGUF for LLaMA's layout only)", flush=True)
            hf_dir = tmp / "hf"
            entry = {"new_tokens": new_tokens, "repeats": repeats, "rounds": args.rounds, "prompt": args.prompt}
            files = {}
            # Each round runs C++, then Hugging Face, then llama.cpp; rounds pool their runs, so that
            # a busy spell on the shared machine does not land on one side only.
            for rnd in range(args.rounds):
                print(f"\n=== {shape}, round {rnd + 1}/{args.rounds}: prompt {args.prompt}, {new_tokens} new tokens, "
                      f"{repeats} runs, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
                cpp_json = tmp / "cpp.json"
                # With cpp skipped the binary still writes the weights (and measures the bandwidth).
                timed = "cpp" not in skip
                cmd = [str(binary), "--shape", shape, "--dir", str(hf_dir), "--prompt", str(args.prompt),
                       "--new-tokens", str(new_tokens if timed else 2), "--repeats", str(repeats if timed else 1),
                       "--warmup", str(args.warmup if timed else 0), "--threads", str(args.threads),
                       "--json", str(cpp_json)] + (["--precisions", ",".join(r for r in ROWS if r != "q4k")]
                                                   if timed else ["--precisions", "fp32"])
                if rnd > 0:
                    cmd.append("--skip-save")
                if rnd > 0 and not timed:
                    cpp = entry["cpp_meta"]
                else:
                    print("$", " ".join(cmd), flush=True)
                    subprocess.run(cmd, check=True)
                    cpp = json.loads(cpp_json.read_text())
                entry["cpp_meta"] = {k: v for k, v in cpp.items() if k != "results"}
                best_bw = max(entry.get("bandwidth_gbs", {}).get("read", 0), cpp["bandwidth_gbs"]["read"])
                if best_bw > entry.get("bandwidth_gbs", {}).get("read", 0):
                    entry["bandwidth_gbs"] = cpp["bandwidth_gbs"]
                if timed:
                    pool(entry.setdefault("cpp", {}), cpp["results"])
                task = {"hf_dir": str(hf_dir), "prompt_ids": cpp["prompt_ids"], "new_tokens": new_tokens,
                        "repeats": repeats, "warmup": args.warmup, "threads": args.threads}

                if "hf" not in skip:
                    print(f"\n--- Hugging Face ({shape})", flush=True)
                    hf = run_worker("hf", {**task, "rows": [r for r in ROWS if r in HF_ROWS]}, tmp)
                    entry.setdefault("reference_logits", hf.pop("reference_logits"))
                    entry["transformers"] = hf.pop("transformers")
                    entry["torch"] = hf.pop("torch")
                    pool(entry.setdefault("hf", {}), hf)
                if "llamacpp" not in shape_skip:
                    if not files:
                        for row in ROWS:
                            kind = LLAMACPP_TYPE[row]
                            start = time.perf_counter()
                            if kind in LLAMACPP_QUANTISED:
                                f16 = tmp / "model-f16.gguf"
                                if not f16.exists():
                                    write_gguf(hf_dir, f16, "f16")
                                info = quantise_gguf(f16, tmp / f"model-{kind}.gguf", kind, args.threads)
                            else:
                                info = write_gguf(hf_dir, tmp / f"model-{kind}.gguf", kind)
                            info["bytes_per_token"] = gguf_bytes_per_token(Path(info["path"]))
                            print(f"wrote {info['path']} ({info['bytes'] / 1e9:.2f} GB, "
                                  f"{time.perf_counter() - start:.1f} s"
                                  f"{', f16 fallback: ' + ', '.join(info['f16_fallback'][:3]) if info['f16_fallback'] else ''}"
                                  f"{' ...' if len(info['f16_fallback']) > 3 else ''})", flush=True)
                            entry.setdefault("gguf", {})[kind] = info
                            files[row] = info["path"]
                    print(f"\n--- llama.cpp ({shape})", flush=True)
                    lc = run_worker("llamacpp", {**task, "files": files}, tmp)
                    entry["llama_cpp_python"] = lc.pop("llama_cpp_python")
                    for row in ROWS:
                        entry.setdefault("llamacpp_prompt_logits", {}).setdefault(row, lc[row].pop("prompt_logits"))
                    pool(entry.setdefault("llamacpp", {}), lc)

            for kind, info in entry.get("gguf", {}).items():
                info["roofline_tok_s"] = entry["bandwidth_gbs"]["read"] * 1e9 / info["bytes_per_token"]
            for row, r in entry.get("cpp", {}).items():
                if "weight_bytes_per_token" in r:
                    r["roofline_tok_s"] = entry["bandwidth_gbs"]["read"] * 1e9 / r["weight_bytes_per_token"]
            # The layout check: llama.cpp against Hugging Face fp32 on the prompt's last position.
            ref = entry.pop("reference_logits", None)
            lc_logits = entry.pop("llamacpp_prompt_logits", {})
            if ref is not None and lc_logits:
                checks = {}
                for row in ROWS:
                    checks[LLAMACPP_TYPE[row]] = {
                        **compare_logits(ref, lc_logits[row]),
                        "greedy_prefix_equal_hf_fp32": common_prefix(entry["llamacpp"][row]["tokens"],
                                                                     entry["hf"]["fp32"]["tokens"]),
                    }
                entry["logit_check"] = checks
                c = checks["f32"]
                print(f"layout check, llama.cpp f32 vs HF fp32 logits: top-1 equal {c['top1_equal']}, "
                      f"max |diff| {c['max_abs_diff']:.2e} (logits up to {c['logit_range']:.2f}), greedy tokens "
                      f"equal for the first {c['greedy_prefix_equal_hf_fp32']} of {new_tokens}", flush=True)
            report["shapes"][shape] = entry
            if not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    report["load_after"] = os.getloadavg()
    print(f"\nload average (1/5/15 min) before: {' '.join(f'{x:.2f}' for x in report['load_before'])}, after: "
          f"{' '.join(f'{x:.2f}' for x in report['load_after'])}, on {os.cpu_count()} CPUs; threads {args.threads}")
    for shape, e in report["shapes"].items():
        bw = e["bandwidth_gbs"]
        print(f"\n{shape}: prompt {e['prompt']}, {e['new_tokens']} new tokens, {e['repeats']} runs per round; "
              f"best of {e['rounds']} round(s) of: TTFT median over the runs, decode tok/s = 1000 / median ms "
              f"between tokens after the first; memory bandwidth "
              f"{bw['read']:.1f} GB/s read (sum {bw.get('sum', 0):.1f}, mv {bw.get('mv', 0):.1f}, "
              f"four streams per thread {bw.get('streams', 0):.1f}), "
              f"{bw['copy']:.1f} GB/s copy")
        if "cpp" in skip:
            print("(C++ skipped)")
        print(f"{'row':<12} | {'TTFT ms':^26} | {'decode tok/s':^26} | {'C++/llama.cpp':^13} | {'C++/HF':^11} | "
              f"{'roofline tok/s':^18} | {'C++ = HF':>9}")
        print(f"{'':<12} | {'C++':>8} {'HF':>8} {'l.cpp':>8} | {'C++':>8} {'HF':>8} {'l.cpp':>8} | "
              f"{'ttft':>6} {'tok/s':>6} | {'ttft':>5} {'tok/s':>5} | {'C++':>8} {'l.cpp':>9} | {'fp32':>9}")
        for row in ROWS:
            c = e.get("cpp", {}).get(row, {})
            h = e.get("hf", {}).get(row, {})
            l = e.get("llamacpp", {}).get(row, {})
            g = e.get("gguf", {}).get(LLAMACPP_TYPE[row], {})

            def ratio(a, b, invert=False):
                if not a or not b:
                    return "-"
                return f"{(b / a if invert else a / b):.2f}"

            # Ratios are speed-ups: > 1 means C++ is faster (shorter TTFT, more tok/s).
            ref = e.get("hf", {}).get("fp32", {}).get("tokens")
            agree = (f"{common_prefix(c['tokens'], ref)}/{len(ref)}" if c.get("tokens") and ref else "-")
            label = f"{row}/{LLAMACPP_TYPE[row]}"
            print(f"{label:<12} | {fmt(c.get('ttft_ms_median')):>8} {fmt(h.get('ttft_ms_median')):>8} "
                  f"{fmt(l.get('ttft_ms_median')):>8} | {fmt(c.get('decode_tok_s')):>8} {fmt(h.get('decode_tok_s')):>8} "
                  f"{fmt(l.get('decode_tok_s')):>8} | {ratio(c.get('ttft_ms_median'), l.get('ttft_ms_median'), True):>6} "
                  f"{ratio(c.get('decode_tok_s'), l.get('decode_tok_s')):>6} | "
                  f"{ratio(c.get('ttft_ms_median'), h.get('ttft_ms_median'), True):>5} "
                  f"{ratio(c.get('decode_tok_s'), h.get('decode_tok_s')):>5} | {fmt(c.get('roofline_tok_s')):>8} "
                  f"{fmt(g.get('roofline_tok_s')):>9} | {agree:>9}")
        print("ratios are speed-ups of C++ (> 1: C++ faster); 'C++ = HF fp32': how many of C++'s greedy tokens "
              "equal HF fp32's, as a prefix")
        for row in ROWS:
            c = e.get("cpp", {}).get(row, {})
            l = e.get("llamacpp", {}).get(row, {})
            h = e.get("hf", {}).get(row, {})
            if c.get("gemv_ms") and c.get("weight_bytes_per_token"):
                print(f"  {row:<5} ms/token: C++ {c['decode_step_ms_median']:.3f} (its linear layers alone "
                      f"{c['gemv_ms']:.3f}), HF {fmt(h.get('decode_step_ms_median'), 3)}, llama.cpp "
                      f"{fmt(l.get('decode_step_ms_median'), 3)}; weights read per token: C++ "
                      f"{c['weight_bytes_per_token'] / 1e6:.1f} MB, llama.cpp "
                      f"{e.get('gguf', {}).get(LLAMACPP_TYPE[row], {}).get('bytes_per_token', 0) / 1e6:.1f} MB")
        if e["rounds"] > 1:
            for row in ROWS:
                parts = []
                for side, name in (("cpp", "C++"), ("hf", "HF"), ("llamacpp", "llama.cpp")):
                    rounds = e.get(side, {}).get(row, {}).get("rounds", [])
                    if rounds:
                        parts.append(f"{name} " + " / ".join(f"{1000 / x['decode_step_ms_median']:.2f}" for x in rounds))
                print(f"  {row:<5} decode tok/s per round: {', '.join(parts)}")
        if e.get("logit_check"):
            for kind, chk in e["logit_check"].items():
                print(f"  logits llama.cpp {kind} vs HF fp32: top-1 equal {chk['top1_equal']}, max |diff| "
                      f"{chk['max_abs_diff']:.2e}, greedy prefix {chk['greedy_prefix_equal_hf_fp32']}/{e['new_tokens']}")

    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
