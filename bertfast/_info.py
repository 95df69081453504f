"""What this bertfast is and what it runs on: `bertfast info` (the command) or `bertfast.info()`.

Build facts come from the compiled library itself (the `build_info` op), so they describe the
binary that is loaded, not the source tree. Paste the output into bug reports.
"""
import os
import platform
import sys

import torch

from . import _library


def collect_info():
    """The report as a dict (see `info` for the fields)."""
    from . import __version__

    build = _library.build_info()
    record = _library._recorded_build()  # None: a build made before setup.py recorded itself
    stale = record is not None and (record.TORCH_VERSION, record.CUDA_VERSION, record.ARCH_LIST) != (
        build["torch"], build["cuda"], build["archs"])

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            problem = _library._cuda_arch_problem(index) if build["cuda"] else "no CUDA kernels in this build"
            gpus.append({
                "index": index,
                "name": torch.cuda.get_device_name(index),
                "capability": f"{major}.{minor}",
                "supported": problem is None,
            })
    return {
        "bertfast": record.VERSION if record else __version__,
        # bertfast/_build_info.py describes another build than the library loaded (a build
        # that stopped half-way): rebuild.
        "record_stale": stale,
        "location": os.path.dirname(os.path.abspath(__file__)),
        "built_with_torch": build["torch"],
        "built_with_cuda": build["cuda"],
        "archs": build["archs"],
        "cuda_kernels": build["cuda"] is not None,
        "cpu_capability": _library.cpu_capability(),
        "ops": _library.registered_ops(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpus": gpus,
    }


def format_info(report):
    cpu = {"AVX512": "AVX-512 kernels (F, BW, VL, DQ)", "AVX2": "AVX2 kernels (AVX2+FMA+F16C)",
           "DEFAULT": "baseline x86-64 kernels (no AVX2)"}
    lines = [
        f"bertfast {report['bertfast']} at {report['location']}",
        "built with:",
        f"  torch            {report['built_with_torch']}",
        f"  CUDA             {report['built_with_cuda'] or 'none (CPU-only build)'}",
        f"  archs            {report['archs'] or '-'}",
        f"  CUDA kernels     {'yes' if report['cuda_kernels'] else 'no'}",
        f"  CPU kernels      {cpu.get(report['cpu_capability'], report['cpu_capability'])}",
        f"  ops              {', '.join(report['ops'])}",
    ]
    if report["record_stale"]:
        lines.append("  WARNING          bertfast/_build_info.py describes another build than this library: rebuild")
    lines += [
        "running:",
        f"  python           {report['python']} on {report['platform']}",
        f"  torch            {report['torch']} (CUDA {report['torch_cuda'] or 'none'})",
        f"  CUDA available   {'yes' if report['cuda_available'] else 'no'}",
    ]
    for gpu in report["gpus"]:
        verdict = "kernels present" if gpu["supported"] else "NO kernels for this arch"
        lines.append(f"  GPU {gpu['index']}            {gpu['name']}, compute capability "
                     f"{gpu['capability']}: {verdict}")
    return "\n".join(lines)


def info(file=None):
    """Print the version, the torch/CUDA/archs it was built with, whether CUDA kernels are
    present, the CPU kernel variant in use, and the running torch, CUDA and GPUs.
    `bertfast._info.collect_info()` gives the same as a dict."""
    print(format_info(collect_info()), file=file or sys.stdout)
