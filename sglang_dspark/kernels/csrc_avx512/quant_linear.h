// The kernels of the quantized-model extension (kernels/quant_linear.py, kernels/fused_decoder.py).
#pragma once
#include <torch/extension.h>

// y = x W^T (+ b): x [M, K] bf16 or fp32, W [N, bytes] uint8 in GGML block format `qtype` -> [M, N] in x's
// dtype (fp32 with float_out); x is rounded to int8 per 32 values (quant_linear.cpp).
torch::Tensor quant_linear(const torch::Tensor& x, const torch::Tensor& weight, int64_t qtype, int64_t K,
                           const c10::optional<torch::Tensor>& bias, bool float_out);

// rows ids [n] of a weight in a 16-row tiled format (Q4_0x16 .. Q5_1x16, Q8_0x16), decoded to fp32 [n, K]
torch::Tensor tiled_rows(const torch::Tensor& weight, const torch::Tensor& ids, int64_t qtype, int64_t K);
