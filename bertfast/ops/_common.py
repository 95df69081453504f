"""Argument checks and dropout seeds shared by the Python wrappers of the ops."""
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
