"""Loads the compiled library `bertfast._C`, which registers the ops under torch.ops.bertfast,
after checking that it was built for the torch that is running, and checks at call time that a
CUDA build has kernels for the GPU at hand: two mismatches that otherwise surface as
`undefined symbol` and "no kernel image is available"."""
import functools
import importlib
import re

import torch

_loaded = False

REBUILD_HINT = (
    "Rebuild bertfast against the installed torch: `pip install --no-build-isolation -e .` "
    "(or `make build`) in a source checkout, or `make wheel` and install the wheel it writes "
    "to wheelhouse/; or install the torch it was built with."
)


def _major_minor(version):
    match = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def _recorded_build():
    """bertfast/_build_info.py, written by setup.py; None for a checkout never built with it."""
    try:
        return importlib.import_module("bertfast._build_info")
    except ImportError:
        return None


def torch_mismatch(built_torch, built_cuda, running_torch, running_cuda):
    """Why a build made against (built_torch, built_cuda) cannot load in the running torch, or
    None when it can. The C++ ABI changes between torch minor releases; a CUDA build links
    libcudart.so.<CUDA major> and torch's CUDA libraries."""
    if _major_minor(built_torch) != _major_minor(running_torch):
        return (f"this bertfast build was compiled against torch {built_torch}, but torch "
                f"{running_torch} is installed; a build only loads in the torch minor release it "
                "was compiled against.")
    if built_cuda and not running_cuda:
        return (f"this bertfast build has CUDA {built_cuda} kernels, but the installed torch "
                f"{running_torch} is a CPU-only build. Install a CUDA {built_cuda} build of torch, "
                "or build bertfast's CPU-only wheel (`make wheel-cpu`).")
    if built_cuda and _major_minor(built_cuda)[0] != _major_minor(running_cuda)[0]:
        return (f"this bertfast build was compiled with CUDA {built_cuda}, but the installed "
                f"torch {running_torch} uses CUDA {running_cuda}.")
    return None


def _check_torch_matches_build():
    """Compare the running torch with the one recorded at build time, before loading symbols."""
    record = _recorded_build()
    if record is None:
        return
    why = torch_mismatch(record.TORCH_VERSION, record.CUDA_VERSION, torch.__version__, torch.version.cuda)
    if why:
        raise ImportError(f"bertfast {record.VERSION}: {why} {REBUILD_HINT}")


def load_library():
    """Import bertfast._C once, with a message that says what to do when it cannot load."""
    global _loaded
    if _loaded:
        return
    _check_torch_matches_build()
    try:
        importlib.import_module("bertfast._C")
    except ImportError as e:
        text = str(e)
        if "undefined symbol" in text or ".so" in text:
            # A symbol or library of another torch/CUDA: the record above was missing or stale.
            record = _recorded_build()
            built = f"torch {record.TORCH_VERSION}" if record else "another torch"
            raise ImportError(
                f"bertfast's compiled extension does not fit the installed torch {torch.__version__} "
                f"(CUDA {torch.version.cuda or 'none'}): it was built against {built} ({text}). "
                f"{REBUILD_HINT}") from e
        raise ImportError(
            f"bertfast's compiled extension could not be loaded ({e}). Build it with "
            "`pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`) "
            f"against the installed torch {torch.__version__}."
        ) from e
    _loaded = True


@functools.lru_cache(maxsize=None)
def build_info():
    """How the loaded library was built, as it says itself: torch version, CUDA version (None
    for a CPU-only build) and the TORCH_CUDA_ARCH_LIST it was compiled for (None likewise)."""
    load_library()
    torch_version, cuda_version, arch_list = torch.ops.bertfast.build_info()
    return {"torch": torch_version, "cuda": cuda_version or None, "archs": arch_list or None}


# torch.compile evaluates functions marked assume_constant_result once while tracing, instead
# of tracing into them (a custom op returning str[] would break a fullgraph compile).
@torch.compiler.assume_constant_result
def has_cuda_kernels():
    return build_info()["cuda"] is not None


def parse_arch_list(arch_list):
    """TORCH_CUDA_ARCH_LIST ("8.0;9.0+PTX", also space-separated) -> [(major, minor, suffix,
    has_ptx)], suffix "" or "a"/"f" (arch- and family-specific targets). Names torch also accepts
    ("Ampere") are not parsed: returns None, and the caller cannot judge."""
    parsed = []
    for token in re.split(r"[;\s]+", (arch_list or "").strip()):
        if not token:
            continue
        match = re.fullmatch(r"(\d+)\.(\d+)([af]?)(\+PTX)?", token)
        if match is None:
            return None
        parsed.append((int(match.group(1)), int(match.group(2)), match.group(3), bool(match.group(4))))
    return parsed


def arch_runs_on(capability, arch_list):
    """Whether code built for `arch_list` runs on a GPU of compute capability (major, minor).
    SASS for X.y runs on X.z with z >= y (an "a" target only on X.y itself); plain PTX for X.y
    is JIT-compiled by the driver for any GPU of capability >= X.y. None when arch_list is not
    numeric."""
    parsed = parse_arch_list(arch_list)
    if parsed is None:
        return None
    gpu_major, gpu_minor = capability
    for major, minor, suffix, has_ptx in parsed:
        if suffix == "a":
            sass = (major, minor) == (gpu_major, gpu_minor)
        else:
            sass = major == gpu_major and minor <= gpu_minor
        # Arch- and family-specific PTX ("9.0a+PTX") is not forward-compatible.
        if sass or (has_ptx and not suffix and (major, minor) <= (gpu_major, gpu_minor)):
            return True
    return False


_arch_problems = {}  # device index -> _cuda_arch_problem's answer


@torch.compiler.assume_constant_result
def _cuda_arch_problem(device_index):
    """Why this build's CUDA kernels cannot run on GPU `device_index` (None: the current one),
    or None. Cached per device: the answer does not change while the process lives."""
    if device_index is None:
        device_index = torch.cuda.current_device()
    if device_index not in _arch_problems:
        _arch_problems[device_index] = _describe_arch_problem(device_index)
    return _arch_problems[device_index]


def _describe_arch_problem(device_index):
    archs = build_info()["archs"]
    capability = tuple(torch.cuda.get_device_capability(device_index))
    if arch_runs_on(capability, archs) is not False:
        return None
    sm = f"{capability[0]}.{capability[1]}"
    return (f"GPU {device_index} ({torch.cuda.get_device_name(device_index)}) has compute capability "
            f"{sm} (sm_{capability[0]}{capability[1]}), but this bertfast build has kernels only for "
            f"TORCH_CUDA_ARCH_LIST=\"{archs}\" (SASS runs on the same major arch at an equal or higher "
            f"minor, PTX on any GPU at least as new). Rebuild with its arch: "
            f"TORCH_CUDA_ARCH_LIST=\"{archs};{sm}\" pip install --no-build-isolation -e . "
            f"(or TORCH_CUDA_ARCH_LIST=\"{archs};{sm}\" make wheel).")


def check_device(tensor, op_name):
    """A clear error when a CUDA tensor meets a build without CUDA kernels, or without kernels
    for that GPU's arch (instead of "no kernel image is available")."""
    if tensor.device.type == "cuda":
        if not has_cuda_kernels():
            raise RuntimeError(
                f"{op_name}: got a CUDA tensor, but this bertfast build has no CUDA kernels "
                f"(built with BERTFAST_FORCE_CPU, without nvcc, or against a CPU-only torch). "
                "Rebuild with a CUDA build of torch and nvcc available: `pip install --no-build-isolation -e .`."
            )
        problem = _cuda_arch_problem(tensor.device.index)
        if problem:
            raise RuntimeError(f"{op_name}: {problem}")
    if tensor.device.type not in ("cpu", "cuda", "meta"):
        raise RuntimeError(f"{op_name}: tensors on {tensor.device} are not supported (CPU and CUDA only)")


def registered_ops():
    """Names of the ops the loaded library registered under torch.ops.bertfast, sorted."""
    load_library()
    prefix = "bertfast::"
    return sorted(name[len(prefix):] for name in torch._C._dispatch_get_all_op_names() if name.startswith(prefix))


def cpu_capability():
    """The CPU kernel variant this machine runs: "AVX512", "AVX2" or "DEFAULT" (baseline
    x86-64). ATEN_CPU_CAPABILITY=avx2 or =default caps it, as it caps torch's own kernels."""
    load_library()
    return torch.ops.bertfast.cpu_capability()


def cpu_cache_stats():
    """The cache of large CPU output blocks that bertfast's ops draw from (fresh pages cost a
    page fault each on first touch; training asks for the same shapes every step):
    {"cached_bytes", "limit_bytes", "hits", "misses"}. Set BERTFAST_CPU_CACHE_MB before the
    first op call to change the limit (0 turns the cache off)."""
    load_library()
    cached, limit, hits, misses = torch.ops.bertfast.cpu_cache_stats()
    return {"cached_bytes": cached, "limit_bytes": limit, "hits": hits, "misses": misses}


def empty_cpu_cache():
    """Frees the cached CPU output blocks (blocks still in use return to the cache when freed)."""
    load_library()
    torch.ops.bertfast.empty_cpu_cache()
