#include "decoder_layer.h"
#include "drafter.h"
#include "quant_linear.h"

// module-local classes: another build of these sources (benchmarks/bench_fused_ab.py) can load beside this one
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("quant_linear", &quant_linear,
        "y = x W^T (+ b) with W in a GGML block format (Q4_0, Q4_1, Q8_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) or a "
        "16-row tiled one (Q4_0x16 .. Q5_1x16, Q8_0x16) and x quantized to int8 per 32 values");
  m.def("tiled_rows", &tiled_rows, "rows of a weight in a 16-row tiled format, decoded to fp32 (a lookup)");
  py::class_<QuantLinear>(m, "QuantLinear", py::module_local())
      .def(py::init<std::vector<torch::Tensor>, std::vector<int64_t>, int64_t, c10::optional<torch::Tensor>>(),
           py::arg("parts"), py::arg("qtypes"), py::arg("K"), py::arg("bias"))
      .def("__call__", &QuantLinear::operator(), py::call_guard<py::gil_scoped_release>());
  py::class_<DecoderLayer>(m, "DecoderLayer", py::module_local())
      .def(py::init<torch::Tensor, torch::Tensor, c10::optional<torch::Tensor>, c10::optional<torch::Tensor>,
                    QuantLinear, QuantLinear, QuantLinear, QuantLinear, int64_t, int64_t, int64_t, double, double,
                    bool, bool, c10::optional<torch::Tensor>, c10::optional<torch::Tensor>, bool>(),
           py::arg("input_norm"), py::arg("post_norm"), py::arg("q_norm"), py::arg("k_norm"), py::arg("qkv"),
           py::arg("o"), py::arg("gate_up"), py::arg("down"), py::arg("num_heads"), py::arg("num_kv_heads"),
           py::arg("head_dim"), py::arg("eps"), py::arg("scale"), py::arg("native_rotary"), py::arg("gemma"),
           py::arg("pre_ff_norm"), py::arg("post_ff_norm"), py::arg("sliding"));
  py::class_<DecoderStack>(m, "DecoderStack", py::module_local())
      .def(py::init<std::vector<DecoderLayer>>())
      .def("forward", &DecoderStack::forward, py::call_guard<py::gil_scoped_release>());
  py::class_<DraftHeads>(m, "DraftHeads", py::module_local())
      .def(py::init<QuantLinear, torch::Tensor, c10::optional<torch::Tensor>, c10::optional<torch::Tensor>,
                    c10::optional<torch::Tensor>, c10::optional<torch::Tensor>>(),
           py::arg("lm_head"), py::arg("vocab"), py::arg("markov_w1"), py::arg("markov_w2"), py::arg("conf_weight"),
           py::arg("conf_bias"));
  py::class_<DraftStack>(m, "DraftStack", py::module_local())
      .def(py::init<QuantLinear, torch::Tensor, std::vector<DecoderLayer>, std::vector<QuantLinear>, torch::Tensor,
                    torch::Tensor, torch::Tensor, DraftHeads>(),
           py::arg("fc"), py::arg("hidden_norm"), py::arg("layers"), py::arg("context_kv"), py::arg("norm"),
           py::arg("rope_cos"), py::arg("rope_sin"), py::arg("heads"))
      .def("context", &DraftStack::context, py::call_guard<py::gil_scoped_release>())
      .def("block", &DraftStack::block, py::call_guard<py::gil_scoped_release>())
      .def("greedy_walk", &DraftStack::greedy_walk, py::call_guard<py::gil_scoped_release>());
}
