"""Loads the compiled library `bertfast._C`, which registers the ops under torch.ops.bertfast."""
import importlib

import torch

_loaded = False


def load_library():
    """Import bertfast._C once, with a message that says what to do when it is missing."""
    global _loaded
    if _loaded:
        return
    try:
        importlib.import_module("bertfast._C")
    except ImportError as e:
        raise ImportError(
            f"bertfast's compiled extension could not be loaded ({e}). Build it with "
            "`pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`) "
            f"against the installed torch {torch.__version__}."
        ) from e
    _loaded = True


def build_info():
    """(torch version, CUDA version, arch list) the library was built with; '' where CPU-only."""
    load_library()
    torch_version, cuda_version, arch_list = torch.ops.bertfast.build_info()
    return {"torch": torch_version, "cuda": cuda_version or None, "archs": arch_list or None}


def has_cuda_kernels():
    return build_info()["cuda"] is not None


def check_device(tensor, op_name):
    """A clear error when a CUDA tensor meets a build without CUDA kernels."""
    if tensor.device.type == "cuda" and not has_cuda_kernels():
        raise RuntimeError(
            f"{op_name}: got a CUDA tensor, but this bertfast build has no CUDA kernels "
            f"(built with BERTFAST_FORCE_CPU, without nvcc, or against a CPU-only torch). "
            "Rebuild with a CUDA build of torch and nvcc available: `pip install --no-build-isolation -e .`."
        )
    if tensor.device.type not in ("cpu", "cuda", "meta"):
        raise RuntimeError(f"{op_name}: tensors on {tensor.device} are not supported (CPU and CUDA only)")
