"""Smoke-test an installed bertfast (a wheel, or any install): run it from outside a checkout.

    python scripts/smoke_test_wheel.py [--declared-from csrc/bertfast.cpp] [--not-under DIR]

Checks that bertfast imports, that every op declared in csrc/bertfast.cpp is registered with
kernels for each backend the build has (CPU; CUDA too for a CUDA build), and that add_layer_norm
equals its plain-PyTorch reference on CPU (and on every GPU present, for a CUDA build). Without
--declared-from, the op list recorded at build time is used. Exits non-zero on any failure.
"""
import argparse
import os
import re
import sys

import torch

# Ops that take no tensors have one kernel for every backend (CompositeImplicitAutograd).
_BACKEND_FREE = "CompositeImplicitAutograd"


def declared_ops_in(source):
    with open(source) as f:
        return re.findall(r'm\.def\(\s*"(\w+)\(', f.read())


def check_ops(bertfast, declared):
    from bertfast import _library

    registered = _library.registered_ops()
    missing = sorted(set(declared) - set(registered))
    # Ops defined in Python (torch.library.custom_op, composites of the C++ ops) are not in
    # csrc/bertfast.cpp; anything else registered but undeclared is a mistake.
    extra = [n for n in sorted(set(registered) - set(declared))
             if not torch._C._dispatch_has_kernel_for_dispatch_key(f"bertfast::{n}", "CompositeExplicitAutograd")]
    if missing or extra:
        raise AssertionError(f"ops declared but not registered: {missing}; registered but not declared: {extra}")
    backends = ["CPU"] + (["CUDA"] if bertfast.has_cuda_kernels() else [])
    for name in registered:
        qualname = f"bertfast::{name}"
        if any(torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key)
               for key in (_BACKEND_FREE, "CompositeExplicitAutograd")):
            continue
        for backend in backends:
            if not torch._C._dispatch_has_kernel_for_dispatch_key(qualname, backend):
                raise AssertionError(f"op {qualname} has no {backend} kernel")
    print(f"ok: {len(registered)} ops registered with kernels for {', '.join(backends)}: {', '.join(registered)}")


def check_add_layer_norm(bertfast, device):
    from bertfast.ops import reference
    from bertfast.ops import add_layer_norm

    generator = torch.Generator().manual_seed(0)
    rows, hidden = 37, 203  # awkward sizes on purpose
    x, residual = (torch.randn(rows, hidden, generator=generator) for _ in range(2))
    weight, bias, x_bias = (torch.randn(hidden, generator=generator) for _ in range(3))
    expected = reference.add_layer_norm(*(t.double() for t in (x, residual, weight, bias)), 1e-5,
                                        x_bias=x_bias.double())
    got = add_layer_norm(*(t.to(device) for t in (x, residual, weight, bias)), 1e-5, x_bias=x_bias.to(device))
    err = (got.cpu().double() - expected).abs().max().item()
    if not err < 1e-4:
        raise AssertionError(f"add_layer_norm on {device}: max error {err:.3e} vs the float64 reference")
    print(f"ok: add_layer_norm on {device} matches the reference (max error {err:.1e})")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--declared-from", help="csrc/bertfast.cpp of the source the wheel was built from")
    parser.add_argument("--not-under", help="fail if bertfast is imported from under this directory")
    args = parser.parse_args()

    import bertfast
    from bertfast import _library

    location = os.path.dirname(os.path.abspath(bertfast.__file__))
    if args.not_under and location.startswith(os.path.abspath(args.not_under) + os.sep):
        raise AssertionError(f"bertfast was imported from the checkout ({location}), not the installed wheel")
    bertfast.info()
    declared = declared_ops_in(args.declared_from) if args.declared_from else _library._recorded_build().DECLARED_OPS
    check_ops(bertfast, declared)
    devices = ["cpu"]
    if bertfast.has_cuda_kernels() and torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    for device in devices:
        check_add_layer_norm(bertfast, device)
    print(f"smoke test passed: bertfast from {location}")


if __name__ == "__main__":
    sys.exit(main())
