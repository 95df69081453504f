// The one place where bertfast's ops are declared. Each backend registers its kernels in
// its own file with TORCH_LIBRARY_IMPL(bertfast, <CPU|CUDA>, m); Python adds fake (meta)
// implementations and autograd with torch.library (bertfast/ops/*.py).
#include <Python.h>
#include <torch/library.h>

#include "build_info.h"
#include "common/cpu_capability.h"
#include "common/output_cache.h"

// `import bertfast._C` only needs to load this library so that the registrations below run.
// No pybind11 surface: the module uses the limited Python API (one wheel for Python 3.9+).
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

static std::vector<std::string> build_info() {
  return {BERTFAST_BUILT_TORCH_VERSION, BERTFAST_BUILT_CUDA_VERSION, BERTFAST_BUILT_ARCH_LIST};
}

// Which copy of the CPU kernels runs on this CPU: "AVX512", "AVX2" (AVX2+FMA+F16C) or "DEFAULT".
static std::string cpu_capability() {
  switch (bertfast::cpu_capability_in_use()) {
    case bertfast::CpuCapability::kAVX512: return "AVX512";
    case bertfast::CpuCapability::kAVX2: return "AVX2";
    default: return "DEFAULT";
  }
}

TORCH_LIBRARY(bertfast, m) {
  // How this library was built: (torch version, CUDA version or "", arch list or "").
  m.def("build_info() -> str[]", &build_info);
  // The CPU kernel variant dispatched to on this machine (bertfast.info reports it).
  m.def("cpu_capability() -> str", &cpu_capability);
  // The cache of large CPU output blocks (common/output_cache.h): its
  // [cached bytes, limit bytes, hits, misses], and a call that frees the cached blocks.
  m.def("cpu_cache_stats() -> int[]", &bertfast::cpu_cache_stats);
  m.def("empty_cpu_cache() -> ()", &bertfast::empty_cpu_cache);

  // out = layer_norm(residual + dropout(x + x_bias)) and the row statistics the backward reads.
  // `seed` (int64[1]) keys the Philox dropout mask, which the backward regenerates.
  m.def(
      "add_layer_norm_fwd(Tensor x, Tensor residual, Tensor weight, Tensor bias, Tensor? x_bias, "
      "Tensor? seed, float eps, float dropout_p) -> (Tensor out, Tensor mean, Tensor rstd)");
  // Gradients of add_layer_norm; the pre-norm sum is recomputed from x and residual (cheaper
  // than storing it). grad_x is empty unless dropout_p > 0 (it equals grad_residual then);
  // grad_x_bias is empty unless want_grad_x_bias.
  m.def(
      "add_layer_norm_bwd(Tensor grad_out, Tensor x, Tensor residual, Tensor weight, Tensor? x_bias, "
      "Tensor mean, Tensor rstd, Tensor? seed, float dropout_p, bool want_grad_x_bias) -> "
      "(Tensor grad_residual, Tensor grad_x, Tensor grad_weight, Tensor grad_bias, Tensor grad_x_bias)");

  // softmax + cross-entropy per row of logits (rows, classes) with int64 labels (rows,):
  // loss (rows,) float32 (0 where the label is ignore_index) and the row log-sum-exp.
  // inplace_backward tells autograd to write the gradient over the logits (then labels must not
  // share memory with them, checked here).
  m.def("softmax_cross_entropy_fwd(Tensor logits, Tensor labels, int ignore_index, float label_smoothing, "
        "bool inplace_backward) -> (Tensor loss, Tensor lse)");
  // Gradient of the logits, (softmax - smoothed one-hot) * grad_loss per row, from the saved lse.
  m.def("softmax_cross_entropy_bwd(Tensor grad_loss, Tensor logits, Tensor labels, Tensor lse, int ignore_index, "
        "float label_smoothing) -> Tensor");
  // The same gradient written over the (contiguous) logits: no second (rows, classes) buffer.
  m.def("softmax_cross_entropy_bwd_(Tensor grad_loss, Tensor(a!) logits, Tensor labels, Tensor lse, "
        "int ignore_index, float label_smoothing) -> ()");
  // Forward and backward at once: loss and lse, and the gradient of sum(loss) written over the
  // logits (the chunks of linear_cross_entropy).
  m.def("softmax_cross_entropy_fwd_bwd_(Tensor(a!) logits, Tensor labels, int ignore_index, "
        "float label_smoothing) -> (Tensor loss, Tensor lse)");

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
