"""Argument checks and dropout seeds shared by the Python wrappers of the ops."""
import numbers

import torch


def seed_for_dropout(dropout_p, device):
    """A fresh int64 key for a Philox dropout mask, drawn from torch's generator for `device`
    (so torch.manual_seed makes it reproducible); None when there is no dropout."""
    if dropout_p == 0.0:
        return None
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)


def check_dropout_p(dropout_p, op_name):
    if not isinstance(dropout_p, (int, float)) or not 0.0 <= float(dropout_p) < 1.0:
        raise ValueError(f"{op_name}: dropout_p must be a float in [0, 1), got {dropout_p!r}")
    return float(dropout_p)


def check_tensor(t, name, op_name, dtypes=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op_name}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{op_name}: {name} has dtype {t.dtype}, expected one of {allowed}")


def check_same_device(tensors, op_name):
    """tensors: dict name -> tensor (None skipped)."""
    items = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{op_name}: {name} is on {t.device} but {first_name} is on {first.device}")


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def check_int(value, name, op_name, minimum=None):
    """An int argument that the op's schema passes as int64: a Python int (not a bool) in
    int64's range and >= minimum. Returns it as an int."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{op_name}: {name} must be an int, got {value!r}")
    value = int(value)
    low = _INT64_MIN if minimum is None else minimum
    if not low <= value <= _INT64_MAX:
        bound = "int64's range [-2**63, 2**63 - 1]" if minimum is None else f"[{minimum}, 2**63 - 1]"
        raise ValueError(f"{op_name}: {name} must be in {bound}, got {value}")
    return value


def check_fake_devices(op_name, **tensors):
    """The fake (meta / FakeTensor) implementations' device check: every tensor of one call
    on one device, as the real kernels require (a meta tensor among CPU ones would otherwise
    reach the fake implementation and come back as uninitialised memory)."""
    items = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        torch._check(t.device == first.device, lambda: (
            f"{op_name}: expected all tensors on one device, but {name} is on {t.device} and {first_name} "
            f"on {first.device}"))


def check_writable_in_place(t, name, op_name):
    """A tensor an op will overwrite: torch refuses in-place writes to a leaf that requires
    grad (or a view of one), since its value is what the gradient is taken of."""
    base = t if t._base is None else t._base
    if base.is_leaf and base.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"{op_name}: {name} is a leaf tensor that requires grad (or a view of one), which inplace_backward "
            f"would overwrite with its own gradient; pass {name}.clone() or use inplace_backward=False")


_DOUBLE_BACKWARD = ("bertfast.ops.{}: double backward (differentiating its gradient, e.g. create_graph=True "
                    "then a second grad) is not supported; its backward is once_differentiable")


def once_differentiable(grads, op_name, *linked):
    """The gradients a backward returns, made to raise when differentiated again (as
    torch.autograd.function.once_differentiable does). Without this, with create_graph=True
    the gradients would carry no graph and a second grad would silently see zeros.

    linked: the tensors the gradients depend on (the forward's inputs the backward read, and
    the incoming gradients). The error node takes them as inputs so that it lies on every
    path a second grad follows; torch's decorator links nothing, so a second
    torch.autograd.grad(g, w) with respect to one input never meets it. Gradients computed
    without create_graph (grad mode off) are returned as they are."""
    if not torch.is_grad_enabled():
        return grads
    present = [i for i, g in enumerate(grads) if g is not None]
    linked = [t for t in linked if isinstance(t, torch.Tensor) and t.requires_grad]
    if not present:
        return grads
    err = torch._C._functions.DelayedError(_DOUBLE_BACKWARD.format(op_name).encode(), len(present) + len(linked))
    wrapped = err(*[grads[i].detach().requires_grad_() for i in present], *linked)
    if not isinstance(wrapped, tuple):
        wrapped = (wrapped,)
    out = list(grads)
    for i, g in zip(present, wrapped):
        out[i] = g
    return tuple(out)


def mean_over_counted(total, count):
    """total / count for reduction "mean", as torch's cross-entropy: nan when count is 0 (no
    label counted: every one ignored, or no rows), and then a zero gradient for total (not
    the nan that 0 * (1 / 0) would give)."""
    counted = count > 0
    return torch.where(counted, total / count.clamp(min=1), torch.full_like(total, float("nan")))
