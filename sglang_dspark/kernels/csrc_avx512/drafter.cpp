// The DSpark drafter (speculative/dspark/drafter.py) in C++: its backbone is decoder layers over [context ; block]
// keys (the fused decoder's layer, attending through each request's context buffers), its heads a greedy walk.
// Same kernels and rounding as the modules where they share kernels (the quantized matmuls, norms, rotary, pool
// attention), so its drafts are the modules' up to the attention's summation order; every draft is verified.
#include "drafter.h"

#include <cmath>
#include <limits>

#include "../csrc/ops.h"
#include "quant_linear.h"
#include "widen.h"

namespace {

// a . b over n values, fp32 accumulation
template <typename T>
float dot(const float* a, const T* b, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), load16f(b + i), acc);
  float sum = _mm512_reduce_add_ps(acc);
  for (; i < n; ++i) sum += a[i] * static_cast<float>(b[i]);
  return sum;
}

template <typename T>
std::vector<float> widen(const T* p, int64_t n) {
  std::vector<float> out(n);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(p[i]);
  return out;
}

// the first index of the largest of v[0 .. K) (no NaN): the maximum 16 lanes at a time, then where it first is
int64_t argmax(const float* v, int64_t K) {
  __m512 top = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + 16 <= K; j += 16) top = _mm512_max_ps(top, _mm512_loadu_ps(v + j));
  float best = _mm512_reduce_max_ps(top);
  for (; j < K; ++j) best = std::max(best, v[j]);
  const __m512 target = _mm512_set1_ps(best);
  for (j = 0; j + 16 <= K; j += 16)
    if (const __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(v + j), target, _CMP_EQ_OQ)) return j + __builtin_ctz(m);
  while (v[j] != best) ++j;
  return j;
}

// argmax over j of base[j] + round_T(e . w2[j]) (the first index on ties, as torch.argmax), w2 [K, rank]. Exact, with
// pruning: row_bound[j] >= |w2[j]| (1 + 2^-6) bounds |round_T(e . w2[j])| / |e| (Cauchy-Schwarz, T's rounding), and
// float addition is monotone, so a row whose base[j] + |e| row_bound[j] is below the best sum so far cannot win;
// starting from the largest base logit, most of the K rows are never multiplied.
template <typename T>
int64_t markov_argmax(const float* base, const float* e, const T* w2, const float* row_bound, int64_t K,
                      int64_t rank) {
  float e_norm = 0.0f;
  for (int64_t i = 0; i < rank; ++i) e_norm += e[i] * e[i];
  e_norm = std::sqrt(e_norm) * (1.0f + 1e-5f);
  const auto sum = [&](int64_t j) { return base[j] + static_cast<float>(static_cast<T>(dot(e, w2 + j * rank, rank))); };
  int64_t w = argmax(base, K);
  float best = sum(w);
  const __m512 scale = _mm512_set1_ps(e_norm);
  for (int64_t j0 = 0; j0 < K; j0 += 16) {  // 16 bounds per compare; the rows that may still win, one by one
    const int64_t n = std::min<int64_t>(16, K - j0);
    const __mmask16 tail = static_cast<__mmask16>((1u << n) - 1);
    const __m512 bound = _mm512_fmadd_ps(scale, _mm512_maskz_loadu_ps(tail, row_bound + j0),
                                         _mm512_maskz_loadu_ps(tail, base + j0));
    for (__mmask16 m = _mm512_mask_cmp_ps_mask(tail, bound, _mm512_set1_ps(best), _CMP_GE_OQ); m; m &= m - 1) {
      const int64_t j = j0 + __builtin_ctz(m);
      if (j == w) continue;
      const float v = sum(j);
      if (v > best || (v == best && j < w)) best = v, w = j;
    }
  }
  return w;
}

// request r's G block rows attend over its buffers' first `length` rows and the block's own keys (written past them)
torch::Tensor attend_block(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, torch::Tensor& k_buf,
                           torch::Tensor& v_buf, int64_t length, double scale) {
  const int64_t G = q.size(0);
  TORCH_CHECK(k_buf.size(0) >= length + G, "a drafter context buffer needs room for the block's ", G, " rows");
  const torch::Tensor loc = torch::arange(length, length + G, torch::kLong);
  store_rows(k, loc, k_buf);
  store_rows(v, loc, v_buf);
  const torch::Tensor slots = torch::arange(length + G, torch::kLong).view({1, -1});
  return pool_attention(q, k_buf, v_buf, slots, torch::zeros({G}, torch::kLong),
                        torch::full({G}, length + G, torch::kLong), scale);
}

}  // namespace

DraftStack::DraftStack(QuantLinear fc, torch::Tensor hidden_norm, std::vector<DecoderLayer> layers,
                       std::vector<QuantLinear> context_kv, torch::Tensor norm, torch::Tensor rope_cos,
                       torch::Tensor rope_sin, DraftHeads heads)
    : fc_(std::move(fc)),
      hidden_norm_(std::move(hidden_norm)),
      layers_(std::move(layers)),
      context_kv_(std::move(context_kv)),
      norm_(std::move(norm)),
      cos_(std::move(rope_cos)),
      sin_(std::move(rope_sin)),
      heads_(std::move(heads)) {
  if (heads_.markov_w2.has_value())  // markov_argmax's bound; 2^-6 covers the rounding of a product to bf16
    w2_bound_ = (at::linalg_vector_norm(heads_.markov_w2->to(at::kFloat), 2, {1}) * (1.0 + 1.0 / 64)).contiguous();
}

std::vector<torch::Tensor> DraftStack::context(const torch::Tensor& feats, const torch::Tensor& positions) const {
  const torch::Tensor ctx = rms_norm(fc_(feats.to(hidden_norm_.scalar_type())), hidden_norm_, layers_[0].eps);
  const int64_t T = ctx.size(0);
  const torch::Tensor cos = cos_.index_select(0, positions).unsqueeze(1);
  const torch::Tensor sin = sin_.index_select(0, positions).unsqueeze(1);
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const DecoderLayer& L = layers_[i];
    const std::vector<torch::Tensor> kv = context_kv_[i](ctx).view({T, 2, L.num_kv_heads, L.head_dim}).unbind(1);
    torch::Tensor k = L.k_norm.has_value() ? head_norm(kv[0], *L.k_norm, L.eps) : kv[0].contiguous();
    rotary(torch::empty({T, 0, L.head_dim}, k.options()), k, cos, sin);  // keys only: a query of no heads
    out.push_back(k);
    out.push_back(kv[1]);
  }
  return out;
}

std::tuple<torch::Tensor, torch::Tensor> DraftStack::block(const torch::Tensor& embeds, const torch::Tensor& positions,
                                                           std::vector<torch::Tensor> keys,
                                                           std::vector<torch::Tensor> values,
                                                           const std::vector<int64_t>& lengths) const {
  const int64_t R = lengths.size(), num_layers = layers_.size();
  TORCH_CHECK(R > 0 && embeds.size(0) % R == 0, "embeds [R G, d] for R requests");
  TORCH_CHECK(static_cast<int64_t>(keys.size()) == R * num_layers && values.size() == keys.size(),
              "a K and a V context buffer per request and layer");
  const int64_t G = embeds.size(0) / R;
  const torch::Tensor cos = cos_.index_select(0, positions).unsqueeze(1);
  const torch::Tensor sin = sin_.index_select(0, positions).unsqueeze(1);
  torch::Tensor x = embeds.contiguous(), residual;
  for (int64_t i = 0; i < num_layers; ++i) {
    const DecoderLayer& L = layers_[i];
    const Attend per_request = [&](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
      std::vector<torch::Tensor> outs;
      for (int64_t r = 0; r < R; ++r)
        outs.push_back(attend_block(q.narrow(0, r * G, G), k.narrow(0, r * G, G), v.narrow(0, r * G, G),
                                    keys[r * num_layers + i], values[r * num_layers + i], lengths[r], L.scale));
      return R == 1 ? outs[0] : at::cat(outs);
    };
    std::tie(x, residual) = layer_forward(L, x, residual, cos, sin, per_request);
  }
  const torch::Tensor hidden = std::get<0>(add_rms_norm(x.contiguous(), residual, norm_, layers_[0].eps));
  const QuantLinear& head = heads_.lm_head;
  TORCH_CHECK(head.parts.size() == 1, "the draft LM head is one quantized weight");
  return {hidden, quant_linear(hidden, head.parts[0], head.qtypes[0], head.K, c10::nullopt, true)};
}

std::tuple<torch::Tensor, torch::Tensor> DraftStack::greedy_walk(const torch::Tensor& hidden, const torch::Tensor& base,
                                                                 const torch::Tensor& anchors) const {
  const int64_t R = base.size(0), G = base.size(1), K = base.size(2), d = hidden.size(2);
  TORCH_CHECK(base.scalar_type() == at::kFloat && base.is_contiguous() && hidden.is_contiguous(),
              "base [R, G, K] fp32 and hidden [R, G, d], contiguous");
  TORCH_CHECK(heads_.vocab.size(0) == K, "base logits over the draft vocabulary");
  const torch::Tensor prev_ids = anchors.to(torch::kLong).contiguous();
  torch::Tensor tokens = torch::empty({R, G}, torch::kLong);
  torch::Tensor conf = heads_.conf_weight.has_value() ? torch::empty({R, G}, torch::kFloat) : torch::Tensor();
  const int64_t *vocab = heads_.vocab.data_ptr<int64_t>(), *anchor = prev_ids.data_ptr<int64_t>();
  int64_t* drafted = tokens.data_ptr<int64_t>();
  float* confidence = conf.defined() ? conf.data_ptr<float>() : nullptr;
  TORCH_CHECK(hidden.scalar_type() == at::kBFloat16 || hidden.scalar_type() == at::kFloat,
              "the drafter runs in bfloat16 or float32");
  const auto walk = [&](auto tag) {
    using scalar_t = decltype(tag);
    const int64_t rank = heads_.markov_w1.has_value() ? heads_.markov_w1->size(1) : 0;
    const scalar_t* w1 = rank ? heads_.markov_w1->data_ptr<scalar_t>() : nullptr;
    const scalar_t* w2 = rank ? heads_.markov_w2->data_ptr<scalar_t>() : nullptr;
    const float* row_bound = rank ? w2_bound_.data_ptr<float>() : nullptr;
    std::vector<float> cw, cb;
    if (conf.defined()) {
      cw = widen(heads_.conf_weight->data_ptr<scalar_t>(), heads_.conf_weight->numel());
      TORCH_CHECK(cw.size() == static_cast<size_t>(d) || cw.size() == static_cast<size_t>(d + rank),
                  "confidence weight [d] or [d + rank]");
      cb = widen(heads_.conf_bias->data_ptr<scalar_t>(), 1);
    }
    for (int64_t r = 0; r < R; ++r) {
      int64_t prev = anchor[r];
      for (int64_t k = 0; k < G; ++k) {
        const float* logits = base.data_ptr<float>() + (r * G + k) * K;
        const std::vector<float> e = rank ? widen(w1 + prev * rank, rank) : std::vector<float>();
        const int64_t local = rank ? markov_argmax(logits, e.data(), w2, row_bound, K, rank) : argmax(logits, K);
        if (confidence) {  // w . [h_k ; W1[token k - 1]] + b, rounded as the bf16 / fp32 linear layer rounds
          const std::vector<float> h = widen(hidden.data_ptr<scalar_t>() + (r * G + k) * d, d);
          float acc = cb[0];
          for (int64_t i = 0; i < d; ++i) acc += h[i] * cw[i];
          for (size_t i = d; i < cw.size(); ++i) acc += e[i - d] * cw[i];
          confidence[r * G + k] = static_cast<float>(static_cast<scalar_t>(acc));
        }
        prev = drafted[r * G + k] = vocab[local];
      }
    }
  };
  if (hidden.scalar_type() == at::kBFloat16) walk(at::BFloat16{});
  else walk(float{});
  return {tokens, conf};
}
