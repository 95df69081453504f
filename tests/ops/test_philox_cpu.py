"""The CPU dropout draws (csrc/common/philox_cpu.h: 8 Philox counters per AVX2 vector, compared and
transposed into element order in registers) equal philox.h's scalar dropout_keep, which the CUDA
kernels and bertfast.ops.reference draw: counters whose low word wraps, every start within a
counter, lengths around the 32-element blocks (philox_cpu_check.cpp, compiled with g++ per copy)."""
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _cpu_has(flag):
    try:
        with open("/proc/cpuinfo") as f:
            return flag in f.read().split()
    except OSError:
        return False


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.parametrize("copy", ["default", "avx2"])
def test_vector_philox_draws_equal_the_scalar_ones(copy, tmp_path):
    flags = ["-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma"] if copy == "avx2" else []
    if copy == "avx2" and not _cpu_has("avx2"):
        pytest.skip("this CPU has no AVX2")
    binary = tmp_path / "check"
    subprocess.run(["g++", "-O2", "-std=c++17", *flags, os.path.join(HERE, "philox_cpu_check.cpp"), "-o", str(binary)],
                   check=True, capture_output=True, text=True)
    proc = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
