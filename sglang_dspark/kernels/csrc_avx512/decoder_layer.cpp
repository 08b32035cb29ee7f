// A decoder layer (Llama, Qwen2, Qwen3, Gemma 3) over the token pool, in C++: the same kernels and torch ops, in
// the same order and with the same rounding, as models/llama.py's and models/gemma3.py's modules call them, so
// its output is bit for bit theirs; what it saves is the Python between them (hundreds of op dispatches per
// decode step).
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

// Gemma's RMSNorm over the last dim (RMSNorm with unit_offset): normalize and scale by 1 + weight in fp32
torch::Tensor gemma_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  const torch::Tensor normed = at::rms_norm(x.to(at::kFloat), {x.size(-1)}, c10::nullopt, eps);
  return (normed * (weight.to(at::kFloat) + 1.0)).to(x.scalar_type());
}

torch::Tensor norm(const DecoderLayer& L, const torch::Tensor& x, const torch::Tensor& weight) {
  return L.gemma ? gemma_norm(x, weight, L.eps) : rms_norm(x.contiguous(), weight, L.eps);
}

// (norm(x + residual), x + residual)
std::tuple<torch::Tensor, torch::Tensor> add_norm(const DecoderLayer& L, const torch::Tensor& x,
                                                  const torch::Tensor& residual, const torch::Tensor& weight) {
  if (!L.gemma) return add_rms_norm(x.contiguous(), residual.contiguous(), weight, L.eps);
  const torch::Tensor sum = x + residual;
  return {gemma_norm(sum, weight, L.eps), sum};
}

}  // namespace

torch::Tensor head_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  return rms_norm(x.reshape({-1, x.size(-1)}).contiguous(), weight, eps).view(x.sizes());
}

// buf[loc[i]] = src[i] for the rows of src [n, H, D]: index_copy_ without its dispatch, for rows of the pool's dtype
// with contiguous heads (a view of the QKV output)
void store_rows(const torch::Tensor& src, const torch::Tensor& loc, torch::Tensor& buf) {
  const int64_t n = src.size(0), row = src.size(1) * src.size(2);
  if (src.scalar_type() != buf.scalar_type() || src.stride(2) != 1 || src.stride(1) != src.size(2) ||
      !buf.is_contiguous() || buf[0].numel() != row || !loc.is_contiguous() || loc.scalar_type() != at::kLong) {
    buf.index_copy_(0, loc, src.to(buf.scalar_type()));
    return;
  }
  TORCH_CHECK(loc.numel() == n, "one KV slot per new token");
  const int64_t bytes = row * src.element_size(), src_step = src.stride(0) * src.element_size(), slots = buf.size(0);
  const int64_t* slot = loc.data_ptr<int64_t>();
  const char* from = static_cast<const char*>(src.data_ptr());
  char* to = static_cast<char*>(buf.data_ptr());
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(slot[i] >= 0 && slot[i] < slots, "KV slot ", slot[i], " out of range");
    std::memcpy(to + slot[i] * bytes, from + i * src_step, bytes);
  }
}

std::pair<torch::Tensor, torch::Tensor> layer_forward(const DecoderLayer& L, const torch::Tensor& x,
                                                      torch::Tensor residual, const torch::Tensor& cos,
                                                      const torch::Tensor& sin, const Attend& attend) {
  torch::Tensor h;
  if (!residual.defined()) {
    residual = x;
    h = norm(L, x, L.input_norm);
  } else {
    std::tie(h, residual) = add_norm(L, x, residual, L.input_norm);
  }
  const int64_t n = h.size(0), q_size = L.num_heads * L.head_dim, kv_size = L.num_kv_heads * L.head_dim;
  const std::vector<torch::Tensor> qkv = L.qkv(h).split_with_sizes({q_size, kv_size, kv_size}, -1);
  torch::Tensor q = qkv[0].view({n, L.num_heads, L.head_dim});
  torch::Tensor k = qkv[1].view({n, L.num_kv_heads, L.head_dim});
  if (L.q_norm.has_value()) {
    q = L.gemma ? gemma_norm(q, *L.q_norm, L.eps) : head_norm(q, *L.q_norm, L.eps);
    k = L.gemma ? gemma_norm(k, *L.k_norm, L.eps) : head_norm(k, *L.k_norm, L.eps);
  }
  if (L.native_rotary) {
    rotary(q, k, cos, sin);
  } else {
    q = q * cos + rotate_half(q) * sin;
    k = k * cos + rotate_half(k) * sin;
  }
  const torch::Tensor v = qkv[2].view({n, L.num_kv_heads, L.head_dim});
  const torch::Tensor attn = attend(q, k, v).view({n, q_size});
  torch::Tensor o = L.o(attn);
  if (L.gemma) {
    std::tie(h, residual) = add_norm(L, gemma_norm(o, L.post_norm, L.eps), residual, *L.pre_ff_norm);
  } else {
    std::tie(h, residual) = add_rms_norm(o.contiguous(), residual, L.post_norm, L.eps);
  }
  if (!L.gemma) return {L.down(silu_mul(L.gate_up(h))), residual};
  const std::vector<torch::Tensor> gate_up = L.gate_up(h).chunk(2, -1);
  const torch::Tensor out = L.down(at::gelu(gate_up[0], "tanh") * gate_up[1]);
  return {gemma_norm(out, *L.post_ff_norm, L.eps), residual};
}

namespace {

// the five tensors of a PoolBatch, or none (the model has no layers of that kind)
c10::optional<PoolBatch> pool_batch(const std::vector<torch::Tensor>& t) {
  if (t.empty()) return c10::nullopt;
  TORCH_CHECK(t.size() == 5, "a pool batch is cos, sin, slots, q_rows, kv_lens");
  return PoolBatch{t[0], t[1], t[2], t[3], t[4]};
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor, std::vector<torch::Tensor>> DecoderStack::forward(
    torch::Tensor x, std::vector<torch::Tensor> k_buffers, std::vector<torch::Tensor> v_buffers,
    const torch::Tensor& loc, const std::vector<torch::Tensor>& full, const std::vector<torch::Tensor>& windowed,
    int64_t num_layers, const std::vector<int64_t>& capture) const {
  TORCH_CHECK(num_layers >= 1 && num_layers <= static_cast<int64_t>(layers_.size()), "num_layers out of range");
  TORCH_CHECK(static_cast<int64_t>(k_buffers.size()) >= num_layers && v_buffers.size() == k_buffers.size(),
              "the KV pool needs a K and a V buffer per layer");
  const c10::optional<PoolBatch> full_batch = pool_batch(full), windowed_batch = pool_batch(windowed);
  torch::Tensor residual;
  std::vector<torch::Tensor> captured(capture.size());
  for (int64_t i = 0; i < num_layers; ++i) {
    const DecoderLayer& L = layers_[i];
    const c10::optional<PoolBatch>& batch = L.sliding ? windowed_batch : full_batch;
    TORCH_CHECK(batch.has_value(), "layer ", i, L.sliding ? " attends in a window: pass the windowed batch"
                                                          : " attends to all keys: pass the full batch");
    const PoolBatch& b = *batch;
    torch::Tensor &k_buf = k_buffers[i], &v_buf = v_buffers[i];
    const Attend pool = [&](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
      store_rows(k, loc, k_buf);
      store_rows(v, loc, v_buf);
      return pool_attention(q, k_buf, v_buf, b.slots, b.q_rows, b.kv_lens, L.scale);
    };
    std::tie(x, residual) = layer_forward(L, x, residual, b.cos, b.sin, pool);
    for (size_t j = 0; j < capture.size(); ++j)
      if (capture[j] == i) captured[j] = x + residual;
  }
  return {x, residual, captured};
}
