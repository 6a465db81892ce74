"""Reference LoRA adapters written by Hugging Face PEFT, for tests/models/test_lora.cpp.

The base model is the tiny grouped-query LLaMA of tests/data/hf_llama_gqa. Two adapters are
made with PEFT and saved as PEFT saves them, with random (non-zero) A and B so that each
changes the outputs:
  detect/  q_proj and v_proj of layers 0 and 2 (target_modules list + layers_to_transform),
           r 4, alpha 8: adapter_model.safetensors
  ocr/     a regex target_modules string (o_proj and down_proj of layer 1), r 2, alpha 16 with
           alpha_pattern {down_proj: 4}, rank-stabilised scaling: adapter_model.bin (torch.save,
           as older PEFT wrote)
Both are then loaded back into ONE PeftModel (PeftModel.from_pretrained + load_adapter) and
the logits with each adapter active and with adapters disabled go to io.safetensors.

Run from the repository root with the project's venv (pip install peft):
    .venv/bin/python tests/data/lora/make_fixture.py
To check that the adapters as the C++ code writes them load in PEFT and give the fixture's
logits (the test writes them when MINIGPT4_LORA_EXPORT_DIR is set):
    MINIGPT4_LORA_EXPORT_DIR=/tmp/lora_export build/tests/test_models "[lora]"
    .venv/bin/python tests/data/lora/make_fixture.py --verify /tmp/lora_export/detect --adapter detect
    .venv/bin/python tests/data/lora/make_fixture.py --verify /tmp/lora_export/ocr --adapter ocr
"""
import argparse
import os
import pathlib

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

HERE = pathlib.Path(__file__).parent
# Relative, so that base_model_name_or_path in the adapter configs names no machine's path.
BASE = os.path.relpath(HERE.parent / "hf_llama_gqa")


def base_model():
    return transformers.LlamaForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval()


def make_adapter(name, config, safe_serialization, seed):
    model = get_peft_model(base_model(), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, p in model.named_parameters():
            if "lora_" in param_name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    model.save_pretrained(HERE / name, safe_serialization=safe_serialization)
    (HERE / name / "README.md").unlink(missing_ok=True)  # PEFT's model card template


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float().contiguous()


def main():
    make_adapter("detect", LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                                      layers_to_transform=[0, 2], task_type="CAUSAL_LM"),
                 safe_serialization=True, seed=1)
    make_adapter("ocr", LoraConfig(r=2, lora_alpha=16, target_modules=r".*layers\.1\..*(o_proj|down_proj)",
                                   alpha_pattern={"down_proj": 4}, use_rslora=True),
                 safe_serialization=False, seed=2)

    model = PeftModel.from_pretrained(base_model(), HERE / "detect", adapter_name="detect").eval()
    model.load_adapter(HERE / "ocr", adapter_name="ocr")
    ids = torch.randint(3, 64, (2, 9), generator=torch.Generator().manual_seed(3))
    tensors = {"input_ids": ids}
    with model.disable_adapter():
        tensors["logits_original"] = logits_of(model, ids)
    for name in ("detect", "ocr"):
        model.set_adapter(name)
        tensors[f"logits_{name}"] = logits_of(model, ids)
    save_file(tensors, HERE / "io.safetensors",
              metadata={"peft": peft.__version__, "transformers": transformers.__version__, "torch": torch.__version__})
    for name in ("detect", "ocr"):
        print(name, "max |logits - original|", (tensors[f"logits_{name}"] - tensors["logits_original"]).abs().max().item())


def verify(folder, adapter):
    expected = load_file(HERE / "io.safetensors")
    model = PeftModel.from_pretrained(base_model(), folder).eval()
    diff = (logits_of(model, expected["input_ids"]) - expected[f"logits_{adapter}"]).abs().max().item()
    print(f"{folder}: loaded by PEFT {peft.__version__}; max |logits - fixture {adapter}| = {diff:.3g}")
    if diff > 1e-4:
        raise SystemExit("mismatch")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--verify", help="a PEFT folder written elsewhere to load and compare")
    parser.add_argument("--adapter", default="detect", help="which fixture adapter it should equal")
    args = parser.parse_args()
    verify(args.verify, args.adapter) if args.verify else main()
