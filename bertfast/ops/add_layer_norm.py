"""add_layer_norm: the tail of every BERT sub-layer in one fused op.

    out = layer_norm(residual + dropout(x + x_bias)) over the last dimension

`x` is the output of a linear layer computed without its bias, `x_bias` that bias.
"""
import numbers

import torch

from .._library import check_device, load_library
from ._common import (check_dropout_p, check_fake_devices, check_same_device, check_tensor, once_differentiable,
                      seed_for_dropout)

load_library()

_ACT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_NAME = "add_layer_norm"


def add_layer_norm(x, residual, weight, bias, eps=1e-12, *, x_bias=None, dropout_p=0.0):
    """Fused `layer_norm(residual + dropout(x + x_bias))` over the last dimension.

    Args:
        x: (..., hidden) float32, float16 or bfloat16 (float16 CPU support is a bonus).
        residual: same shape and dtype as `x`.
        weight, bias: (hidden,), in x's dtype or float32 (as autocast keeps parameters).
        eps: > 0, added to the variance.
        x_bias: optional (hidden,) bias of the linear layer that produced `x`, dtype as weight.
        dropout_p: dropout probability in [0, 1) on `x + x_bias`; the Philox mask is drawn
            from torch's generator (torch.manual_seed reproduces it) and regenerated in backward.

    Returns a tensor of x's shape and dtype. Statistics and accumulation are float32.
    Differentiable (once: the gradients are not differentiable again) in x, residual, weight,
    bias and x_bias. Zero rows give an empty output (and zero parameter gradients), as torch.
    """
    check_tensor(x, "x", _NAME, _ACT_DTYPES)
    check_tensor(residual, "residual", _NAME)
    check_tensor(weight, "weight", _NAME)
    check_tensor(bias, "bias", _NAME)
    if x_bias is not None:
        check_tensor(x_bias, "x_bias", _NAME)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"{_NAME}: x must have shape (..., hidden) with hidden >= 1, got {tuple(x.shape)}")
    if residual.shape != x.shape:
        raise ValueError(f"{_NAME}: residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    if residual.dtype != x.dtype:
        raise TypeError(f"{_NAME}: residual has dtype {residual.dtype}, x has {x.dtype}; they must match")
    hidden = x.shape[-1]
    if weight.dtype not in (x.dtype, torch.float32):
        raise TypeError(f"{_NAME}: weight has dtype {weight.dtype}; expected {x.dtype} (x's) or float32")
    for name, p in (("weight", weight), ("bias", bias), ("x_bias", x_bias)):
        if p is None:
            continue
        if p.dim() != 1 or p.shape[0] != hidden:
            raise ValueError(f"{_NAME}: {name} must have shape ({hidden},), got {tuple(p.shape)}")
        if p.dtype != weight.dtype:
            raise TypeError(f"{_NAME}: {name} has dtype {p.dtype}, expected {weight.dtype} like weight")
    check_same_device({"x": x, "residual": residual, "weight": weight, "bias": bias, "x_bias": x_bias}, _NAME)
    if not isinstance(eps, numbers.Real) or not eps > 0:
        raise ValueError(f"{_NAME}: eps must be a number > 0, got {eps!r}")
    dropout_p = check_dropout_p(dropout_p, _NAME)
    check_device(x, _NAME)
    seed = seed_for_dropout(dropout_p, x.device)
    out, _, _ = torch.ops.bertfast.add_layer_norm_fwd(x, residual, weight, bias, x_bias, seed, float(eps), dropout_p)
    return out


@torch.library.register_fake("bertfast::add_layer_norm_fwd")
def _add_layer_norm_fwd_fake(x, residual, weight, bias, x_bias, seed, eps, dropout_p):
    check_fake_devices(_NAME, x=x, residual=residual, weight=weight, bias=bias, x_bias=x_bias, seed=seed)
    torch._check(residual.shape == x.shape, lambda: f"{_NAME}: residual must have x's shape")
    torch._check(weight.shape == (x.shape[-1],), lambda: f"{_NAME}: weight must have shape (hidden,)")
    stats = x.new_empty(x.shape[:-1], dtype=torch.float32)
    return torch.empty_like(x, memory_format=torch.contiguous_format), stats, torch.empty_like(stats)


@torch.library.register_fake("bertfast::add_layer_norm_bwd")
def _add_layer_norm_bwd_fake(grad_out, x, residual, weight, x_bias, mean, rstd, seed, dropout_p, want_grad_x_bias):
    check_fake_devices(f"{_NAME} backward", x=x, grad_out=grad_out, residual=residual, weight=weight, x_bias=x_bias,
                       mean=mean, rstd=rstd, seed=seed)
    grad_residual = torch.empty_like(x, memory_format=torch.contiguous_format)
    grad_x = torch.empty_like(grad_residual) if dropout_p > 0 else x.new_empty((0,))
    grad_x_bias = torch.empty_like(weight) if want_grad_x_bias else weight.new_empty((0,))
    return grad_residual, grad_x, torch.empty_like(weight), torch.empty_like(weight), grad_x_bias


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, x_bias, seed, eps, dropout_p = inputs
    _, mean, rstd = output
    # The pre-norm sum is recomputed from x and residual in backward: storing it would cost a
    # fresh (rows, hidden) tensor per call, and x and residual are alive anyway.
    ctx.save_for_backward(x, residual, weight, x_bias, mean, rstd, seed)
    ctx.dropout_p = dropout_p


def _backward(ctx, grad_out, _grad_mean, _grad_rstd):
    x, residual, weight, x_bias, mean, rstd, seed = ctx.saved_tensors
    want_grad_x_bias = x_bias is not None and ctx.needs_input_grad[4]
    grad_residual, grad_x, grad_weight, grad_bias, grad_x_bias = torch.ops.bertfast.add_layer_norm_bwd(
        grad_out, x, residual, weight, x_bias, mean, rstd, seed, ctx.dropout_p, want_grad_x_bias)
    if ctx.dropout_p == 0:
        grad_x = grad_residual  # without dropout, d(pre-norm sum)/dx is the identity
    return once_differentiable((grad_x, grad_residual, grad_weight, grad_bias,
                                grad_x_bias if want_grad_x_bias else None, None, None, None), _NAME,
                               x, residual, weight, x_bias, grad_out)


torch.library.register_autograd("bertfast::add_layer_norm_fwd", _backward, setup_context=_setup_context)
