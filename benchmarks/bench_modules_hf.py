#!/usr/bin/env python3
r"""Side-by-side forward timings: minigpt4-cpp's modules (bench_modules) vs Hugging Face.

Runs the C++ binary `bench_modules` (with --json to a temporary file), then times the same
shapes with the Hugging Face `transformers` classes in this Python's PyTorch, and prints one
table per shape: module, C++ ms, Python ms, C++/Python. CPU, float32, no grad, eval mode,
random weights (torch.manual_seed); nothing is downloaded and nothing is asserted.

    module        C++ (minigpt4-cpp)                 Python (transformers)
    vit           EvaVit + ln_vision                 Blip2VisionModel (its post_layernorm = ln_vision)
    qformer       QFormer(query_tokens, image)       Blip2QFormerModel(query_embeds, encoder_hidden_states)
    projector     minigpt4::Linear                   torch.nn.Linear
    llm_prefill   LlamaForCausalLM(inputs_embeds)    LlamaForCausalLM(inputs_embeds, use_cache=False)

    .venv/bin/python benchmarks/bench_modules_hf.py --cpp-bin build-bench/benchmarks/bench_modules \
        --threads 2 [--shape tiny|mid|all] [--rounds R] [--repeats N] [--warmup N] [--json PATH]

Needs `transformers` in the venv (.venv/bin/pip install transformers); see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
MODULES = ("vit", "qformer", "projector", "llm_prefill")


@dataclass
class Shape:
    name: str
    batch: int
    # vision encoder (EVA ViT)
    image_size: int
    patch_size: int
    vit_width: int
    vit_depth: int
    vit_heads: int
    vit_mlp_hidden: int
    # Q-Former
    q_hidden: int
    q_layers: int
    q_heads: int
    q_ffn: int
    q_cross_freq: int
    num_queries: int
    # LLaMA
    vocab: int
    llm_hidden: int
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    llm_ffn: int
    rms_eps: float
    text_tokens: int
    default_repeats: int
    default_warmup: int

    @property
    def vision_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def llm_tokens(self) -> int:
        return self.num_queries + self.text_tokens


# Same sizes as tiny_shape() / mid_shape() in bench_modules.cpp.
SHAPES = {
    "tiny": Shape(
        name="tiny", batch=2,
        image_size=56, patch_size=14, vit_width=64, vit_depth=3, vit_heads=4, vit_mlp_hidden=int(64 * 4.3637),
        q_hidden=48, q_layers=2, q_heads=4, q_ffn=96, q_cross_freq=2, num_queries=8,
        vocab=1000, llm_hidden=64, llm_layers=2, llm_heads=4, llm_kv_heads=4, llm_ffn=176, rms_eps=1e-6,
        text_tokens=64, default_repeats=30, default_warmup=5,
    ),
    "mid": Shape(
        name="mid", batch=1,
        image_size=224, patch_size=14, vit_width=768, vit_depth=12, vit_heads=12, vit_mlp_hidden=3072,
        q_hidden=768, q_layers=12, q_heads=12, q_ffn=3072, q_cross_freq=2, num_queries=32,
        vocab=32000, llm_hidden=2048, llm_layers=22, llm_heads=32, llm_kv_heads=4, llm_ffn=5632, rms_eps=1e-5,
        text_tokens=64, default_repeats=3, default_warmup=1,
    ),
}


def randomise(module: nn.Module) -> None:
    """What bench_modules.cpp does: N(0, 0.02) everywhere, norms at weight 1 / bias 0."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.02)
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif type(m).__name__.endswith("RMSNorm"):
                m.weight.fill_(1.0)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def time_forward(forward, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        forward()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = forward()
        float(out.flatten()[0])
        runs.append((time.perf_counter() - start) * 1e3)
    return runs


def matmul_gflops(n: int, tries: int) -> float:
    with torch.no_grad():
        a, b = torch.randn(n, n), torch.randn(n, n)
        c = torch.mm(a, b)
        best = float("inf")
        for _ in range(tries):
            start = time.perf_counter()
            torch.mm(a, b, out=c)
            best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def bench_shape(s: Shape, warmup: int, repeats: int, attn: str) -> dict:
    from transformers import (Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig, Blip2VisionModel,
                              LlamaConfig, LlamaForCausalLM)

    torch.manual_seed(0)
    results = {}

    def report(module: str, model: nn.Module, forward) -> None:
        runs = time_forward(forward, warmup, repeats)
        results[module] = {"median_ms": statistics.median(runs), "min_ms": min(runs), "runs": runs,
                           "params": count_parameters(model)}
        impl = getattr(getattr(model, "config", None), "_attn_implementation", "-")
        print(f"  {module:<12} median {results[module]['median_ms']:10.3f} ms  ({len(runs)} runs, attention {impl})",
              flush=True)

    with torch.no_grad():
        vision_cfg = Blip2VisionConfig(
            hidden_size=s.vit_width, intermediate_size=s.vit_mlp_hidden, num_hidden_layers=s.vit_depth,
            num_attention_heads=s.vit_heads, image_size=s.image_size, patch_size=s.patch_size,
            hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True, initializer_range=0.02)
        vit = Blip2VisionModel._from_config(vision_cfg, attn_implementation=attn, dtype=torch.float32).eval()
        randomise(vit)
        images = torch.randn(s.batch, 3, s.image_size, s.image_size)
        report("vit", vit, lambda: vit(pixel_values=images).last_hidden_state)
        del vit

        q_cfg = Blip2QFormerConfig(
            hidden_size=s.q_hidden, num_hidden_layers=s.q_layers, num_attention_heads=s.q_heads,
            intermediate_size=s.q_ffn, encoder_hidden_size=s.vit_width, cross_attention_frequency=s.q_cross_freq,
            hidden_act="gelu", layer_norm_eps=1e-12)
        qformer = Blip2QFormerModel._from_config(q_cfg, attn_implementation=attn, dtype=torch.float32).eval()
        randomise(qformer)
        queries = torch.randn(s.batch, s.num_queries, s.q_hidden)
        image_embeds = torch.randn(s.batch, s.vision_tokens, s.vit_width)
        report("qformer", qformer,
               lambda: qformer(query_embeds=queries, encoder_hidden_states=image_embeds).last_hidden_state)
        del qformer

        projector = nn.Linear(s.q_hidden, s.llm_hidden).eval()
        randomise(projector)
        queries = torch.randn(s.batch, s.num_queries, s.q_hidden)
        report("projector", projector, lambda: projector(queries))
        del projector

        llm_cfg = LlamaConfig(
            vocab_size=s.vocab, hidden_size=s.llm_hidden, intermediate_size=s.llm_ffn,
            num_hidden_layers=s.llm_layers, num_attention_heads=s.llm_heads, num_key_value_heads=s.llm_kv_heads,
            rms_norm_eps=s.rms_eps, max_position_embeddings=2048, tie_word_embeddings=False, hidden_act="silu")
        llm = LlamaForCausalLM._from_config(llm_cfg, attn_implementation=attn, dtype=torch.float32).eval()
        randomise(llm)
        embeds = torch.randn(s.batch, s.llm_tokens, s.llm_hidden)
        report("llm_prefill", llm, lambda: llm(inputs_embeds=embeds, use_cache=False).logits)
        del llm
    return results


def run_cpp(binary: Path, shape: str, threads: int, repeats: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench_modules.json"
        cmd = [str(binary), "--shape", shape, "--json", str(out)]
        if threads > 0:
            cmd += ["--threads", str(threads)]
        if repeats > 0:
            cmd += ["--repeats", str(repeats)]
        if warmup >= 0:
            cmd += ["--warmup", str(warmup)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def fmt_ms(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def merge_round(total: dict, new: dict, shape: str) -> None:
    """Pools one round's runs of `shape` into `total` (medians and minima over all runs)."""
    total.setdefault("threads", new.get("threads"))
    for key in ("torch", "transformers"):
        if key in new:
            total.setdefault(key, new[key])
    gflops = total.setdefault("matmul_gflops", {})
    for n, value in new.get("matmul_gflops", {}).items():
        gflops[n] = max(gflops.get(n, 0.0), value)
    dest = total.setdefault(shape, {})
    for module, result in new.get(shape, {}).items():
        if module.startswith("_"):
            dest[module] = result
            continue
        pooled = dest.setdefault(module, {"runs": [], "params": result.get("params", 0)})
        pooled["runs"] += result["runs"]
        pooled["median_ms"] = statistics.median(pooled["runs"])
        pooled["min_ms"] = min(pooled["runs"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", "mid", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs (0: the shape's default, tiny 30, mid 3)")
    parser.add_argument("--warmup", type=int, default=-1, help="untimed runs (-1: the shape's default, tiny 5, mid 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads / --threads (0: default)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate C++ and Python this many times per shape and pool the runs")
    parser.add_argument("--cpp-bin", default="build/benchmarks/bench_modules",
                        help="the bench_modules binary (relative paths: to the cwd, else to the repository root)")
    parser.add_argument("--skip-cpp", action="store_true", help="time only the Python side")
    parser.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"],
                        help="transformers attention implementation (the C++ side uses SDPA)")
    parser.add_argument("--json", help="write both sides' results to this file")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    shapes = ["tiny", "mid"] if args.shape == "all" else [args.shape]

    binary = None
    if not args.skip_cpp:
        binary = Path(args.cpp_bin)
        if not binary.is_absolute() and not binary.exists():
            binary = REPO_ROOT / binary
        if not binary.exists():
            print(f"error: {args.cpp_bin} not found (build it: ninja -C build bench_modules, or pass --cpp-bin)",
                  file=sys.stderr)
            return 1

    import transformers

    load_before = os.getloadavg()
    print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} intra-op threads, float32 CPU, attention {args.attn_implementation}", flush=True)
    cpp: dict = {}
    py: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    # C++ and Python alternate shape by shape, so that both see the same background load.
    for round_index in range(args.rounds):
        for name in shapes:
            s = SHAPES[name]
            warmup = args.warmup if args.warmup >= 0 else s.default_warmup
            repeats = args.repeats if args.repeats > 0 else s.default_repeats
            print(f"\n=== {name}, round {round_index + 1}/{args.rounds}: warm-up {warmup}, timed runs {repeats}",
                  flush=True)
            if binary is not None:
                merge_round(cpp, run_cpp(binary, name, args.threads, args.repeats, args.warmup), name)
            gflops = {"1024": matmul_gflops(1024, 10), "2048": matmul_gflops(2048, 5)}
            print(f"Python torch.mm float32: {gflops['1024']:.1f} GFLOP/s (1024^3), "
                  f"{gflops['2048']:.1f} GFLOP/s (2048^3)", flush=True)
            result = bench_shape(s, warmup, repeats, args.attn_implementation)
            result["_meta"] = {"batch": s.batch, "llm_tokens": s.llm_tokens, "warmup": warmup, "repeats": repeats,
                               "rounds": args.rounds}
            merge_round(py, {"matmul_gflops": gflops, name: result}, name)

    load_after = os.getloadavg()
    print(f"\nload average (1/5/15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}, "
          f"after: {' '.join(f'{x:.2f}' for x in load_after)}, on {os.cpu_count()} CPUs")
    if cpp:
        print(f"threads: C++ {cpp.get('threads')}, Python {py['threads']}")
        g = cpp.get("matmul_gflops", {})
        print(f"float32 mm GFLOP/s (best)  C++: {g.get('1024', 0):.1f} (1024), {g.get('2048', 0):.1f} (2048)")
    g = py["matmul_gflops"]
    print(f"float32 mm GFLOP/s (best)  Python: {g['1024']:.1f} (1024), {g['2048']:.1f} (2048)")
    for name in shapes:
        s = SHAPES[name]
        meta = py[name]["_meta"]
        runs = meta["repeats"] * args.rounds
        print(f"\n{name}: batch {s.batch}, image {s.image_size}, {s.vision_tokens} vision tokens, "
              f"{s.num_queries} queries, {s.llm_tokens} LLM tokens; median of {runs} runs "
              f"({args.rounds} round(s) x {meta['repeats']}, {meta['warmup']} warm-up each)")
        print(f"{'module':<12} {'C++ ms':>11} {'Python ms':>11} {'C++/Python':>10} | {'C++ min':>11} "
              f"{'Python min':>11} {'min ratio':>9} | {'params C++/Py (M)':>17}")
        for module in MODULES:
            c = cpp.get(name, {}).get(module, {})
            p = py[name][module]
            ratio = f"{c['median_ms'] / p['median_ms']:.2f}" if c else "-"
            min_ratio = f"{c['min_ms'] / p['min_ms']:.2f}" if c.get("min_ms") else "-"
            params = f"{c.get('params', 0) / 1e6:.2f}/{p['params'] / 1e6:.2f}" if c else f"-/{p['params'] / 1e6:.2f}"
            print(f"{module:<12} {fmt_ms(c.get('median_ms')):>11} {fmt_ms(p['median_ms']):>11} {ratio:>10} | "
                  f"{fmt_ms(c.get('min_ms')):>11} {fmt_ms(p['min_ms']):>11} {min_ratio:>9} | {params:>17}")

    if args.json:
        Path(args.json).write_text(json.dumps({"cpp": cpp, "python": py}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
