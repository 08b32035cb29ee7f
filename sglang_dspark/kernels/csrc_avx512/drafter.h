// The DSpark drafter with block-quantized weights as three native calls per draft (kernels/fused_drafter.py says
// when and why): the context keys/values of new positions, the parallel block, and the greedy Markov walk.
#pragma once
#include <torch/extension.h>

#include <tuple>
#include <vector>

#include "decoder_layer.h"

// The heads after the backbone: the draft vocabulary's LM-head rows, the vanilla Markov head and the confidence
// head (each optional where the drafter has none).
struct DraftHeads {
  QuantLinear lm_head;                        // [K, d] rows of the draft vocabulary
  torch::Tensor vocab;                        // [K] int64 token ids of those rows
  c10::optional<torch::Tensor> markov_w1;     // [V, r] embedding of the previous token
  c10::optional<torch::Tensor> markov_w2;     // [K, r] the draft vocabulary's rows of W2
  c10::optional<torch::Tensor> conf_weight;   // [d] or [d + r] (with the Markov embedding)
  c10::optional<torch::Tensor> conf_bias;     // [1]
};

class DraftStack {
 public:
  // fc [d, m d] and hidden_norm [d] map target features to the context; context_kv[i] is layer i's k and v
  // projection rows; rope_cos / rope_sin [positions, D] in the layers' dtype
  DraftStack(QuantLinear fc, torch::Tensor hidden_norm, std::vector<DecoderLayer> layers,
             std::vector<QuantLinear> context_kv, torch::Tensor norm, torch::Tensor rope_cos, torch::Tensor rope_sin,
             DraftHeads heads);

  // feats [T, m d] target features, positions [T] -> per layer its keys and values [T, Hkv, D]: [k0, v0, k1, ...]
  std::vector<torch::Tensor> context(const torch::Tensor& feats, const torch::Tensor& positions) const;

  // embeds [R G, d] of R blocks of G tokens, positions [R G]; keys / values: request r's context buffers of layer i
  // at r * layers + i ([capacity, Hkv, D], their first lengths[r] rows valid, G rows more to write the block's own
  // keys and values) -> (hidden [R G, d] after the final norm, base logits [R G, K] fp32 over the draft vocabulary)
  std::tuple<torch::Tensor, torch::Tensor> block(const torch::Tensor& embeds, const torch::Tensor& positions,
                                                 std::vector<torch::Tensor> keys, std::vector<torch::Tensor> values,
                                                 const std::vector<int64_t>& lengths) const;

  // hidden [R, G, d], base [R, G, K], anchors [R] -> (greedy tokens [R, G], confidence logits [R, G] fp32, empty
  // without a confidence head): step k adds W2 W1[token k - 1] to base[:, k] and takes the argmax
  std::tuple<torch::Tensor, torch::Tensor> greedy_walk(const torch::Tensor& hidden, const torch::Tensor& base,
                                                       const torch::Tensor& anchors) const;

 private:
  QuantLinear fc_;
  torch::Tensor hidden_norm_;
  std::vector<DecoderLayer> layers_;
  std::vector<QuantLinear> context_kv_;
  torch::Tensor norm_, cos_, sin_;
  DraftHeads heads_;
  torch::Tensor w2_bound_;  // [K] fp32, a bound on |W2 row| (markov_argmax)
};
