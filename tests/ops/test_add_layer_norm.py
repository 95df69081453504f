"""add_layer_norm against the float64 reference: forward, all five gradients, dropout,
opcheck, torch.compile, bad input and a fuzz test."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertfast.ops import reference
from bertfast.ops import add_layer_norm
from helpers import DEVICES, assert_lowp_close, dtypes_for, max_err, requires_cuda, seed_that_op_will_draw

SHAPES = [(1, 1), (3, 7), (1023, 384), (3, 768), (1023, 1000), (3, 4096), (1, 8192), (130, 8192)]


def make_inputs(rows, hidden, dtype, device, param_dtype=None, with_x_bias=True, lead=None):
    param_dtype = param_dtype or dtype
    shape = (lead, rows // lead, hidden) if lead else (rows, hidden)
    x = torch.randn(shape, device=device).to(dtype)
    residual = (torch.randn(shape, device=device) * 2 + 0.5).to(dtype)
    weight = (1 + 0.5 * torch.randn(hidden, device=device)).to(param_dtype)
    bias = (0.3 * torch.randn(hidden, device=device)).to(param_dtype)
    x_bias = (0.3 * torch.randn(hidden, device=device)).to(param_dtype) if with_x_bias else None
    return x, residual, weight, bias, x_bias


def run_with_grads(fn, tensors, grad_out):
    """fn(*tensors) and the gradients of every non-None tensor."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]
    out = fn(*leaves)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), [t.grad if t is not None else None for t in leaves]


NAMES = ["x", "residual", "weight", "bias", "x_bias"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows,hidden", SHAPES)
@pytest.mark.parametrize("with_x_bias", [True, False])
@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_parity_fp32(device, rows, hidden, with_x_bias, dropout_p):
    torch.manual_seed(rows * 7 + hidden)
    inputs = make_inputs(rows, hidden, torch.float32, device, with_x_bias=with_x_bias)
    grad_out = torch.randn(inputs[0].shape, device=device)
    seed = seed_that_op_will_draw(11, device)
    out, grads = run_with_grads(lambda x, r, w, b, xb: add_layer_norm(x, r, w, b, 1e-5, x_bias=xb, dropout_p=dropout_p),
                                inputs, grad_out)
    mask = reference.dropout_keep_mask(seed, inputs[0].shape, dropout_p, device) if dropout_p else None
    ref, ref_grads = run_with_grads(
        lambda x, r, w, b, xb: reference.add_layer_norm(x, r, w, b, 1e-5, x_bias=xb, dropout_p=dropout_p, keep_mask=mask),
        [t.double() if t is not None else None for t in inputs], grad_out.double())
    # fp32: a few ulps times the reduction length
    tol = 1e-5 * max(1.0, (hidden / 256) ** 0.5)
    assert max_err(out, ref) <= tol * 10, f"out: {max_err(out, ref)}"
    for name, g, rg in zip(NAMES, grads, ref_grads):
        if rg is None:
            assert g is None
            continue
        scale = max(1.0, rg.abs().max().item())
        # parameter gradients sum over rows: allow for the length of that sum too
        length = rows if name in ("weight", "bias", "x_bias") else hidden
        assert max_err(g, rg) <= 1e-5 * scale * max(4.0, length ** 0.5), f"grad {name}: {max_err(g, rg)}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows,hidden", [(3, 7), (1023, 384), (5, 768), (64, 1000), (2, 8192)])
@pytest.mark.parametrize("param_fp32", [False, True])
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_parity_low_precision(device, rows, hidden, param_fp32, dropout_p):
    for dtype in dtypes_for(device):
        if dtype == torch.float32:
            continue
        torch.manual_seed(rows + hidden)
        inputs = make_inputs(rows, hidden, dtype, device, torch.float32 if param_fp32 else dtype)
        grad_out = torch.randn(inputs[0].shape, device=device).to(dtype)
        seed = seed_that_op_will_draw(3, device)
        out, grads = run_with_grads(
            lambda x, r, w, b, xb: add_layer_norm(x, r, w, b, x_bias=xb, dropout_p=dropout_p), inputs, grad_out)
        assert out.dtype == dtype
        mask = reference.dropout_keep_mask(seed, inputs[0].shape, dropout_p, device) if dropout_p else None

        def ref_fn(x, r, w, b, xb):
            # plain PyTorch in low precision: parameters cast to the activation dtype first
            return reference.add_layer_norm(x, r, w.to(x.dtype), b.to(x.dtype), x_bias=xb.to(x.dtype),
                                            dropout_p=dropout_p, keep_mask=mask)

        ref64, ref64_grads = run_with_grads(ref_fn, [t.double() for t in inputs], grad_out.double())
        ref_lp, ref_lp_grads = run_with_grads(ref_fn, inputs, grad_out)
        assert_lowp_close(f"{dtype} out", out, ref64, ref_lp, dtype)
        for name, g, g64, glp in zip(NAMES, grads, ref64_grads, ref_lp_grads):
            assert g.dtype == inputs[NAMES.index(name)].dtype
            assert_lowp_close(f"{dtype} grad {name}", g, g64, glp, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_leading_dims_and_noncontiguous(device):
    torch.manual_seed(0)
    x, r, w, b, xb = make_inputs(24, 48, torch.float32, device, lead=4)
    out = add_layer_norm(x, r, w, b, x_bias=xb)
    assert out.shape == x.shape
    # the same values laid out transposed in memory
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)
    rt = r.transpose(0, 1).contiguous().transpose(0, 1)
    assert not xt.is_contiguous()
    torch.testing.assert_close(add_layer_norm(xt, rt, w, b, x_bias=xb), out, rtol=0, atol=0)
    ref = reference.add_layer_norm(x.double(), r.double(), w.double(), b.double(), x_bias=xb.double())
    assert max_err(out, ref) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_reproducible_and_kept_fraction(device):
    x, r, w, b, xb = make_inputs(512, 768, torch.float32, device)
    torch.manual_seed(7)
    a = add_layer_norm(x, r, w, b, x_bias=xb, dropout_p=0.25)
    torch.manual_seed(7)
    a2 = add_layer_norm(x, r, w, b, x_bias=xb, dropout_p=0.25)
    c = add_layer_norm(x, r, w, b, x_bias=xb, dropout_p=0.25)  # the generator moved on
    assert torch.equal(a, a2)
    assert not torch.equal(a, c)
    for p in (0.1, 0.5, 0.9):
        xg = x.clone().requires_grad_(True)
        add_layer_norm(xg, r, w, b, dropout_p=p).backward(torch.randn_like(x))
        kept = (xg.grad != 0).double().mean().item()
        # 393k draws: the standard error of the fraction is below 0.001
        assert abs(kept - (1 - p)) < 0.005, (p, kept)


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_backward_uses_forward_mask(device):
    torch.manual_seed(1)
    x, r, w, b, xb = make_inputs(64, 96, torch.float32, device)
    xg = x.clone().requires_grad_(True)
    seed = seed_that_op_will_draw(5, device)
    add_layer_norm(xg, r, w, b, x_bias=xb, dropout_p=0.3).backward(torch.randn_like(x))
    mask = reference.dropout_keep_mask(seed, x.shape, 0.3, device)
    assert torch.all(xg.grad[~mask] == 0)
    assert torch.all(xg.grad[mask] != 0)


@requires_cuda
def test_cpu_and_cuda_draw_the_same_mask():
    x, r, w, b, xb = make_inputs(33, 200, torch.float32, "cpu")
    seed = seed_that_op_will_draw(9, "cuda")
    out_cuda = add_layer_norm(*(t.cuda() for t in (x, r, w, b)), x_bias=xb.cuda(), dropout_p=0.4)
    mask = reference.dropout_keep_mask(seed, x.shape, 0.4)
    ref = reference.add_layer_norm(x.double(), r.double(), w.double(), b.double(), x_bias=xb.double(),
                                   dropout_p=0.4, keep_mask=mask)
    assert max_err(out_cuda.cpu(), ref) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_parameter_gradients_are_deterministic(device):
    x, r, w, b, xb = make_inputs(1000, 384, torch.float32, device)
    g = torch.randn_like(x)
    results = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_(True) for t in (x, r, w, b, xb)]
        add_layer_norm(leaves[0], leaves[1], leaves[2], leaves[3], x_bias=leaves[4]).backward(g)
        results.append([t.grad for t in leaves])
    for a, b2 in zip(*results):
        assert torch.equal(a, b2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_opcheck(device, dropout_p):
    x, r, w, b, xb = make_inputs(6, 40, torch.float32, device)
    seed = torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device) if dropout_p else None
    args = (x.requires_grad_(True), r.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True),
            xb.requires_grad_(True), seed, 1e-12, dropout_p)
    torch.library.opcheck(torch.ops.bertfast.add_layer_norm_fwd.default, args)
    out, mean, rstd = torch.ops.bertfast.add_layer_norm_fwd(*[a.detach() if torch.is_tensor(a) else a for a in args])
    torch.library.opcheck(torch.ops.bertfast.add_layer_norm_bwd.default,
                          (torch.randn_like(out), x.detach(), r.detach(), w.detach(), xb.detach(), mean, rstd, seed,
                           dropout_p, True))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    x, r, w, b, xb = make_inputs(10, 64, torch.float32, device)

    def block(x, r, w, b, xb):
        return add_layer_norm(x * 2, r, w, b, x_bias=xb).sum(-1)

    compiled = torch.compile(block, fullgraph=True)
    eager_leaves = [t.clone().requires_grad_(True) for t in (x, r, w, b, xb)]
    comp_leaves = [t.clone().requires_grad_(True) for t in (x, r, w, b, xb)]
    block(*eager_leaves).sum().backward()
    out = compiled(*comp_leaves)
    out.sum().backward()
    torch.testing.assert_close(out, block(*eager_leaves))
    for a, c in zip(eager_leaves, comp_leaves):
        torch.testing.assert_close(c.grad, a.grad)
    # with dropout it compiles too and keeps the rate
    drop = torch.compile(lambda x: add_layer_norm(x, r, w, b, dropout_p=0.5), fullgraph=True)
    assert drop(x).shape == x.shape


def _bad_cases(device):
    x, r, w, b, xb = make_inputs(4, 8, torch.float32, device)
    return [
        ((x, r[:, :4], w, b), {}, ValueError, "residual"),
        ((x, r, w[:4], b), {}, ValueError, "weight"),
        ((x, r, w, b[:3]), {}, ValueError, "bias"),
        ((x, r, w, b), {"x_bias": xb[:2]}, ValueError, "x_bias"),
        ((x, r.double(), w, b), {}, TypeError, "residual"),
        ((x.long(), r, w, b), {}, TypeError, "x"),
        ((x.bfloat16(), r.bfloat16(), w.half(), b.half()), {}, TypeError, "weight"),
        ((x, r, w, b.bfloat16()), {}, TypeError, "bias"),
        ((x, r, w, b, 0.0), {}, ValueError, "eps"),
        ((x, r, w, b, -1.0), {}, ValueError, "eps"),
        ((x, r, w, b), {"dropout_p": 1.0}, ValueError, "dropout_p"),
        ((x, r, w, b), {"dropout_p": -0.1}, ValueError, "dropout_p"),
        ((x[..., :0], r[..., :0], w[:0], b[:0]), {}, ValueError, "hidden >= 1"),  # 0 rows are fine (as torch)
        ((x.new_tensor(1.0), r.new_tensor(1.0), w, b), {}, ValueError, "x"),
        ((x, r, w, b.to("meta")), {}, ValueError, "bias"),
        (([1.0], r, w, b), {}, TypeError, "x"),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_raises_clear_errors(device):
    for args, kwargs, exc, fragment in _bad_cases(device):
        with pytest.raises(exc, match=fragment):
            add_layer_norm(*args, **kwargs)


def test_direct_op_call_checks_in_cpp():
    x, r, w, b, xb = make_inputs(4, 8, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="residual"):
        torch.ops.bertfast.add_layer_norm_fwd(x, r[:, :4], w, b, None, None, 1e-5, 0.0)
    with pytest.raises(RuntimeError, match="seed"):
        torch.ops.bertfast.add_layer_norm_fwd(x, r, w, b, None, None, 1e-5, 0.5)
    with pytest.raises(RuntimeError, match="weight"):
        torch.ops.bertfast.add_layer_norm_fwd(x, r, w[:3], b, None, None, 1e-5, 0.0)


@requires_cuda
def test_cuda_tensor_and_cpu_weight_is_an_error():
    x, r, w, b, _ = make_inputs(4, 8, torch.float32, "cuda")
    with pytest.raises(ValueError, match="weight"):
        add_layer_norm(x, r, w.cpu(), b)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lead=st.lists(st.integers(0, 5), min_size=0, max_size=2),
    hidden=st.integers(0, 70),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int32]),
    param_kind=st.sampled_from(["same", "fp32", "wrong_len", "wrong_dtype"]),
    eps=st.sampled_from([1e-12, 1e-5, 0.0, -1.0]),
    dropout_p=st.sampled_from([0.0, 0.3, 1.0, -0.5]),
    with_x_bias=st.booleans(),
)
def test_fuzz_correct_or_clean_error(lead, hidden, dtype, param_kind, eps, dropout_p, with_x_bias):
    shape = tuple(lead) + (hidden,)
    x = (torch.randn(shape) * 3).to(dtype)
    r = torch.randn(shape).to(dtype)
    p_dtype = {"same": dtype, "fp32": torch.float32, "wrong_len": dtype, "wrong_dtype": torch.float64}[param_kind]
    p_len = hidden + 1 if param_kind == "wrong_len" else hidden
    w, b, xb = (torch.randn(p_len).to(p_dtype) for _ in range(3))
    seed = seed_that_op_will_draw(1)
    try:
        out = add_layer_norm(x, r, w, b, eps, x_bias=xb if with_x_bias else None, dropout_p=dropout_p)
    except (ValueError, TypeError) as e:
        assert "add_layer_norm" in str(e)
        return
    assert dtype in (torch.float32, torch.bfloat16, torch.float16) and hidden > 0 and eps > 0
    mask = reference.dropout_keep_mask(seed, shape, dropout_p) if dropout_p else None
    ref = reference.add_layer_norm(x.double(), r.double(), w.double(), b.double(), eps,
                                   x_bias=xb.double() if with_x_bias else None, dropout_p=dropout_p, keep_mask=mask)
    tol = 1e-4 if dtype == torch.float32 else 0.1
    assert out.shape == shape and out.dtype == dtype
    if out.numel() == 0:  # no rows: an empty result, as torch's layer_norm gives
        return
    assert max_err(out, ref) <= tol * max(1.0, ref.abs().max().item()), max_err(out, ref)
