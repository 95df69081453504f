// The one place where bertfast's ops are declared. Each backend registers its kernels in
// its own file with TORCH_LIBRARY_IMPL(bertfast, <CPU|CUDA>, m); Python adds fake (meta)
// implementations and autograd with torch.library (bertfast/ops/*.py).
#include <Python.h>
#include <torch/library.h>

#include "build_info.h"

// `import bertfast._C` only needs to load this library so that the registrations below run.
// No pybind11 surface: the module uses the limited Python API (one wheel for Python 3.9+).
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

static std::vector<std::string> build_info() {
  return {BERTFAST_BUILT_TORCH_VERSION, BERTFAST_BUILT_CUDA_VERSION, BERTFAST_BUILT_ARCH_LIST};
}

TORCH_LIBRARY(bertfast, m) {
  // How this library was built: (torch version, CUDA version or "", arch list or "").
  m.def("build_info() -> str[]", &build_info);

  // out = layer_norm(residual + dropout(x + x_bias)); also returns the pre-norm sum and the
  // row statistics that the backward reads. `seed` (int64[1]) keys the Philox dropout mask.
  m.def(
      "add_layer_norm_fwd(Tensor x, Tensor residual, Tensor weight, Tensor bias, Tensor? x_bias, "
      "Tensor? seed, float eps, float dropout_p) -> (Tensor out, Tensor pre_norm, Tensor mean, Tensor rstd)");
  // Gradients of add_layer_norm. grad_x is empty unless dropout_p > 0 (it equals
  // grad_pre_norm then); grad_x_bias is empty unless want_grad_x_bias.
  m.def(
      "add_layer_norm_bwd(Tensor grad_out, Tensor pre_norm, Tensor mean, Tensor rstd, Tensor weight, "
      "Tensor? seed, float dropout_p, bool want_grad_x_bias) -> "
      "(Tensor grad_pre_norm, Tensor grad_x, Tensor grad_weight, Tensor grad_bias, Tensor grad_x_bias)");

  // Fused attention, padded (q/k/v (batch, seq, heads, dim), optional key mask (batch, seq_k) and
  // bias expanded to (batch, heads, seq_q, seq_k)) or varlen (q/k/v (total, heads, dim) with
  // cu_seqlens). Returns the output and the row log-sum-exp (heads, total_q) float32;
  // `deterministic` is only recorded for the backward (it is an input autograd can see).
  m.def(
      "attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, Tensor? attn_bias, "
      "Tensor? cu_seqlens, int max_seqlen, Tensor? seed, float dropout_p, float scale, bool deterministic) -> "
      "(Tensor out, Tensor lse)");
  // Gradients of attention_fwd; grad_bias is (batch, heads, seq_q, seq_k) float32 when
  // want_grad_bias, else empty. deterministic: no order-varying atomics (CUDA).
  m.def(
      "attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "Tensor? key_padding_mask, Tensor? attn_bias, Tensor? cu_seqlens, int max_seqlen, Tensor? seed, "
      "float dropout_p, float scale, bool want_grad_bias, bool deterministic) -> "
      "(Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_bias)");
}
