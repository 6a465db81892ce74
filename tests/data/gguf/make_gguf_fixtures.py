#!/usr/bin/env python3
"""Regenerate the GGUF test fixtures in this folder.

The fixtures are derived from the tiny LLaMA checkpoint in
tests/data/parity/tiny_vicuna0/vicuna (2 layers, hidden 64, 4 heads,
ffn 176, vocab 1000, float32 safetensors + sentencepiece tokenizer.model).

Steps (each can be skipped, see --help):

  convert   run llama.cpp's convert_hf_to_gguf.py (path given with --llama-cpp)
            to produce tiny_llama_f16.gguf, tiny_llama_q8_0.gguf and an f32
            GGUF (kept in --work-dir; copied here only with --keep-f32).
  verify    check that the converted tensors match the safetensors after the
            converter's q/k row permutation (see README.md).
  q4        re-encode the f32 GGUF into tiny_llama_q4_0.gguf / tiny_llama_q4_1.gguf
            with gguf.quants (metadata copied verbatim, general.file_type updated).
  q4k       q4_k_blocks.gguf with random (valid) Q4_K blocks and
            q4_k_expected.safetensors with gguf.quants' float32 dequantisation.
  broken    truncated.gguf and bad_magic.gguf for error-path tests.
  greedy    expected_greedy.json: 12 greedy tokens from the HF float32 model
            (needs torch + transformers).

Usage (see README.md for the exact environment):
  PYTHONPATH=<llama.cpp>/gguf-py python make_gguf_fixtures.py --llama-cpp <llama.cpp>
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
HF_DIR = REPO / "tests" / "data" / "parity" / "tiny_vicuna0" / "vicuna"

PROMPT_TEXT = "The quick brown fox"
N_NEW_TOKENS = 12
SEED = 20240601


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def hf_state_dict(hf_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    out: dict[str, np.ndarray] = {}
    for p in sorted(hf_dir.glob("*.safetensors")):
        out.update(load_file(str(p)))
    return out


def rope_rows_to_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """Row order used by the converter for attn_q / attn_k (LLaMA arch).

    Inside each head the HF rows [first half | second half] are interleaved:
    gguf_row[h*hd + 2*i + j] = hf_row[h*hd + j*hd/2 + i].
    """
    rows = w.shape[0]
    hd = rows // n_head
    return w.reshape(n_head, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_rows_to_hf(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of rope_rows_to_gguf."""
    rows = w.shape[0]
    hd = rows // n_head
    return w.reshape(n_head, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field_value(field: gguf.ReaderField):
    """(value, type, sub_type) of a reader field, strings kept as raw bytes."""
    main = VT(field.types[0])
    if main == VT.ARRAY:
        sub = VT(field.types[-1])
        if sub == VT.STRING:
            val = [bytes(field.parts[i]) for i in field.data]
        else:
            val = [field.parts[i].tolist()[0] for i in field.data]
        return val, main, sub
    if main == VT.STRING:
        return bytes(field.parts[field.data[0]]), main, None
    return field.parts[field.data[0]].tolist()[0], main, None


def copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, overrides: dict) -> None:
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # header fields / written by GGUFWriter itself
        if key in overrides:
            val, vt = overrides[key]
            writer.add_key_value(key, val, vt)
            continue
        val, vt, sub = field_value(field)
        writer.add_key_value(key, val, vt, sub_type=sub)


def arch_of(reader: gguf.GGUFReader) -> str:
    f = reader.fields["general.architecture"]
    return bytes(f.parts[f.data[0]]).decode()


def write_file(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --------------------------------------------------------------------------
# steps
# --------------------------------------------------------------------------

def step_convert(llama_cpp: Path, out_dir: Path, f32_path: Path) -> None:
    conv = llama_cpp / "convert_hf_to_gguf.py"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(llama_cpp / "gguf-py") + os.pathsep + env.get("PYTHONPATH", "")
    targets = [("f32", f32_path),
               ("f16", out_dir / "tiny_llama_f16.gguf"),
               ("q8_0", out_dir / "tiny_llama_q8_0.gguf")]
    for outtype, dst in targets:
        cmd = [sys.executable, str(conv), str(HF_DIR), "--outtype", outtype, "--outfile", str(dst)]
        print("+", " ".join(cmd))
        subprocess.run(cmd, check=True, env=env)


def step_verify(out_dir: Path, f32_path: Path) -> None:
    sd = hf_state_dict(HF_DIR)
    cfg = json.loads((HF_DIR / "config.json").read_text())
    n_head = cfg["num_attention_heads"]
    n_head_kv = cfg.get("num_key_value_heads", n_head)
    for path in (f32_path, out_dir / "tiny_llama_f16.gguf"):
        r = gguf.GGUFReader(path)
        t = {x.name: x for x in r.tensors}
        for layer in range(cfg["num_hidden_layers"]):
            for gname, hname, nh in (("attn_q", "q_proj", n_head), ("attn_k", "k_proj", n_head_kv),
                                     ("attn_v", "v_proj", None)):
                g = np.asarray(t[f"blk.{layer}.{gname}.weight"].data)
                h = sd[f"model.layers.{layer}.self_attn.{hname}.weight"].astype(g.dtype)
                back = rope_rows_to_hf(g, nh) if nh else g
                assert np.array_equal(back, h), (path.name, gname, layer)
                if nh:
                    assert np.array_equal(g, rope_rows_to_gguf(h, nh))
        emb = np.asarray(t["token_embd.weight"].data)
        assert np.array_equal(emb, sd["model.embed_tokens.weight"].astype(emb.dtype))
        print(f"verify: {path.name}: q/k permutation and embeddings match the safetensors")


def step_q4(out_dir: Path, f32_path: Path) -> None:
    r = gguf.GGUFReader(f32_path)
    for qtype, ftype in ((QT.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
                         (QT.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1)):
        dst = out_dir / f"tiny_llama_{qtype.name.lower()}.gguf"
        w = gguf.GGUFWriter(dst, arch_of(r))
        copy_metadata(r, w, {"general.file_type": (int(ftype), VT.UINT32)})
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        for t in r.tensors:
            assert t.tensor_type == QT.F32, t.name
            data = np.asarray(t.data, dtype=np.float32)
            if data.ndim == 2 and data.shape[-1] % block == 0:
                q = gguf.quants.quantize(data, qtype)
                w.add_tensor(t.name, q, raw_shape=q.shape, raw_dtype=qtype)
            elif data.ndim == 2:
                # row width not a multiple of 32 (ffn_down: 176): same F16
                # fallback as convert_hf_to_gguf.py uses for --outtype q8_0
                w.add_tensor(t.name, data.astype(np.float16))
            else:
                w.add_tensor(t.name, data)  # 1-D norms stay F32
        write_file(w)
        print(f"q4: wrote {dst.name}")


def step_q4k(out_dir: Path) -> None:
    from safetensors.numpy import save_file
    rng = np.random.default_rng(SEED)
    shapes = {"q4k.rows3_in512": (3, 512), "q4k.rows2_in256": (2, 256)}
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[QT.Q4_K]  # 256, 144
    w = gguf.GGUFWriter(out_dir / "q4_k_blocks.gguf", "q4k_test")
    w.add_name("random Q4_K blocks")
    expected: dict[str, np.ndarray] = {}
    # 12-byte F32 tensor first, so the Q4_K data starts after 20 bytes of
    # alignment padding (all tensor sizes in the tiny_llama files are multiples of 32)
    probe = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    w.add_tensor("pad_probe.f32x3", probe)
    expected["pad_probe.f32x3"] = probe
    for name, (rows, cols) in shapes.items():
        nb = rows * cols // block_elems
        d = rng.uniform(1e-3, 1e-1, size=(nb, 1)).astype(np.float16)
        dmin = rng.uniform(1e-3, 1e-1, size=(nb, 1)).astype(np.float16)
        scales = rng.integers(0, 256, size=(nb, 12), dtype=np.uint8)
        qs = rng.integers(0, 256, size=(nb, 128), dtype=np.uint8)
        blocks = np.concatenate([d.view(np.uint8), dmin.view(np.uint8), scales, qs], axis=1)
        assert blocks.shape == (nb, block_bytes)
        raw = blocks.reshape(rows, cols // block_elems * block_bytes)
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=QT.Q4_K)
        deq = gguf.quants.dequantize(raw, QT.Q4_K).astype(np.float32)
        assert deq.shape == (rows, cols)
        expected[name] = np.ascontiguousarray(deq)
    write_file(w)
    dst = out_dir / "q4_k_expected.safetensors"
    save_file(expected, str(dst),
              # a single key: safetensors does not keep the order of several metadata keys
              metadata={"source": f"gguf.quants.dequantize of q4_k_blocks.gguf (seed {SEED})"})
    os.chmod(dst, 0o644)
    print("q4k: wrote q4_k_blocks.gguf, q4_k_expected.safetensors")


def step_broken(out_dir: Path) -> None:
    src = out_dir / "tiny_llama_f16.gguf"
    r = gguf.GGUFReader(src)
    first = r.tensors[0]
    # cut in the middle of the first tensor's data (header + tensor infos intact)
    cut = int(first.data_offset) + int(first.n_bytes) // 2 + 3
    (out_dir / "truncated.gguf").write_bytes(src.read_bytes()[:cut])
    good = (out_dir / "q4_k_blocks.gguf").read_bytes()
    (out_dir / "bad_magic.gguf").write_bytes(b"GGML" + good[4:])
    print(f"broken: truncated.gguf = first {cut} bytes of {src.name} "
          f"(tensor data starts at {r.data_offset}); bad_magic.gguf = q4_k_blocks.gguf with magic 'GGML'")


GGUF_TO_HF = {
    "token_embd": "model.embed_tokens", "output": "lm_head", "output_norm": "model.norm",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def gguf_as_hf_state_dict(path: Path, n_head: int, n_head_kv: int) -> dict[str, np.ndarray]:
    """Dequantise every tensor to float32, undo the q/k permutation, rename to HF."""
    out = {}
    for t in gguf.GGUFReader(path).tensors:
        w = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        parts = t.name.split(".")
        if parts[0] == "blk":
            base = parts[2]
            hf = f"model.layers.{parts[1]}.{GGUF_TO_HF[base]}.weight"
        else:
            base = parts[0]
            hf = f"{GGUF_TO_HF[base]}.weight"
        if base == "attn_q":
            w = rope_rows_to_hf(w, n_head)
        elif base == "attn_k":
            w = rope_rows_to_hf(w, n_head_kv)
        out[hf] = w
    return out


def greedy(model, prompt: list[int], n_new: int):
    """Greedy decoding with a full forward pass per step; never stops at EOS."""
    import torch
    ids = list(prompt)
    top1, margin = [], []
    with torch.no_grad():
        for _ in range(n_new):
            logits = model(torch.tensor([ids])).logits[0, -1].double()
            top = torch.topk(logits, 2)
            top1.append(round(float(top.values[0]), 6))
            margin.append(round(float(top.values[0] - top.values[1]), 6))
            ids.append(int(top.indices[0]))
    return {"new_ids": ids[len(prompt):], "top1_logit": top1, "margin_to_top2": margin}


def dump_json(obj, indent: str = "") -> str:
    """JSON with one line per list of scalars."""
    if isinstance(obj, dict):
        inner = indent + "  "
        items = [f"{inner}{json.dumps(k)}: {dump_json(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    return json.dumps(obj)


def step_greedy(out_dir: Path) -> None:
    import sentencepiece as spm
    import torch
    import transformers
    from transformers import LlamaForCausalLM

    cfg = json.loads((HF_DIR / "config.json").read_text())
    n_head = cfg["num_attention_heads"]
    n_head_kv = cfg.get("num_key_value_heads", n_head)
    sp = spm.SentencePieceProcessor(model_file=str(HF_DIR / "tokenizer.model"))
    prompt = [sp.bos_id()] + sp.encode(PROMPT_TEXT)
    model = LlamaForCausalLM.from_pretrained(str(HF_DIR), torch_dtype=torch.float32)
    model.eval()
    ref = greedy(model, prompt, N_NEW_TOKENS)
    new = ref["new_ids"]
    with torch.no_grad():  # cross-check with HF's own greedy search (stops at EOS)
        gen = model.generate(torch.tensor([prompt]), max_new_tokens=N_NEW_TOKENS, do_sample=False,
                             pad_token_id=cfg.get("pad_token_id", 0))[0, len(prompt):].tolist()
    assert gen == new[:len(gen)], (gen, new)

    # same computation (float32 activations) with the weights decoded from each GGUF
    per_file = {}
    hf_sd = {k: torch.from_numpy(v.copy()) for k, v in hf_state_dict(HF_DIR).items()}
    for fname in ("tiny_llama_f16.gguf", "tiny_llama_q8_0.gguf", "tiny_llama_q4_0.gguf", "tiny_llama_q4_1.gguf"):
        sd = gguf_as_hf_state_dict(out_dir / fname, n_head, n_head_kv)
        assert set(sd) == set(hf_sd), fname
        model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
        per_file[fname] = greedy(model, prompt, N_NEW_TOKENS)
    model.load_state_dict(hf_sd, strict=True)

    out = {
        "model_dir": "tests/data/parity/tiny_vicuna0/vicuna",
        "dtype": "float32",
        "prompt_text": PROMPT_TEXT,
        "prompt_ids": prompt,
        "n_new_tokens": N_NEW_TOKENS,
        "new_ids": new,
        "new_pieces": [sp.id_to_piece(i) for i in new],
        "hf_generate_new_ids": gen,
        "top1_logit": ref["top1_logit"],
        "margin_to_top2": ref["margin_to_top2"],
        "dequantised_gguf_weights": per_file,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (out_dir / "expected_greedy.json").write_text(dump_json(out) + "\n")
    print("greedy:", prompt, "->", new)
    for f, v in per_file.items():
        print(f"  {f}: {v['new_ids']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp", type=Path, help="llama.cpp source dir (runs the convert step)")
    ap.add_argument("--out-dir", type=Path, default=HERE)
    ap.add_argument("--work-dir", type=Path, help="where the f32 GGUF lives (default: a temp dir)")
    ap.add_argument("--keep-f32", action="store_true", help="also write tiny_llama_f32.gguf into --out-dir")
    ap.add_argument("--skip", default="", help="comma list of steps to skip: verify,q4,q4k,broken,greedy")
    args = ap.parse_args()
    skip = {s for s in args.skip.split(",") if s}

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gguf_fixtures_"))
    work.mkdir(parents=True, exist_ok=True)
    f32_path = work / "tiny_llama_f32.gguf"
    print(f"gguf-py from {Path(gguf.__file__).parent}")

    if args.llama_cpp:
        step_convert(args.llama_cpp, args.out_dir, f32_path)
    if not f32_path.exists():
        sys.exit(f"{f32_path} missing: pass --llama-cpp or --work-dir holding tiny_llama_f32.gguf")
    if "verify" not in skip:
        step_verify(args.out_dir, f32_path)
    if "q4" not in skip:
        step_q4(args.out_dir, f32_path)
    if "q4k" not in skip:
        step_q4k(args.out_dir)
    if "broken" not in skip:
        step_broken(args.out_dir)
    if "greedy" not in skip:
        step_greedy(args.out_dir)
    if args.keep_f32:
        shutil.copyfile(f32_path, args.out_dir / "tiny_llama_f32.gguf")


if __name__ == "__main__":
    main()
