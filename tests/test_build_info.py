"""The build tells the truth about itself: version tags and torch pins of wheels, the torch
check before loading the library, the missing-arch message, and `bertfast info`."""
import importlib.util
import os
import subprocess
import sys
import types

import pytest
import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import bertfast
from bertfast import _library

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_setup_py():
    spec = importlib.util.spec_from_file_location("bertfast_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # main() only runs as __main__
    return module


setup_py = _load_setup_py()


# --- wheel names and requirements (what `make wheel` computes) ---

@pytest.mark.parametrize("torch_version, cuda_version, tag", [
    ("2.14.1+cu130", "13.0", "cu130torch2.14"),
    ("2.14.1", None, "cputorch2.14"),
    ("2.14.1+cpu", None, "cputorch2.14"),
    ("2.11.0+cu128", "12.8", "cu128torch2.11"),
    ("2.15.0.dev20260101+cu130", "13.0", "cu130torch2.15"),
    ("10.2.0", "12.10", "cu1210torch10.2"),
])
def test_local_version_tag(torch_version, cuda_version, tag):
    assert setup_py.local_version_tag(torch_version, cuda_version) == tag
    # A valid PEP 440 local version, which pip and wheel filenames accept.
    assert str(Version(f"{setup_py.base_version()}+{tag}")) == f"{setup_py.base_version()}+{tag}"


def test_base_version_is_the_package_version():
    assert setup_py.base_version() == bertfast.__version__


def test_torch_requirement_pins_the_minor_release_built_against():
    requirement = setup_py.torch_requirement("2.14.1+cu130")
    assert requirement == "torch>=2.14.1,<2.15"
    allowed = SpecifierSet(requirement.removeprefix("torch"))
    assert Version("2.14.1") in allowed and Version("2.14.3") in allowed
    assert Version("2.14.0") not in allowed and Version("2.15.0") not in allowed
    assert allowed.contains("2.14.1+cu130")  # PyTorch's own CUDA builds carry a local tag
    nightly = setup_py.torch_requirement("2.15.0.dev20260101+cu130")
    assert nightly == "torch>=2.15.0.dev20260101,<2.16"
    assert SpecifierSet(nightly.removeprefix("torch")).contains("2.15.0.dev20260101+cu130")


def test_declared_ops_are_the_registered_ops():
    declared = setup_py.declared_ops()
    assert "build_info" in declared and "cpu_capability" in declared and "add_layer_norm_fwd" in declared
    registered = _library.registered_ops()
    assert set(declared) <= set(registered)
    # the rest are composites defined in Python with torch.library.custom_op
    for name in set(registered) - set(declared):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"bertfast::{name}", "CompositeExplicitAutograd"), name


# --- a build against another torch: a clear ImportError before any symbol is resolved ---

def _record(torch_version, cuda_version):
    return types.SimpleNamespace(VERSION="0.1.0+test", TORCH_VERSION=torch_version, CUDA_VERSION=cuda_version,
                                 ARCH_LIST="8.0;9.0" if cuda_version else None)


def test_torch_mismatch_rules():
    assert _library.torch_mismatch("2.14.1+cu130", "13.0", "2.14.3+cu130", "13.2") is None
    assert _library.torch_mismatch("2.14.1", None, "2.14.1+cu130", "13.0") is None  # CPU build, CUDA torch
    assert "torch 2.13.0" in _library.torch_mismatch("2.14.1", None, "2.13.0", None)
    assert "CPU-only" in _library.torch_mismatch("2.14.1+cu130", "13.0", "2.14.1+cpu", None)
    assert "CUDA 12.8" in _library.torch_mismatch("2.14.1+cu130", "13.0", "2.14.1+cu128", "12.8")


def test_import_against_another_torch_names_both_versions(monkeypatch):
    monkeypatch.setattr(_library, "_loaded", False)
    monkeypatch.setattr(_library, "_recorded_build", lambda: _record("2.13.0+cu130", "13.0"))
    imported = []
    monkeypatch.setattr(_library.importlib, "import_module", lambda name: imported.append(name))
    with pytest.raises(ImportError) as excinfo:
        _library.load_library()
    message = str(excinfo.value)
    assert "torch 2.13.0+cu130" in message and f"torch {torch.__version__}" in message
    assert "pip install --no-build-isolation -e ." in message and "make wheel" in message
    assert imported == []  # checked before the library is loaded


def test_cuda_build_under_cpu_torch_is_explained(monkeypatch):
    monkeypatch.setattr(_library, "_loaded", False)
    monkeypatch.setattr(_library, "_recorded_build", lambda: _record(torch.__version__, "13.0"))
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ImportError, match="CPU-only build.*make wheel-cpu"):
        _library.load_library()


def test_undefined_symbol_becomes_a_rebuild_message(monkeypatch):
    def fail(name):
        raise ImportError(f"{ROOT}/bertfast/_C.abi3.so: undefined symbol: _ZN3c1017RegisterOperatorsD1Ev")

    monkeypatch.setattr(_library, "_loaded", False)
    monkeypatch.setattr(_library, "_recorded_build", lambda: None)
    monkeypatch.setattr(_library.importlib, "import_module", fail)
    with pytest.raises(ImportError) as excinfo:
        _library.load_library()
    message = str(excinfo.value)
    assert f"installed torch {torch.__version__}" in message and "undefined symbol" in message
    assert "pip install --no-build-isolation -e ." in message


def test_matching_record_loads():
    record = _library._recorded_build()
    assert record is not None, "setup.py writes bertfast/_build_info.py at build time"
    assert record.TORCH_VERSION == torch.__version__
    assert (record.TORCH_VERSION, record.CUDA_VERSION, record.ARCH_LIST) == tuple(_library.build_info().values())


# --- a GPU whose arch was not compiled: a clear error, not "no kernel image is available" ---

@pytest.mark.parametrize("arch_list, capability, runs", [
    ("8.0;9.0", (8, 0), True),
    ("8.0;9.0", (8, 6), True),      # sm_80 SASS runs on sm_86
    ("8.0;9.0", (7, 5), False),
    ("8.0;9.0", (12, 0), False),
    ("8.0;9.0+PTX", (12, 0), True),  # PTX JIT-compiles on newer GPUs
    ("8.0;9.0+PTX", (7, 5), False),  # but not on older ones
    ("8.0 9.0a", (9, 0), True),
    ("9.0a+PTX", (10, 0), False),    # arch-specific code does not carry forward
    ("10.0f", (10, 3), True),
])
def test_arch_runs_on(arch_list, capability, runs):
    assert _library.arch_runs_on(capability, arch_list) is runs


def test_arch_names_cannot_be_judged():
    assert _library.arch_runs_on((8, 0), "Ampere;Hopper") is None


def _fake_gpu(monkeypatch, archs, capability, name="Tesla T4"):
    monkeypatch.setattr(_library, "build_info", lambda: {"torch": torch.__version__, "cuda": "13.0", "archs": archs})
    calls = []

    def get_capability(index):
        calls.append(index)
        return capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", get_capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: name)
    _library._arch_problems.clear()
    return calls


@pytest.fixture(autouse=True)
def _clear_arch_cache():
    yield
    _library._arch_problems.clear()


def test_missing_arch_message(monkeypatch):
    _fake_gpu(monkeypatch, "8.0;9.0", (7, 5))
    cuda_tensor = types.SimpleNamespace(device=torch.device("cuda", 0))  # no GPU needed
    with pytest.raises(RuntimeError) as excinfo:
        _library.check_device(cuda_tensor, "add_layer_norm")
    message = str(excinfo.value)
    assert message.startswith("add_layer_norm: GPU 0 (Tesla T4) has compute capability 7.5 (sm_75)")
    assert 'TORCH_CUDA_ARCH_LIST="8.0;9.0"' in message
    assert 'TORCH_CUDA_ARCH_LIST="8.0;9.0;7.5" pip install --no-build-isolation -e .' in message


def test_supported_arch_passes_and_is_checked_once_per_device(monkeypatch):
    calls = _fake_gpu(monkeypatch, "8.0;9.0", (8, 6), name="NVIDIA A10")
    for _ in range(3):
        _library.check_device(types.SimpleNamespace(device=torch.device("cuda", 1)), "add_layer_norm")
    assert calls == [1]


def test_device_checks_trace_under_torch_compile(monkeypatch):
    """Every op wrapper calls check_device; with a CUDA tensor under torch.compile(fullgraph=True)
    it must not break the graph (the build facts are compile-time constants)."""
    _fake_gpu(monkeypatch, "8.0;9.0", (9, 0), name="NVIDIA H100")
    cuda_tensor = types.SimpleNamespace(device=torch.device("cuda", 0))
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="eager")
    def checked_add_one(x):
        _library.check_device(cuda_tensor, "add_layer_norm")
        return x + 1

    assert torch.equal(checked_add_one(torch.ones(3)), torch.full((3,), 2.0))


def test_cuda_tensor_on_cpu_build(monkeypatch):
    monkeypatch.setattr(_library, "build_info", lambda: {"torch": torch.__version__, "cuda": None, "archs": None})
    with pytest.raises(RuntimeError, match="no CUDA kernels"):
        _library.check_device(types.SimpleNamespace(device=torch.device("cuda", 0)), "add_layer_norm")


# --- bertfast info ---

def _cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def test_collect_info_fields():
    from bertfast._info import collect_info

    report = collect_info()
    assert report["built_with_torch"] == torch.__version__
    assert report["cuda_kernels"] == bertfast.has_cuda_kernels() == (report["built_with_cuda"] is not None)
    assert (report["archs"] is None) == (not report["cuda_kernels"])
    assert report["torch"] == torch.__version__ and report["torch_cuda"] == torch.version.cuda
    assert report["cuda_available"] == torch.cuda.is_available()
    assert len(report["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert {"build_info", "cpu_capability", "add_layer_norm_fwd", "add_layer_norm_bwd"} <= set(report["ops"])
    assert report["bertfast"].startswith(bertfast.__version__ + "+")
    assert not report["record_stale"]
    assert os.path.samefile(report["location"], os.path.dirname(bertfast.__file__))


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo") or os.uname().machine != "x86_64", reason="x86-64 Linux")
def test_cpu_capability_matches_the_cpu():
    flags = _cpu_flags()
    expected = "AVX2" if {"avx2", "fma", "f16c"} <= flags else "DEFAULT"
    if expected == "AVX2" and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        expected = "AVX512"
    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    if forced == "default" or (forced == "avx2" and expected == "AVX512"):
        expected = forced.upper()
    assert _library.cpu_capability() == expected


def test_info_prints_the_report(capsys):
    bertfast.info()
    out = capsys.readouterr().out
    assert out.startswith(f"bertfast {bertfast.__version__}+")
    for field in ("built with:", f"torch            {torch.__version__}", "archs", "CUDA kernels",
                  "CPU kernels", "running:", "CUDA available"):
        assert field in out


def test_bertfast_info_command():
    result = subprocess.run([sys.executable, "-m", "bertfast", "info"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "built with:" in result.stdout and "running:" in result.stdout
    assert "RuntimeWarning" not in result.stderr


def test_info_is_the_function_and_cli_lists_it(capsys):
    from bertfast.cli import build_parser

    assert callable(bertfast.info) and not isinstance(bertfast.info, types.ModuleType)
    assert "info" in build_parser().format_help()
