#!/usr/bin/env python3
r"""Side-by-side training step: minigpt4-cpp (bench_train_step) vs the same step in Python PyTorch.

The step is MiniGPT-4's stage-1 step: frozen ViT -> frozen Q-Former -> trainable llama_proj
-> [bos, image, caption] through the frozen LLaMA with the caption as labels -> backward ->
AdamW (LAVIS' decay / no-decay groups, lr 1e-4, weight decay 0.05). The Python model is built
from the Hugging Face classes of bench_modules_hf.py (Blip2VisionModel, Blip2QFormerModel,
nn.Linear, LlamaForCausalLM) with the same sizes and random weights. CPU, float32.

    .venv/bin/python benchmarks/bench_train_step_hf.py --cpp-bin build/benchmarks/bench_train_step \
        --threads 2 [--shape tiny|mid|all] [--repeats N] [--warmup N] [--json PATH]

Prints per shape: median step ms, samples/s and peak RSS of each side, and C++ speed-up
(Python step time / C++ step time). Nothing is downloaded and nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_modules_hf import REPO_ROOT, SHAPES, Shape, randomise, run_cpp  # noqa: E402


class PyMiniGPT4(nn.Module):
    """MiniGPT-4's stage-1 forward over Hugging Face modules (post_layernorm plays ln_vision)."""

    def __init__(self, s: Shape, attn: str):
        super().__init__()
        from transformers import (Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig, Blip2VisionModel,
                                  LlamaConfig, LlamaForCausalLM)
        vision_cfg = Blip2VisionConfig(
            hidden_size=s.vit_width, intermediate_size=s.vit_mlp_hidden, num_hidden_layers=s.vit_depth,
            num_attention_heads=s.vit_heads, image_size=s.image_size, patch_size=s.patch_size,
            hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True)
        q_cfg = Blip2QFormerConfig(
            hidden_size=s.q_hidden, num_hidden_layers=s.q_layers, num_attention_heads=s.q_heads,
            intermediate_size=s.q_ffn, encoder_hidden_size=s.vit_width, cross_attention_frequency=s.q_cross_freq,
            hidden_act="gelu", layer_norm_eps=1e-12)
        llm_cfg = LlamaConfig(
            vocab_size=s.vocab, hidden_size=s.llm_hidden, intermediate_size=s.llm_ffn,
            num_hidden_layers=s.llm_layers, num_attention_heads=s.llm_heads, num_key_value_heads=s.llm_kv_heads,
            rms_norm_eps=s.rms_eps, max_position_embeddings=2048, tie_word_embeddings=False, hidden_act="silu")
        self.visual_encoder = Blip2VisionModel._from_config(vision_cfg, attn_implementation=attn, dtype=torch.float32)
        self.Qformer = Blip2QFormerModel._from_config(q_cfg, attn_implementation=attn, dtype=torch.float32)
        self.query_tokens = nn.Parameter(torch.zeros(1, s.num_queries, s.q_hidden))
        self.llama_proj = nn.Linear(s.q_hidden, s.llm_hidden)
        self.llama_model = LlamaForCausalLM._from_config(llm_cfg, attn_implementation=attn, dtype=torch.float32)

    def forward(self, images: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        image_embeds = self.visual_encoder(pixel_values=images).last_hidden_state
        queries = self.query_tokens.expand(images.shape[0], -1, -1)
        query_out = self.Qformer(query_embeds=queries, encoder_hidden_states=image_embeds).last_hidden_state
        img = self.llama_proj(query_out)
        batch = images.shape[0]
        bos = torch.ones(batch, 1, dtype=torch.long)
        embed = self.llama_model.get_input_embeddings()
        inputs = torch.cat([embed(bos), img, embed(text_ids)], dim=1)
        ignore = torch.full((batch, 1 + img.shape[1]), -100, dtype=torch.long)
        labels = torch.cat([ignore, text_ids], dim=1)
        mask = torch.ones(inputs.shape[:2], dtype=torch.long)
        return self.llama_model(inputs_embeds=inputs, attention_mask=mask, labels=labels, use_cache=False).loss


def lavis_adamw(model: nn.Module) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "bias" in name or "ln" in name or "bn" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0}],
                             lr=1e-4, betas=(0.9, 0.999))


def bench_python(s: Shape, warmup: int, repeats: int, attn: str) -> dict:
    torch.manual_seed(0)
    model = PyMiniGPT4(s, attn).eval()
    randomise(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("llama_proj."))
    optimizer = lavis_adamw(model)
    images = torch.randn(s.batch, 3, s.image_size, s.image_size)
    text_ids = torch.randint(3, min(s.vocab, 1000), (s.batch, s.text_tokens))

    def step() -> float:
        optimizer.zero_grad()
        loss = model(images, text_ids)
        loss.backward()
        optimizer.step()
        return float(loss)

    for _ in range(warmup):
        step()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        runs.append((time.perf_counter() - start) * 1e3)
    med = statistics.median(runs)
    result = {"median_ms": med, "min_ms": min(runs), "runs": runs, "samples_per_sec": s.batch / (med / 1e3),
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
              "llm_tokens": 1 + s.llm_tokens, "batch": s.batch}
    print(f"  train_step  median {med:10.3f} ms  {result['samples_per_sec']:8.2f} samples/s  "
          f"peak RSS {result['peak_rss_mib']:.0f} MiB  ({result['llm_tokens']} LLM tokens, {repeats} runs)", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", "mid", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=0, help="timed steps (0: the shape's default, tiny 30, mid 3)")
    parser.add_argument("--warmup", type=int, default=-1, help="untimed steps (-1: the shape's default)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads / --threads (0: default)")
    parser.add_argument("--cpp-bin", default="build/benchmarks/bench_train_step")
    parser.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--json", help="write both sides' results to this file")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    binary = Path(args.cpp_bin)
    if not binary.is_absolute() and not binary.exists():
        binary = REPO_ROOT / binary
    if not binary.exists():
        print(f"error: {args.cpp_bin} not found (ninja -C build bench_train_step)", file=sys.stderr)
        return 1

    import transformers
    print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads, float32 CPU", flush=True)
    results = {}
    for name in (["tiny", "mid"] if args.shape == "all" else [args.shape]):
        s = SHAPES[name]
        warmup = args.warmup if args.warmup >= 0 else s.default_warmup
        repeats = args.repeats if args.repeats > 0 else s.default_repeats
        print(f"\n=== {name}: warm-up {warmup}, timed steps {repeats}", flush=True)
        cpp = run_cpp(binary, name, args.threads, args.repeats, args.warmup)[name]
        py = bench_python(s, warmup, repeats, args.attn_implementation)
        results[name] = {"cpp": cpp, "python": py}

    print(f"\n{'shape':<6} {'C++ ms':>10} {'Python ms':>10} {'C++ smp/s':>10} {'Py smp/s':>10} "
          f"{'speed-up':>9} {'C++ RSS MiB':>12} {'Py RSS MiB':>11}")
    for name, r in results.items():
        c, p = r["cpp"], r["python"]
        print(f"{name:<6} {c['median_ms']:>10.2f} {p['median_ms']:>10.2f} {c['samples_per_sec']:>10.2f} "
              f"{p['samples_per_sec']:>10.2f} {p['median_ms'] / c['median_ms']:>8.2f}x {c['peak_rss_mib']:>12.0f} "
              f"{p['peak_rss_mib']:>11.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
