"""ctypes bindings of the emulated CUDA kernels (emu_shim.cpp): torch CPU tensors in and out.

Each call fills the glue's role (csrc/<family>/*_torch.h, *_cuda.cpp): it allocates outputs and
passes data pointers. Outputs the kernels must write in full start as NaN, so that an element a
kernel forgets shows up; buffers the glue zero-fills (attention gradients) start at zero.
"""
import ctypes
import math
import os
import tempfile

import torch

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

_P, _I64, _I32, _U32, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_uint32, ctypes.c_float
_SIGNATURES = {
    "emu_error_message": ([], ctypes.c_char_p),
    "emu_configure": ([_I32, _I32], None),
    "emu_add_layer_norm_fwd": ([_P] * 8 + [_I64, _I64, _F, _P, _U32, _F, _I32, _I32, _I32], _I32),
    "emu_add_layer_norm_num_partials": ([_I64, _I64, _I32, _I32], _I64),
    "emu_add_layer_norm_bwd": ([_P] * 13 + [_I64, _I64, _P, _U32, _F, _I32, _I32, _I32], _I32),
    "emu_cross_entropy": ([_I32] + [_P] * 6 + [_I64, _I64, _I64, _F, _I32], _I32),
    "emu_attention_fwd": ([_P] * 7 + [_I32, _P, _F, _P, _U32, _F, _I32], _I32),
    "emu_attention_bwd_workspace_bytes": ([_I64, _I64], _I64),
    "emu_selftest": ([_I32, _P], _I32),
    "emu_attention_bwd": ([_P] * 9 + [_I32, _P, _F, _P, _U32, _F, _I32], _I32),
}


class EmulationError(RuntimeError):
    pass


# Elements on each side of an output: room for a whole tile of 64 rows overshooting (a multiple
# of 8, so that a view is 16-byte aligned like its buffer).
_GUARD = 1 << 15


class _Outputs:
    """Output tensors inside larger buffers whose margins hold a sentinel: a kernel that writes
    out of bounds (before or after its output) changes them."""

    def __init__(self):
        self._guarded = []

    def full(self, shape, value, dtype=torch.float32):
        n = math.prod(shape)
        buffer = torch.full((n + 2 * _GUARD,), 7.0, dtype=dtype)
        view = buffer[_GUARD : _GUARD + n].view(shape)
        view.fill_(value)
        self._guarded.append(buffer)
        return view

    def check(self, what):
        for buffer in self._guarded:
            if not ((buffer[:_GUARD] == 7.0).all() and (buffer[-_GUARD:] == 7.0).all()):
                size = buffer.numel() - 2 * _GUARD
                raise EmulationError(f"{what}: a kernel wrote outside an output tensor of {size} elements")


def _guarded_input(t):
    """A contiguous floating-point input copied between NaN margins, at the same offset from a
    16-byte boundary (an out-of-bounds read shows up as NaN); other tensors (views with their
    own strides, integers) as they are."""
    if t is None or not t.is_floating_point() or not t.is_contiguous():
        return t
    shift = (t.data_ptr() % 16) // t.element_size()  # the same offset from a 16-byte boundary
    buffer = torch.full((t.numel() + 2 * _GUARD + 8,), math.nan, dtype=t.dtype)
    view = buffer[_GUARD + shift : _GUARD + shift + t.numel()].view(t.shape)
    view.copy_(t)
    return view


def _ptr(t):
    return None if t is None else t.data_ptr()


def _i64_array(values):
    return (ctypes.c_int64 * len(values))(*values)


def dropout_threshold(p):
    """csrc/common/torch_utils.h's dropout_threshold: floor(p * 2^32), at most 2^32 - 1."""
    return min(math.floor(p * 4294967296.0), 4294967295)


def dropout_scale(p):
    return 1.0 / (1.0 - p) if p > 0 else 1.0


def vector_path_ok(tensors, hidden, dtype):
    """add_layer_norm_cuda.cpp's vector_path_ok: 16-byte aligned pointers and whole vectors per row."""
    vec = 4 if dtype == torch.float32 else 8
    return hidden % vec == 0 and all(t is None or t.data_ptr() % 16 == 0 for t in tensors)


class EmulatedKernels:
    def __init__(self, library_path):
        self.lib = ctypes.CDLL(library_path)
        for name, (args, ret) in _SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = args, ret
        self.configure()


    def configure(self, sm_count=2, reverse_schedule=False):
        """sm_count sizes the grids that depend on it; reverse_schedule runs the threads of a
        block in reverse order between barriers (a race shows up as a different result)."""
        self.lib.emu_configure(sm_count, int(reverse_schedule))

    def _run(self, what, outputs, fn, *args):
        """fn(*args) with the process's stderr captured: UBSan reports land there (a misaligned
        vector load, which faults on a GPU, an out-of-bounds index of a fixed array, ...)."""
        with tempfile.TemporaryFile() as captured:
            saved = os.dup(2)
            os.dup2(captured.fileno(), 2)
            try:
                rc = fn(*args)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            captured.seek(0)
            report = captured.read().decode(errors="replace")
        if rc != 0:
            raise EmulationError(f"{what}: error {rc}: {self.lib.emu_error_message().decode()}\n{report[-4000:]}")
        if "runtime error" in report:
            raise EmulationError(f"{what}: undefined behaviour:\n{report[-4000:]}")
        outputs.check(what)

    def selftest(self, which):
        """Runs broken kernel `which` of selftest_kernels.cu; returns its output (256 floats)."""
        outs = _Outputs()
        out = outs.full((256,), math.nan)
        self._run(f"selftest kernel {which}", outs, self.lib.emu_selftest, which, _ptr(out))
        return out

    # ---- add_layer_norm ----
    def add_layer_norm_fwd(self, x, residual, weight, bias, x_bias, eps, seed=None, p=0.0, aligned=None):
        x, residual, weight, bias, x_bias = map(_guarded_input, (x, residual, weight, bias, x_bias))
        rows, hidden = x.shape
        outs = _Outputs()
        out = outs.full(x.shape, math.nan, x.dtype)
        mean, rstd = outs.full((rows,), math.nan), outs.full((rows,), math.nan)
        if aligned is None:
            aligned = vector_path_ok([x, residual, weight, bias, x_bias, out], hidden, x.dtype)
        seed_t = torch.tensor([seed], dtype=torch.int64) if p > 0 else None
        self._run(
            "add_layer_norm forward", outs, self.lib.emu_add_layer_norm_fwd,
            _ptr(x), _ptr(residual), _ptr(weight), _ptr(bias), _ptr(x_bias), _ptr(out), _ptr(mean), _ptr(rstd), rows,
            hidden, eps, _ptr(seed_t), dropout_threshold(p) if p > 0 else 0, dropout_scale(p),
            DTYPE_CODE[x.dtype], DTYPE_CODE[weight.dtype], int(aligned))
        return out, mean, rstd

    def add_layer_norm_bwd(self, grad_out, x, residual, weight, x_bias, mean, rstd, seed=None, p=0.0,
                           want_grad_x_bias=False, aligned=None):
        grad_out, x, residual, weight, x_bias, mean, rstd = map(_guarded_input,
                                                                (grad_out, x, residual, weight, x_bias, mean, rstd))
        rows, hidden = x.shape
        outs = _Outputs()
        grad_residual = outs.full(x.shape, math.nan, x.dtype)
        grad_x = outs.full(x.shape, math.nan, x.dtype) if p > 0 else None
        grad_weight, grad_bias = (outs.full(weight.shape, math.nan, weight.dtype) for _ in range(2))
        grad_x_bias = outs.full(weight.shape, math.nan, weight.dtype) if want_grad_x_bias else None
        if aligned is None:
            aligned = vector_path_ok([grad_out, x, residual, x_bias, weight, grad_residual, grad_x], hidden, x.dtype)
        act = DTYPE_CODE[x.dtype]
        partials = outs.full((self.lib.emu_add_layer_norm_num_partials(rows, hidden, act, int(aligned)), 3, hidden),
                             math.nan)
        seed_t = torch.tensor([seed], dtype=torch.int64) if p > 0 else None
        self._run(
            "add_layer_norm backward", outs, self.lib.emu_add_layer_norm_bwd,
            _ptr(grad_out), _ptr(x), _ptr(residual), _ptr(x_bias), _ptr(mean), _ptr(rstd), _ptr(weight),
            _ptr(grad_residual), _ptr(grad_x), _ptr(grad_weight), _ptr(grad_bias), _ptr(grad_x_bias), _ptr(partials),
            rows, hidden, _ptr(seed_t), dropout_threshold(p) if p > 0 else 0, dropout_scale(p), act,
            DTYPE_CODE[weight.dtype], int(aligned))
        return grad_residual, grad_x, grad_weight, grad_bias, grad_x_bias

    # ---- softmax_cross_entropy ----
    def cross_entropy(self, mode, logits, labels, ignore_index=-100, label_smoothing=0.0, lse=None, grad_loss=None,
                      grad_out=None):
        """mode 0: (loss, lse); 1: grad from lse and grad_loss (into grad_out if given, e.g. the
        logits themselves); 2: (loss, lse, grad) with the gradient written into grad_out."""
        rows, classes = logits.shape
        if grad_out is None or grad_out.data_ptr() != logits.data_ptr():  # in place: keep the aliasing
            logits = _guarded_input(logits)
        lse, grad_loss = _guarded_input(lse), _guarded_input(grad_loss)
        outs = _Outputs()
        loss = outs.full((rows,), math.nan) if mode != 1 else None
        if mode != 1:
            lse = outs.full((rows,), math.nan)
        if mode != 0 and grad_out is None:
            grad_out = outs.full(logits.shape, math.nan, logits.dtype)
        self._run(f"cross_entropy mode {mode}", outs, self.lib.emu_cross_entropy, mode, _ptr(logits), _ptr(labels),
                  _ptr(loss), _ptr(lse), _ptr(grad_loss), _ptr(grad_out), rows, classes, ignore_index,
                  label_smoothing, DTYPE_CODE[logits.dtype])
        return loss, lse, grad_out

    # ---- attention ----
    @staticmethod
    def _strides(t):
        return [t.stride(0), t.stride(1), t.stride(2)] if t.dim() == 4 else [0, t.stride(0), t.stride(1)]

    def _problem(self, q, k, cu_seqlens, max_seqlen, key_mask, bias):
        heads, dim = q.shape[-2], q.shape[-1]
        if cu_seqlens is not None:
            batch, seq_q = cu_seqlens.numel() - 1, max_seqlen
            seq_k, total_q = max_seqlen, q.shape[0]
        else:
            batch, seq_q, seq_k = q.shape[0], q.shape[1], k.shape[1]
            total_q = batch * seq_q
        dims = _i64_array([batch, heads, dim, seq_q, seq_k, total_q, seq_q, seq_k])
        bias_strides = _i64_array(list(bias.stride()) if bias is not None else [0, 0, 0, 0])
        bias_code = DTYPE_CODE[bias.dtype] if bias is not None else 0
        return dims, bias_strides, bias_code, (batch, heads, seq_q, seq_k, total_q)

    def attention_fwd(self, q, k, v, *, cu_seqlens=None, max_seqlen=0, key_mask=None, bias=None, scale, seed=None,
                      p=0.0):
        q, k, v, bias = map(_guarded_input, (q, k, v, bias))
        dims, bias_strides, bias_code, (_, heads, _, _, total_q) = self._problem(q, k, cu_seqlens, max_seqlen,
                                                                                 key_mask, bias)
        outs = _Outputs()
        out = outs.full(q.shape, math.nan, q.dtype)
        lse = outs.full((heads, total_q), math.nan)
        tensors = (ctypes.c_void_p * 4)(*[_ptr(t) for t in (q, k, v, out)])
        strides = _i64_array(sum((self._strides(t) for t in (q, k, v, out)), []))
        seed_t = torch.tensor([seed], dtype=torch.int64) if p > 0 else None
        self._run("attention forward", outs, self.lib.emu_attention_fwd, tensors, strides, _ptr(lse), dims,
                  _ptr(cu_seqlens), _ptr(key_mask), _ptr(bias), bias_code, bias_strides, scale, _ptr(seed_t),
                  dropout_threshold(p) if p > 0 else 0, dropout_scale(p), DTYPE_CODE[q.dtype])
        return out, lse

    def attention_bwd(self, grad_out, q, k, v, out, lse, *, cu_seqlens=None, max_seqlen=0, key_mask=None, bias=None,
                      want_grad_bias=False, scale, seed=None, p=0.0):
        grad_out, q, k, v, out, lse, bias = map(_guarded_input, (grad_out, q, k, v, out, lse, bias))
        dims, bias_strides, bias_code, (batch, heads, seq_q, seq_k, total_q) = self._problem(
            q, k, cu_seqlens, max_seqlen, key_mask, bias)
        outs = _Outputs()  # the glue zero-fills the gradients (masked keys keep 0)
        grad_q, grad_k, grad_v = (outs.full(t.shape, 0.0, t.dtype) for t in (q, k, v))
        grad_bias = outs.full((batch, heads, seq_q, seq_k), 0.0) if want_grad_bias else None
        workspace = outs.full((self.lib.emu_attention_bwd_workspace_bytes(heads, total_q) // 4,), math.nan)
        views = (q, k, v, out, grad_out, grad_q, grad_k, grad_v)
        tensors = (ctypes.c_void_p * 8)(*[_ptr(t) for t in views])
        strides = _i64_array(sum((self._strides(t) for t in views), []))
        seed_t = torch.tensor([seed], dtype=torch.int64) if p > 0 else None
        self._run("attention backward", outs, self.lib.emu_attention_bwd, tensors, strides, _ptr(lse), _ptr(grad_bias),
                  _ptr(workspace), dims, _ptr(cu_seqlens), _ptr(key_mask), _ptr(bias), bias_code, bias_strides,
                  scale, _ptr(seed_t), dropout_threshold(p) if p > 0 else 0, dropout_scale(p), DTYPE_CODE[q.dtype])
        return grad_q, grad_k, grad_v, grad_bias
