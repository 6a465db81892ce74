#pragma once
// One decode step of a LLaMA model for one sequence on the CPU, written as plain loops over
// the weights and the KV cache (as llm.c and llama.cpp do) instead of about 25 ATen calls per
// layer. At small widths the calls' dispatch (1-2 us each) is most of a step; at 1B sizes it
// still adds about a tenth to the weight reads.
//
// The arithmetic is LlamaForCausalLM::forward's, in the same order of operations and, in a
// bf16 model, rounded to bf16 at the same points; only the float32 sums run in another
// order, so results agree with the ATen path to rounding. It applies to inference (no
// autograd) without biases or an active unmerged LoRA adapter, with fp32 or bf16
// activations and fp32, bf16 or int8 weights, on CPUs that run cpu_gemv's kernels; anything
// else returns an undefined tensor and the caller takes the ATen path.
// MINIGPT4_CPU_DECODE=0 in the environment turns it off.
#include <ATen/core/Tensor.h>

#include <vector>

namespace minigpt4 {

struct LlamaForCausalLM;
struct KVCache;

namespace cpu_decode {

// Logits [1, 1, V] float32 for `inputs_embeds` [1, 1, H] at position cache.length(), whose
// keys and values are appended to `cache`; undefined, with nothing touched, when this path
// does not apply.
at::Tensor llama_step(const LlamaForCausalLM& model, const at::Tensor& inputs_embeds, KVCache& cache);

// The same step for several sequences at once (continuous batching), each with its own
// cache and length: inputs_embeds [N, 1, H] -> logits [N, V] float32. A cache given for
// several consecutive rows takes them as consecutive positions of its sequence (a prompt's
// chunk in the same pass over the weights), as CausalLM::step_sequences does row by row. The projections read
// float32 weights once for all N rows (MKL), the others once per 4 rows (cpu_gemv's decode
// kernels, see linear_batch in the .cpp); attention runs per sequence over its own cache. Undefined, with
// nothing touched, when this path does not apply to the model, the input or any cache.
at::Tensor llama_steps(const LlamaForCausalLM& model, const at::Tensor& inputs_embeds,
                       const std::vector<KVCache*>& caches);

// On unless MINIGPT4_CPU_DECODE=0; tests switch it to compare both paths.
bool enabled();
void set_enabled(bool on);

}  // namespace cpu_decode

}  // namespace minigpt4
