// A Llama-family decoder layer (Llama, Qwen2, Qwen3) over the token pool, in C++: the same kernels and torch
// ops, in the same order and with the same rounding, as models/llama.py's modules call them, so its output is
// bit for bit theirs; what it saves is the Python between them (a few hundred op dispatches per decode step).
#include "decoder_layer.h"

#include "../csrc/ops.h"
#include "quant_linear.h"

torch::Tensor QuantLinear::operator()(const torch::Tensor& x) const {
  const torch::Tensor flat = x.contiguous();
  if (parts.size() == 1) return quant_linear(flat, parts[0], qtypes[0], K, bias, false);
  std::vector<torch::Tensor> outs;
  int64_t start = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const int64_t rows = parts[i].size(0);
    c10::optional<torch::Tensor> part_bias;
    if (bias.has_value()) part_bias = bias->narrow(0, start, rows);
    outs.push_back(quant_linear(flat, parts[i], qtypes[i], K, part_bias, false));
    start += rows;
  }
  return at::cat(outs, 1);
}

namespace {

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({at::neg(x.slice(-1, half)), x.slice(-1, 0, half)}, -1);
}

// per-head RMSNorm of x [N, H, D] (RMSNorm.forward on the native kernels)
torch::Tensor head_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  return rms_norm(x.reshape({-1, x.size(-1)}).contiguous(), weight, eps).view(x.sizes());
}

// (output before the residual add, residual) of one layer; LlamaDecoderLayer.forward
std::pair<torch::Tensor, torch::Tensor> layer_forward(const DecoderLayer& L, const torch::Tensor& x,
                                                      torch::Tensor residual, const PoolBatch& b,
                                                      torch::Tensor& k_buf, torch::Tensor& v_buf) {
  torch::Tensor h;
  if (!residual.defined()) {
    residual = x;
    h = rms_norm(x.contiguous(), L.input_norm, L.eps);
  } else {
    std::tie(h, residual) = add_rms_norm(x.contiguous(), residual.contiguous(), L.input_norm, L.eps);
  }
  const int64_t n = h.size(0), q_size = L.num_heads * L.head_dim, kv_size = L.num_kv_heads * L.head_dim;
  const std::vector<torch::Tensor> qkv = L.qkv(h).split_with_sizes({q_size, kv_size, kv_size}, -1);
  torch::Tensor q = qkv[0].view({n, L.num_heads, L.head_dim});
  torch::Tensor k = qkv[1].view({n, L.num_kv_heads, L.head_dim});
  if (L.q_norm.has_value()) {
    q = head_norm(q, *L.q_norm, L.eps);
    k = head_norm(k, *L.k_norm, L.eps);
  }
  if (L.native_rotary) {
    rotary(q, k, b.cos, b.sin);
  } else {
    q = q * b.cos + rotate_half(q) * b.sin;
    k = k * b.cos + rotate_half(k) * b.sin;
  }
  const torch::Tensor v = qkv[2].view({n, L.num_kv_heads, L.head_dim});
  k_buf.index_copy_(0, b.loc, k.to(k_buf.scalar_type()));
  v_buf.index_copy_(0, b.loc, v.to(v_buf.scalar_type()));
  const torch::Tensor attn =
      pool_attention(q.contiguous(), k_buf, v_buf, b.slots, b.q_rows, b.kv_lens, L.scale).view({n, q_size});
  std::tie(h, residual) = add_rms_norm(L.o(attn).contiguous(), residual, L.post_norm, L.eps);
  const std::vector<torch::Tensor> gate_up = L.gate_up(h).chunk(2, -1);
  return {L.down(at::silu(gate_up[0]) * gate_up[1]), residual};
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor, std::vector<torch::Tensor>> DecoderStack::forward(
    torch::Tensor x, const torch::Tensor& cos, const torch::Tensor& sin, std::vector<torch::Tensor> k_buffers,
    std::vector<torch::Tensor> v_buffers, const torch::Tensor& loc, const torch::Tensor& slots,
    const torch::Tensor& q_rows, const torch::Tensor& kv_lens, int64_t num_layers,
    const std::vector<int64_t>& capture) const {
  TORCH_CHECK(num_layers >= 1 && num_layers <= static_cast<int64_t>(layers_.size()), "num_layers out of range");
  TORCH_CHECK(static_cast<int64_t>(k_buffers.size()) >= num_layers && v_buffers.size() == k_buffers.size(),
              "the KV pool needs a K and a V buffer per layer");
  const PoolBatch batch{cos, sin, loc, slots, q_rows, kv_lens};
  torch::Tensor residual;
  std::vector<torch::Tensor> captured(capture.size());
  for (int64_t i = 0; i < num_layers; ++i) {
    std::tie(x, residual) = layer_forward(layers_[i], x, residual, batch, k_buffers[i], v_buffers[i]);
    for (size_t j = 0; j < capture.size(); ++j)
      if (capture[j] == i) captured[j] = x + residual;
  }
  return {x, residual, captured};
}
