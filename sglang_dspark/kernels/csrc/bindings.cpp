#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bf16_linear", &bf16_linear, "y = x W^T (+ b) with bf16 W, fp32 accumulation");
  m.def("pool_attention", &pool_attention, "causal attention of query tokens over the token-level KV pool",
        py::arg("q"), py::arg("k_buf"), py::arg("v_buf"), py::arg("slots"), py::arg("q_rows"), py::arg("kv_lens"),
        py::arg("scale"), py::arg("bf16_dot") = true);
  m.def("rotary", &rotary, "rotary embedding of q and k in place (HF semantics); returns (q, k)");
  m.def("silu_mul", &silu_mul, "SiLU(gate) * up of a merged [N, 2 I] gate/up output");
  m.def("rms_norm", &rms_norm, "RMSNorm (HF semantics)");
  m.def("add_rms_norm", &add_rms_norm, "RMSNorm of x + residual; returns (normed, x + residual)");
}
