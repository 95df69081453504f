"""The CPU kernels exist in three copies (AVX-512, AVX2, baseline x86-64) and a machine runs
only its best one. Each lower copy is forced here with torch's ATEN_CPU_CAPABILITY knob, in a
fresh process (the choice is made once per process), and must pass every op test too."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPS_TESTS = os.path.dirname(os.path.abspath(__file__))
LEVELS = ["DEFAULT", "AVX2", "AVX512"]


def _capability(env_value):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if env_value:
        env["ATEN_CPU_CAPABILITY"] = env_value
    code = "import torch, bertfast; print(torch.ops.bertfast.cpu_capability())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip(), env


@pytest.mark.skipif(os.environ.get("ATEN_CPU_CAPABILITY") is not None, reason="already running a forced copy")
@pytest.mark.parametrize("forced", ["avx2", "default"])
def test_op_tests_pass_on_the_lower_cpu_kernels(forced, tmp_path):
    native, _ = _capability(None)
    capability, env = _capability(forced)
    # The knob only ever lowers the choice, to exactly the level asked for when the CPU has it.
    expected = forced.upper() if LEVELS.index(forced.upper()) <= LEVELS.index(native) else native
    assert capability == expected
    if capability == native:
        pytest.skip(f"this CPU's best kernels are {native}: the main run already tests them")
    # Inductor's code cache is not keyed by ATEN_CPU_CAPABILITY: kernels it generated for
    # 16-float vectors would run with 8-float ones (and the reverse). A cache of its own:
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor")
    result = subprocess.run([sys.executable, "-m", "pytest", OPS_TESTS, "-q", "-x", "-p", "no:cacheprovider"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
