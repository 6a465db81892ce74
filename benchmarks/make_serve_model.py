#!/usr/bin/env python3
r"""The models bench_serve.py runs: a random LLaMA of the 1.1B shape that our server and
llama.cpp's llama-server can both load, with the same weights and tokenizer.

    .venv/bin/python benchmarks/make_serve_model.py --out /work/scratch/bench1b \
        [--bench-decode build/benchmarks/bench_decode] [--llama-cpp-src DIR]

writes into --out:
  llm/                  a Hugging Face directory: config.json + model.safetensors (bf16, seed 0,
                        std 0.02, written by bench_decode --shape 1b) and tokenizer.model: the tiny
                        parity fixture's sentencepiece model extended with plain pieces to the
                        model's vocabulary (32000, "\u2581w0", "\u2581w1", ...), so that every
                        id the random model picks decodes on both servers, and its answers
                        sent back tokenize into the same ids
  ours_bf16.yaml        a MiniGPT-4 eval config over that LLM (the tiny fixture's ViT and
  ours_int8.yaml        Q-Former, a fresh projection), in bf16 and in int8 (low_resource)
  vicuna0.jinja         a chat template for llama-server that writes MiniGPT-4's Vicuna v0 prompt
  model-bf16.gguf       with --llama-cpp-src (llama.cpp's sources, e.g. the llama-cpp-python
  model-q8_0.gguf       sdist's vendor/llama.cpp): converted by its own convert_hf_to_gguf.py

Needs sentencepiece and protobuf in the venv (pip install sentencepiece protobuf) for the
tokenizer, and the converter's own requirements (numpy, gguf, transformers) for GGUF.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE = REPO_ROOT / "tests/data/parity/tiny_vicuna0"

# MiniGPT-4's Vicuna v0 prompt (CONV_VISION_Vicuna0: the open turn is 'Assistant: ', space included), for
# llama-server.
VICUNA0_TEMPLATE = (
    "{{- 'Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide "
    "it to you. Please answer my questions.###' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- 'Human: ' + message['content'] + '###' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'Assistant: ' + message['content'] + '###' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant: ' -}}{%- endif -%}")


def extend_tokenizer(src: Path, out: Path, vocab: int) -> None:
    from sentencepiece import sentencepiece_model_pb2 as pb  # needs protobuf

    model = pb.ModelProto()
    model.ParseFromString(src.read_bytes())
    have = {p.piece for p in model.pieces}
    i = 0
    while len(model.pieces) < vocab:
        piece = f"\u2581w{i}"
        i += 1
        if piece in have:
            continue
        p = model.pieces.add()
        # Scored above every fixture piece, so that an answer's text sent back (a replayed
        # conversation) tokenizes into the very pieces that were generated and a prefix cache
        # can match it; with low scores "w123" would come back as "w", "1", "2", "3".
        p.piece, p.score, p.type = piece, 0.0, pb.ModelProto.SentencePiece.NORMAL
    out.write_bytes(model.SerializeToString())


def config_yaml(llm: Path, precision: str) -> str:
    manifest = json.loads((FIXTURE / "manifest.json").read_text())
    c = manifest["config"]
    v, q = c["vision"], c["qformer"]
    low = "  low_resource: True\n" if precision == "int8" else ""
    return (f"# bench_serve.py's model: a random 1.1B-shape LLaMA ({precision}) behind the tiny fixture's ViT\n"
            f"# and Q-Former (benchmarks/make_serve_model.py)\n"
            f"model:\n  arch: minigpt4\n  model_type: pretrain_vicuna0\n  image_size: {c['image_size']}\n"
            f"  vit_patch_size: {v['patch_size']}\n  vit_width: {v['width']}\n  vit_depth: {v['depth']}\n"
            f"  vit_num_heads: {v['heads']}\n  vit_mlp_ratio: {v['mlp_ratio']}\n  vit_precision: fp32\n"
            f"  llm_precision: bf16\n{low}"
            f"  vit_model: '{FIXTURE / 'eva_vit_g.pth'}'\n  q_former_model: '{FIXTURE / 'blip2_pretrained.pth'}'\n"
            f"  num_query_token: {q['num_query_token']}\n  qformer_hidden_size: {q['hidden_size']}\n"
            f"  qformer_num_layers: {q['num_hidden_layers']}\n  qformer_num_heads: {q['num_attention_heads']}\n"
            f"  qformer_intermediate_size: {q['intermediate_size']}\n  cross_attention_freq: {q['cross_attention_freq']}\n"
            f"  llama_model: '{llm}'\n"
            f"run:\n  device: cpu\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--bench-decode", default=str(REPO_ROOT / "build/benchmarks/bench_decode"))
    p.add_argument("--llama-cpp-src", type=Path, help="llama.cpp's sources: also write the GGUF files")
    args = p.parse_args()
    out = args.out.resolve()
    llm = out / "llm"
    out.mkdir(parents=True, exist_ok=True)
    if not (llm / "model.safetensors").exists():
        subprocess.run([args.bench_decode, "--shape", "1b", "--dir", str(llm), "--precisions", "bf16",
                        "--new-tokens", "2", "--repeats", "1", "--warmup", "0", "--threads", "2"], check=True)
    vocab = json.loads((llm / "config.json").read_text())["vocab_size"]
    extend_tokenizer(FIXTURE / "tokenizer.model", llm / "tokenizer.model", vocab)
    for precision in ("bf16", "int8"):
        (out / f"ours_{precision}.yaml").write_text(config_yaml(llm, precision))
    (out / "vicuna0.jinja").write_text(VICUNA0_TEMPLATE)
    if args.llama_cpp_src:
        for outtype in ("bf16", "q8_0"):
            subprocess.run([sys.executable, str(args.llama_cpp_src / "convert_hf_to_gguf.py"), str(llm),
                            "--outtype", outtype, "--outfile", str(out / f"model-{outtype}.gguf")], check=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
