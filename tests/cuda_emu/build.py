"""Builds bertfast's CUDA kernel sources for the CPU emulation of cuda_emu.h.

The .cu/.cuh files are copied into a cache folder with a few textual rewrites (rewrite_cuda_source;
line numbers stay, kernel bodies are not edited):
  - `kernel<<<grid, block, smem, stream>>>(args);` becomes
    `bertfast_emu::launch(bertfast_emu::kernel_id(kernel), [&] { kernel(args); }, grid, block, smem, stream);`
  - `extern __shared__ [__align__(n)] T name[];` becomes a pointer to the launch's dynamic shared memory;
  - a kernel declared `__launch_bounds__(max_threads, ...)` checks its block size first thing;
  - a static `__shared__` array is poisoned (NaN) when a block first reaches it.
They are compiled with g++ (under UBSan when it links) together with emu_shim.cpp (a C ABI for
ctypes) into one shared library, cached under a hash of every input.
"""
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CSRC = os.path.join(ROOT, "csrc")

# UBSan checks what a GPU would fault on or get wrong: a 16-byte load from an address that is
# not 16-byte aligned ("misaligned address" on the device), out-of-bounds indexing of fixed
# arrays, overflowing shifts and signed arithmetic. Reports go to stderr, which
# EmulatedKernels captures around each call.
SANITIZE = ["-fsanitize=undefined", "-fno-sanitize=vptr"]

_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w\s]+?)\s+(\w+)\s*\[\s*\]\s*;")
_STATIC_SHARED = re.compile(r"(?<!extern )__shared__\s+([\w:<>, ]+?)\s+(\w+)((?:\[[^\]]+\])+)\s*;")


def _kernel_start(text, end):
    """Start of the kernel expression that ends just before `end` (`name<targs>` or `name`)."""
    i = end
    while text[i - 1].isspace():
        i -= 1
    if text[i - 1] == ">":  # template arguments: walk back to the matching '<'
        depth = 0
        while True:
            i -= 1
            depth += {">": 1, "<": -1}.get(text[i], 0)
            if depth == 0:
                break
    while text[i - 1].isalnum() or text[i - 1] in "_:":
        i -= 1
    return i


def _matching_paren(text, i):
    """Index just after the ')' matching the '(' at i."""
    depth = 0
    for j in range(i, len(text)):
        depth += {"(": 1, ")": -1}.get(text[j], 0)
        if depth == 0:
            return j + 1
    raise ValueError("unbalanced parentheses in a kernel launch")


def _check_launch_bounds(text):
    """Starts the body of each `__launch_bounds__(max_threads, ...)` kernel with a check that the
    block has at most max_threads threads (a larger block fails to launch on a GPU)."""
    out, pos = [], 0
    while (at := text.find("__launch_bounds__(", pos)) >= 0:
        args_start = at + len("__launch_bounds__")
        args_end = _matching_paren(text, args_start)
        depth, max_threads = 0, text[args_start + 1 : args_end - 1]
        for i, c in enumerate(max_threads):  # the first top-level argument
            depth += {"(": 1, ")": -1, "<": 1, ">": -1}.get(c, 0)
            if c == "," and depth == 0:
                max_threads = max_threads[:i]
                break
        body = text.index("{", args_end) + 1
        out.append(text[pos:body] + f" bertfast_emu::check_launch_bounds({max_threads.strip()});")
        pos = body
    out.append(text[pos:])
    return "".join(out)


def rewrite_cuda_source(text):
    """The rewrites of the module docstring; line numbers are kept."""
    text = _check_launch_bounds(text)
    # a read of a static shared array before any write in the block sees NaN, as the dynamic
    # shared memory does, not the previous block's data
    text = _STATIC_SHARED.sub(
        lambda m: f"__shared__ {m.group(1)} {m.group(2)}{m.group(3)}; "
                  f"bertfast_emu::poison_shared({m.group(2)}, sizeof({m.group(2)}));", text)
    text = _EXTERN_SHARED.sub(
        lambda m: f"{m.group(1)}* const {m.group(2)} = static_cast<{m.group(1)}*>(bertfast_emu::dynamic_smem());",
        text)
    out, pos = [], 0
    while (open_ := text.find("<<<", pos)) >= 0:
        start = _kernel_start(text, open_)
        close = text.index(">>>", open_)
        config = text[open_ + 3 : close]
        args_open = close + 3
        while text[args_open].isspace():
            args_open += 1
        args_end = _matching_paren(text, args_open)
        kernel = text[start:open_].strip()
        out.append(text[pos:start])
        call = f"{kernel}{text[args_open:args_end]}"  # the argument list keeps its newlines
        out.append(f"bertfast_emu::launch(bertfast_emu::kernel_id({kernel}), [&] {{ {call}; }}, {config})")
        pos = args_end
    out.append(text[pos:])
    return "".join(out)


def cuda_include_dir():
    """A folder with the CUDA runtime and fp16/bf16 headers: the toolkit's, else an nvidia pip wheel's."""
    candidates = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    candidates = [os.path.join(c, "include") for c in candidates if c]
    for site in sys.path:
        candidates += glob.glob(os.path.join(site, "nvidia", "*", "include"))
    for c in candidates:
        # the runtime wheel alone lacks crt/host_defines.h: a toolkit (or the nvcc wheel) has it
        if all(os.path.exists(os.path.join(c, h))
               for h in ("cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h", os.path.join("crt", "host_defines.h"))):
            return c
    return None


def _sanitizer_flags(compiler):
    """SANITIZE when the compiler can link UBSan's runtime, else none (the checks are a bonus)."""
    with tempfile.TemporaryDirectory() as d:
        probe = os.path.join(d, "probe.cpp")
        with open(probe, "w") as f:
            f.write("int f(int x) { return x << 1; }\n")
        r = subprocess.run([compiler, *SANITIZE, "-fPIC", "-shared", probe, "-o", os.path.join(d, "probe.so")],
                           capture_output=True)
    return SANITIZE if r.returncode == 0 else []


def _sources():
    kernels = sorted(glob.glob(os.path.join(CSRC, "**", "*.cu"), recursive=True))
    kernels.append(os.path.join(HERE, "selftest_kernels.cu"))  # broken on purpose: the emulation must catch them
    headers = sorted(glob.glob(os.path.join(CSRC, "**", "*.cuh"), recursive=True) +
                     glob.glob(os.path.join(CSRC, "**", "*.h"), recursive=True))
    emu = [os.path.join(HERE, f) for f in ("cuda_emu.h", "emu_shim.cpp", "build.py")]
    return kernels, headers, emu


def build_library(cache_root=None, compiler="g++"):
    """Path of the emulation library, built if its inputs changed. Raises on a compile error."""
    include = cuda_include_dir()
    if include is None:
        raise FileNotFoundError("no CUDA headers (cuda_runtime.h, cuda_fp16.h, crt/host_defines.h) found")
    kernels, headers, emu = _sources()
    digest = hashlib.sha256(include.encode())
    for path in kernels + headers + emu:
        digest.update(path.encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    cache_root = cache_root or os.path.join(tempfile.gettempdir(), "bertfast_cuda_emu")
    folder = os.path.join(cache_root, digest.hexdigest()[:16])
    lib = os.path.join(folder, "libbertfast_cuda_emu.so")
    if os.path.exists(lib):
        return lib
    os.makedirs(cache_root, exist_ok=True)
    work = tempfile.mkdtemp(dir=cache_root)
    src = os.path.join(work, "csrc")

    def copied(path):  # where a source goes in the build folder
        return os.path.join(src, os.path.relpath(path, CSRC) if path.startswith(CSRC) else os.path.basename(path))

    for path in kernels + headers:
        dst = copied(path)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(path) as f:
            text = f.read()
        with open(dst, "w") as f:
            f.write(rewrite_cuda_source(text) if path.endswith((".cu", ".cuh")) else text)
    sanitize = _sanitizer_flags(compiler)
    flags = ["-std=c++20", "-O1", "-g0", "-fPIC", "-DBERTFAST_CUDA_EMU", "-DBERTFAST_WITH_CUDA", f"-I{include}",
             f"-I{HERE}", f"-I{src}", "-include", "cuda_emu.h", "-Wno-attributes", *sanitize]
    units = [copied(k) for k in kernels] + [os.path.join(HERE, "emu_shim.cpp")]

    def compile_unit(unit):
        obj = os.path.join(work, os.path.basename(unit) + ".o")
        cmd = [compiler, *flags, "-x", "c++", "-c", unit, "-o", obj]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"compiling {unit} failed:\n{' '.join(cmd)}\n{r.stderr[-6000:]}")
        return obj

    with ThreadPoolExecutor(max_workers=max(1, min(len(units), os.cpu_count() or 1))) as pool:
        objects = list(pool.map(compile_unit, units))
    # -Bsymbolic: the cudaGetLastError etc. defined here win over a libcudart torch may have loaded
    tmp_lib = os.path.join(work, "lib.so")
    r = subprocess.run([compiler, "-shared", "-Wl,-Bsymbolic", *sanitize, "-o", tmp_lib, *objects], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError(f"linking the emulation library failed:\n{r.stderr[-6000:]}")
    os.makedirs(folder, exist_ok=True)
    os.replace(tmp_lib, lib)  # atomic: a concurrent build finds either nothing or a whole library
    shutil.rmtree(work, ignore_errors=True)
    return lib
