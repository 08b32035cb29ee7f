// A decoder stack with block-quantized linear layers (Llama / Qwen2 / Qwen3, and Gemma 3), run as one native
// call per forward (kernels/fused_decoder.py says when and why).
#pragma once
#include <torch/extension.h>

#include <functional>
#include <tuple>
#include <vector>

// A linear layer whose weight rows are runs of block-quantized parts (one part unless the checkpoint's
// shards of a merged projection were quantized differently), with an optional bias.
struct QuantLinear {
  std::vector<torch::Tensor> parts;  // [N_i, bytes_i] uint8
  std::vector<int64_t> qtypes;       // each part's format (quant_linear.cpp, QType)
  int64_t K;
  c10::optional<torch::Tensor> bias;  // [sum N_i]

  torch::Tensor operator()(const torch::Tensor& x) const;  // x [M, K] -> [M, sum N_i]
};

struct DecoderLayer {
  torch::Tensor input_norm, post_norm;  // [d] RMSNorm weights (post_norm: after attention)
  c10::optional<torch::Tensor> q_norm, k_norm;  // [head_dim] per-head RMSNorms (Qwen3, Gemma 3)
  QuantLinear qkv, o, gate_up, down;
  int64_t num_heads, num_kv_heads, head_dim;
  double eps, scale;
  bool native_rotary;  // the native rotary kernel (bf16); false: torch's elementwise ops (fp32)
  // Gemma 3: norms scale by 1 + weight in fp32 torch ops, the attention output is normed before its residual
  // add, the MLP's input and output get their own norms (pre_ff_norm, post_ff_norm) and its gate is GeLU (tanh)
  bool gemma;
  c10::optional<torch::Tensor> pre_ff_norm, post_ff_norm;
  bool sliding;  // attends through the windowed batch (a sliding-window layer)
};

// A layer's attention: its new tokens' q [n, Hq, D], k and v [n, Hkv, D] (normed and rotated; k and v are views of
// the QKV output) -> [n, Hq, D], with whatever keys they see besides (the KV pool, a drafter's context).
using Attend = std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)>;

// (output before the residual add, residual) of one layer: LlamaDecoderLayer.forward / Gemma3DecoderLayer.forward,
// rotating with cos, sin [n, 1, D]; the first layer takes an undefined residual.
std::pair<torch::Tensor, torch::Tensor> layer_forward(const DecoderLayer& L, const torch::Tensor& x,
                                                      torch::Tensor residual, const torch::Tensor& cos,
                                                      const torch::Tensor& sin, const Attend& attend);

// per-head RMSNorm of x [N, H, D] (RMSNorm.forward on the native kernels)
torch::Tensor head_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// buf[loc[i]] = src[i] for the rows of src [n, H, D] (index_copy_, without its dispatch where the layouts allow)
void store_rows(const torch::Tensor& src, const torch::Tensor& loc, torch::Tensor& buf);

// What one forward's layers attend with: cos, sin [N, 1, D], then pool_attention's slots [B, S], q_rows [N] and
// kv_lens [N] (csrc/ops.h).
struct PoolBatch {
  torch::Tensor cos, sin, slots, q_rows, kv_lens;
};

class DecoderStack {
 public:
  explicit DecoderStack(std::vector<DecoderLayer> layers) : layers_(std::move(layers)) {}
  // x [N, d] embeddings, K/V pool buffers [slots, Hkv, D] per layer, loc [N] the new tokens' KV slots; `full`
  // (global layers) and `windowed` (sliding-window layers) are PoolBatch's five tensors, empty where the model
  // has no layers of that kind -> (output of layer num_layers - 1 before its residual add, its residual,
  // x + residual after each layer in `capture`, in capture's order)
  std::tuple<torch::Tensor, torch::Tensor, std::vector<torch::Tensor>> forward(
      torch::Tensor x, std::vector<torch::Tensor> k_buffers, std::vector<torch::Tensor> v_buffers,
      const torch::Tensor& loc, const std::vector<torch::Tensor>& full, const std::vector<torch::Tensor>& windowed,
      int64_t num_layers, const std::vector<int64_t>& capture) const;

 private:
  std::vector<DecoderLayer> layers_;
};
