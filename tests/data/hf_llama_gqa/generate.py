"""Golden outputs of Hugging Face transformers' LlamaForCausalLM on a tiny grouped-query
attention config (num_key_value_heads < num_attention_heads, RMSNorm eps 1e-5, rope_theta
500000), for tests/models/test_llama_hf.cpp. The MiniGPT-4 fixtures use plain multi-head
attention; this pins the GQA path against an independent reference.

Run from the repository root with the project's venv (transformers installed for the
benchmarks):  .venv/bin/python tests/data/hf_llama_gqa/generate.py
"""
import json
import pathlib

import torch
import transformers
from safetensors.torch import save_file

out = pathlib.Path(__file__).parent
torch.manual_seed(1234)
config = transformers.LlamaConfig(
    vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
    num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500000.0,
    max_position_embeddings=128, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
)
model = transformers.LlamaForCausalLM(config).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1 + 0.1 * torch.randn_like(p))
        else:
            p.normal_(0, 0.2)
model.save_pretrained(out, safe_serialization=True)

ids = torch.randint(3, 64, (2, 11))
mask = torch.ones_like(ids)
mask[1, :4] = 0  # row 1 is left-padded
with torch.no_grad():
    plain = model(input_ids=ids, output_hidden_states=True)
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    padded = model(input_ids=ids, attention_mask=mask, position_ids=position_ids)
tensors = {
    "input_ids": ids,
    "attention_mask": mask,
    "logits": plain.logits.float().contiguous(),
    "hidden_states": torch.stack(plain.hidden_states).contiguous(),
    "padded_logits": padded.logits.float().contiguous(),
}
save_file(tensors, out / "io.safetensors", metadata={"transformers": transformers.__version__, "torch": torch.__version__})
print(json.dumps({k: list(v.shape) for k, v in tensors.items()}), "transformers", transformers.__version__)
