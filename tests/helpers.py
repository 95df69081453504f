"""Shared test helpers: devices, dtypes, dropout seeds, and the low-precision comparison rule
(`assert_lowp_close`, flash-attention's idiom) that the op tests and the emulated CUDA tests use."""
import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

# Per-dtype floor added to the allowed error (flash-attention's idiom).
FLOOR = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: 1e-10}


def dtypes_for(device):
    return [torch.float32, torch.bfloat16] + ([torch.float16] if device == "cuda" else [])


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def assert_lowp_close(name, fused, ref64, ref_lowp, dtype, floor=None):
    """|fused - ref64| <= 2 |ref_lowp - ref64| + floor * max(1, max |ref64|), where ref64 is the
    reference in float64 and ref_lowp the same reference run in the low precision; with ref_lowp
    None the floor alone bounds the error. Reports where the worst element is."""
    assert not torch.isnan(fused).any(), f"{name}: NaN in result"
    if fused.numel() == 0:
        return
    floor = FLOOR[dtype] if floor is None else floor
    err = (fused.double() - ref64.double()).abs()
    allowed = floor * max(1.0, ref64.abs().max().item())
    if ref_lowp is not None:
        allowed += 2 * max_err(ref_lowp, ref64)
    worst = err.max().item()
    if worst > allowed:
        idx = tuple(int(i) for i in torch.nonzero(err == worst)[0])
        raise AssertionError(
            f"{name}: max error {worst:.3e} > allowed {allowed:.3e} at {idx}: "
            f"fused {fused[idx].item():.6g} ref {ref64[idx].item():.6g}")


def seed_that_op_will_draw(s, device="cpu"):
    """The dropout seed an op will draw right after torch.manual_seed(s); re-seeds with s."""
    torch.manual_seed(s)
    seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device).item())
    torch.manual_seed(s)
    return seed
