// A Llama-family decoder stack with block-quantized linear layers, run as one native call per forward
// (kernels/fused_decoder.py says when and why).
#pragma once
#include <torch/extension.h>

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
  torch::Tensor input_norm, post_norm;  // [d] RMSNorm weights
  c10::optional<torch::Tensor> q_norm, k_norm;  // [head_dim] per-head RMSNorms (Qwen3)
  QuantLinear qkv, o, gate_up, down;
  int64_t num_heads, num_kv_heads, head_dim;
  double eps, scale;
  bool native_rotary;  // the native rotary kernel (bf16); false: torch's elementwise ops (fp32)
};

// The keys and values of one forward over the token pool: pool_attention's contract (csrc/ops.h).
struct PoolBatch {
  torch::Tensor cos, sin;  // [N, 1, D]
  torch::Tensor loc;       // [N] KV slot of each new token
  torch::Tensor slots, q_rows, kv_lens;
};

class DecoderStack {
 public:
  explicit DecoderStack(std::vector<DecoderLayer> layers) : layers_(std::move(layers)) {}
  // x [N, d] embeddings, K/V pool buffers [slots, Hkv, D] per layer -> (output of layer num_layers - 1 before
  // its residual add, its residual, x + residual after each layer in `capture`, in capture's order)
  std::tuple<torch::Tensor, torch::Tensor, std::vector<torch::Tensor>> forward(
      torch::Tensor x, const torch::Tensor& cos, const torch::Tensor& sin, std::vector<torch::Tensor> k_buffers,
      std::vector<torch::Tensor> v_buffers, const torch::Tensor& loc, const torch::Tensor& slots,
      const torch::Tensor& q_rows, const torch::Tensor& kv_lens, int64_t num_layers,
      const std::vector<int64_t>& capture) const;

 private:
  std::vector<DecoderLayer> layers_;
};
