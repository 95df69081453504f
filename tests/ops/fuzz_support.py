"""What the fuzz modules (tests/ops/test_fuzz_<op>.py) share: hypothesis settings sized for CI
or for a long run, tensor layouts (non-contiguous views, storage offsets), special values,
the comparison rule against bertfast.ops.reference in float64, the check that an error is a
clear one, and a subprocess runner for the cases that could kill the process.

CI runs a small, derandomized set of examples (a fixed seed: the same cases every run). A
longer, randomized run: `BERTFAST_FUZZ_EXAMPLES=2000 pytest -q tests/ops -k fuzz`
(proposed make target: `make fuzz`)."""
import os
import subprocess
import sys

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

LONG_RUN_EXAMPLES = int(os.environ.get("BERTFAST_FUZZ_EXAMPLES", "0"))
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fuzz_settings(ci_examples):
    """ci_examples fixed cases in CI; BERTFAST_FUZZ_EXAMPLES random ones when set."""
    return settings(max_examples=LONG_RUN_EXAMPLES or ci_examples, derandomize=not LONG_RUN_EXAMPLES,
                    deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# Sizes that exercise the edges: empty, one, around vector widths and blocks, odd primes.
AWKWARD_SIZES = [0, 1, 2, 3, 7, 8, 9, 17, 31, 33, 64, 127]
FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LAYOUTS = ["contiguous", "offset", "strided", "transposed"]


def layout_view(t, layout):
    """t's values in a tensor of the given layout: a contiguous one, one starting `offset`
    elements into its storage, every other element of a larger buffer along the last
    dimension, or the transpose of a contiguous tensor (last two dimensions)."""
    if layout == "contiguous" or t.dim() == 0:
        return t.contiguous()
    if layout == "offset":
        buffer = torch.empty(t.numel() + 3, dtype=t.dtype, device=t.device)
        view = buffer[3:].view(t.shape)
        view.copy_(t)
        return view
    if layout == "strided":
        buffer = torch.empty(*t.shape[:-1], 2 * t.shape[-1] + 1, dtype=t.dtype, device=t.device)
        view = buffer[..., 1::2]
        view.copy_(t)
        return view
    if t.dim() < 2:
        return layout_view(t, "strided")
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


SPECIALS = ["none", "large_offset", "inf", "-inf", "nan", "-inf_row", "huge"]


def with_special(x, special, seed):
    """x (float64) with special values planted: every value offset by 1e4, one +inf / -inf /
    nan, a row of -inf, or values near float16's / bfloat16's limits."""
    x = x.clone()
    if x.numel() == 0 or special == "none":
        return x
    g = torch.Generator().manual_seed(seed)
    flat = x.view(-1)
    i = int(torch.randint(0, flat.numel(), (1,), generator=g))
    if special == "large_offset":
        x += 1e4
    elif special == "inf":
        flat[i] = float("inf")
    elif special == "-inf":
        flat[i] = float("-inf")
    elif special == "nan":
        flat[i] = float("nan")
    elif special == "-inf_row":
        x.view(-1, x.shape[-1])[i // x.shape[-1]] = float("-inf")
    elif special == "huge":
        flat[i] = 6e4
    return x


def _max_err(a, b):
    """max |a - b| where both are finite; positions where both are non-finite and agree
    count 0; a nan (or infinity) where the other is finite counts as inf."""
    a, b = a.double(), b.double()
    # (where the reference is nan, any non-finite value counts as agreeing: a +inf logit gives
    # some inf gradients where torch's are nan)
    same = (torch.isnan(b) & ~torch.isfinite(a)) | (a == b)
    err = (a - b).abs().masked_fill(same, 0.0).nan_to_num(nan=float("inf"))
    return err.max().item() if err.numel() else 0.0


def assert_close_to_reference(name, got, ref64, ref_same_precision, floor):
    """The flash-attention rule: |got - ref64| <= 2 |ref_same_precision - ref64| + floor,
    where ref_same_precision is torch's own result at got's precision (so where torch
    itself is inexact, or yields inf / nan from finite float64 values, so may we)."""
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} vs reference {tuple(ref64.shape)}"
    err = _max_err(got, ref64)
    torch_err = _max_err(ref_same_precision, ref64)
    finite = ref64[torch.isfinite(ref64)]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    allowed = 2 * torch_err + floor * scale
    assert err <= allowed, (f"{name}: error {err:.3e} > allowed {allowed:.3e} (torch's own error {torch_err:.3e})"
                            f"\n got {got}\n ref {ref64}")


def assert_clear_error(exc, op_name, *words):
    """A clear error: a ValueError / TypeError / RuntimeError (NotImplementedError for
    unsupported devices) that names the op and at least one of `words` (the argument)."""
    assert isinstance(exc, (ValueError, TypeError, RuntimeError)), f"unexpected {type(exc).__name__}: {exc}"
    text = str(exc)
    assert op_name in text, f"the error does not name {op_name}: {text}"
    assert not words or any(w in text for w in words), f"the error names none of {words}: {text}"
    assert "found type 'int'" not in text and "object has no attribute" not in text, text


NOT_TENSORS = st.sampled_from(["numpy", "list", "none", "float"])


def not_a_tensor(kind, like):
    """A stand-in for a tensor argument that is not a tensor."""
    import numpy as np
    return {"numpy": lambda: np.zeros(tuple(like.shape)), "list": lambda: like.tolist(), "none": lambda: None,
            "float": lambda: 1.0}[kind]()


def run_isolated(code, timeout=120):
    """Runs `code` in a fresh interpreter (bertfast from this checkout) and returns the
    completed process; fails if the child died of a signal (a segfault, an abort), which in
    the test process itself would take pytest down with it."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO_ROOT)
    assert proc.returncode >= 0, (f"the child died of signal {-proc.returncode}\n--- code\n{code}\n--- stderr\n"
                                  f"{proc.stderr[-3000:]}")
    return proc
