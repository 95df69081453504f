// C ABI over bertfast's CUDA launchers for the emulation (loaded with ctypes by
// tests/test_cuda_kernels_emulated.py), and the few CUDA runtime calls the kernel files make.
// "Device memory" is host memory: the tests pass CPU tensors' data pointers. Every entry point
// returns a cudaError_t; emu_error_message() says why a launch failed.
#include <string>

#include "attention/attention.h"
#include "cross_entropy/cross_entropy.h"
#include "add_layer_norm/add_layer_norm.h"

using bertfast::DType;
namespace emu = bertfast_emu;

// ---- CUDA runtime stand-ins ----
extern "C" {
cudaError_t cudaGetLastError(void) {
  const cudaError_t e = emu::g_last_error;
  emu::g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return emu::g_last_error; }
const char* cudaGetErrorString(cudaError_t e) {
  static std::string s;
  s = "emulated CUDA error " + std::to_string(static_cast<int>(e));
  return s.c_str();
}
cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  if (value < 0 || static_cast<size_t>(value) > emu::kOptInSmemLimit) return cudaErrorInvalidValue;
  for (emu::SmemOptIn& o : emu::smem_opt_ins())
    if (o.kernel == func) {
      o.bytes = value;
      return cudaSuccess;
    }
  emu::smem_opt_ins().push_back({func, value});
  return cudaSuccess;
}
// assert() in a kernel: a device-side assert ends the launch (cudaErrorAssert), not the process.
void __assert_fail(const char* expression, const char* file, unsigned int line, const char*) noexcept {
  if (!emu::g_in_launch) std::abort();
  emu::g_assert_message = std::string(file) + ":" + std::to_string(line) + ": " + expression;
  siglongjmp(emu::g_fault_jump, 2);
}
cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrMultiProcessorCount ? emu::g_sm_count : 0;
  return cudaSuccess;
}
}

namespace {

void begin() {
  emu::g_error.clear();
  emu::g_last_error = cudaSuccess;
}

int finish(cudaError_t err) {
  if (err == cudaSuccess && !emu::g_error.empty()) err = cudaErrorLaunchFailure;
  if (err != cudaSuccess && emu::g_error.empty()) emu::g_error = "launcher returned error " + std::to_string(err);
  return static_cast<int>(err);
}

DType dtype_of(int d) { return d == 0 ? DType::kFloat32 : (d == 1 ? DType::kFloat16 : DType::kBFloat16); }

bertfast::AttentionTensor tensor_of(void* data, const int64_t* strides) {
  bertfast::AttentionTensor t;
  t.data = data;
  t.batch_stride = strides[0];
  t.token_stride = strides[1];
  t.head_stride = strides[2];
  return t;
}

// dims: batch, heads, head_dim, seq_q, seq_k, total_q, counter_q, counter_k.
bertfast::AttentionProblem problem_of(const int64_t* dims, const int32_t* cu_seqlens, const bool* key_mask,
                                      const void* bias, int bias_dtype, const int64_t* bias_strides, float scale,
                                      const int64_t* seed, uint32_t threshold, float dropout_scale) {
  bertfast::AttentionProblem p;
  p.batch = dims[0];
  p.heads = dims[1];
  p.head_dim = dims[2];
  p.seq_q = dims[3];
  p.seq_k = dims[4];
  p.total_q = dims[5];
  p.counter_q = dims[6];
  p.counter_k = dims[7];
  p.cu_seqlens = cu_seqlens;
  p.key_mask = key_mask;
  p.bias = bias;
  p.bias_dtype = dtype_of(bias_dtype);
  p.bias_stride_b = bias_strides[0];
  p.bias_stride_h = bias_strides[1];
  p.bias_stride_q = bias_strides[2];
  p.bias_stride_k = bias_strides[3];
  p.scale = scale;
  p.seed = seed;
  p.threshold = threshold;
  p.dropout_scale = dropout_scale;
  return p;
}

}  // namespace


extern "C" {

// UBSan writes its reports to path.<pid> instead of stderr.
void emu_set_report_path(const char* path) {
}

const char* emu_error_message() { return emu::g_error.c_str(); }

// Multiprocessor count the launchers see (it sizes some grids), and the thread order.
void emu_configure(int sm_count, int reverse_schedule) {
  emu::g_sm_count = sm_count;
  emu::g_reverse_schedule = reverse_schedule != 0;
}

int emu_add_layer_norm_fwd(const void* x, const void* residual, const void* weight, const void* bias,
                           const void* x_bias, void* out, float* mean, float* rstd, int64_t rows, int64_t hidden,
                           float eps, const int64_t* seed, uint32_t threshold, float scale, int act, int param,
                           int aligned) {
  begin();
  bertfast::AddLayerNormFwdArgs a;
  a.x = x;
  a.residual = residual;
  a.weight = weight;
  a.bias = bias;
  a.x_bias = x_bias;
  a.out = out;
  a.mean = mean;
  a.rstd = rstd;
  a.rows = rows;
  a.hidden = hidden;
  a.eps = eps;
  a.seed = seed;
  a.threshold = threshold;
  a.scale = scale;
  return finish(bertfast::add_layer_norm_fwd_cuda(a, dtype_of(act), dtype_of(param), aligned != 0, nullptr));
}

int64_t emu_add_layer_norm_num_partials(int64_t rows, int64_t hidden, int act, int aligned) {
  return bertfast::add_layer_norm_cuda_num_partials(rows, hidden, dtype_of(act), aligned != 0, 0);
}

int emu_add_layer_norm_bwd(const void* grad_out, const void* x, const void* residual, const void* x_bias,
                           const float* mean, const float* rstd, const void* weight, void* grad_residual,
                           void* grad_x, void* grad_weight, void* grad_bias, void* grad_x_bias, float* partials,
                           int64_t rows, int64_t hidden, const int64_t* seed, uint32_t threshold, float scale, int act,
                           int param, int aligned) {
  begin();
  bertfast::AddLayerNormBwdArgs a;
  a.grad_out = grad_out;
  a.x = x;
  a.residual = residual;
  a.x_bias = x_bias;
  a.mean = mean;
  a.rstd = rstd;
  a.weight = weight;
  a.grad_residual = grad_residual;
  a.grad_x = grad_x;
  a.grad_weight = grad_weight;
  a.grad_bias = grad_bias;
  a.grad_x_bias = grad_x_bias;
  a.partials = partials;
  a.rows = rows;
  a.hidden = hidden;
  a.seed = seed;
  a.threshold = threshold;
  a.scale = scale;
  return finish(bertfast::add_layer_norm_bwd_cuda(a, dtype_of(act), dtype_of(param), aligned != 0, 0, nullptr));
}

// mode 0: forward, 1: backward, 2: forward + backward.
int emu_cross_entropy(int mode, const void* logits, const int64_t* labels, float* loss, float* lse,
                      const float* grad_loss, void* grad_logits, int64_t rows, int64_t classes, int64_t ignore_index,
                      float label_smoothing, int dtype) {
  begin();
  bertfast::CrossEntropyArgs a;
  a.logits = logits;
  a.labels = labels;
  a.loss = loss;
  a.lse = lse;
  a.grad_loss = grad_loss;
  a.grad_logits = grad_logits;
  a.rows = rows;
  a.classes = classes;
  a.ignore_index = ignore_index;
  a.label_smoothing = label_smoothing;
  const DType d = dtype_of(dtype);
  if (mode == 0) return finish(bertfast::cross_entropy_fwd_cuda(a, d, nullptr));
  if (mode == 1) return finish(bertfast::cross_entropy_bwd_cuda(a, d, nullptr));
  return finish(bertfast::cross_entropy_fwd_bwd_cuda(a, d, nullptr));
}

// tensors: q, k, v, out; strides: 3 (batch, token, head) per tensor.
int emu_attention_fwd(void* const* tensors, const int64_t* strides, float* lse, const int64_t* dims,
                      const int32_t* cu_seqlens, const bool* key_mask, const void* bias, int bias_dtype,
                      const int64_t* bias_strides, float scale, const int64_t* seed, uint32_t threshold,
                      float dropout_scale, int dtype) {
  begin();
  bertfast::AttentionFwdArgs a;
  a.p = problem_of(dims, cu_seqlens, key_mask, bias, bias_dtype, bias_strides, scale, seed, threshold, dropout_scale);
  a.q = tensor_of(tensors[0], strides + 0);
  a.k = tensor_of(tensors[1], strides + 3);
  a.v = tensor_of(tensors[2], strides + 6);
  a.out = tensor_of(tensors[3], strides + 9);
  a.lse = lse;
  return finish(bertfast::attention_fwd_cuda(a, dtype_of(dtype), nullptr));
}

int64_t emu_attention_bwd_workspace_bytes(int64_t heads, int64_t total_q) {
  bertfast::AttentionBwdArgs a;
  a.p.heads = heads;
  a.p.total_q = total_q;
  return bertfast::attention_bwd_cuda_workspace_bytes(a);
}

// tensors: q, k, v, out, grad_out, grad_q, grad_k, grad_v; strides: 3 per tensor.
int emu_attention_bwd(void* const* tensors, const int64_t* strides, const float* lse, float* grad_bias,
                      void* workspace, const int64_t* dims, const int32_t* cu_seqlens, const bool* key_mask,
                      const void* bias, int bias_dtype, const int64_t* bias_strides, float scale, const int64_t* seed,
                      uint32_t threshold, float dropout_scale, int dtype) {
  begin();
  bertfast::AttentionBwdArgs a;
  a.p = problem_of(dims, cu_seqlens, key_mask, bias, bias_dtype, bias_strides, scale, seed, threshold, dropout_scale);
  bertfast::AttentionTensor* views[] = {&a.q, &a.k, &a.v, &a.out, &a.grad_out, &a.grad_q, &a.grad_k, &a.grad_v};
  for (int i = 0; i < 8; ++i) *views[i] = tensor_of(tensors[i], strides + 3 * i);
  a.lse = lse;
  a.grad_bias = grad_bias;
  return finish(bertfast::attention_bwd_cuda(a, dtype_of(dtype), workspace, nullptr));
}

}  // extern "C"
