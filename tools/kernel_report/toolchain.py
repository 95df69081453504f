"""Finding nvcc and cuobjdump, choosing the torch-free CUDA sources, and compiling them to
cubins with `ptxas -v` in parallel, with a cache keyed by everything that affects the output."""
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

# The nvcc flags of setup.py plus those torch's build adds, so that the cubins are the ones
# the extension ships; -cubin and the arch come per job.
NVCC_FLAGS = ["-O3", "-std=c++20", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr",
              "-DBERTFAST_WITH_CUDA", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
              "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "-Xptxas", "-v"]
_INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)
_TORCH_HEADERS = ("torch/", "ATen/", "c10/", "caffe2/", "pybind11/", "Python.h")


def find_nvcc():
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def find_cuobjdump(nvcc=None):
    """The toolkit's cuobjdump, else the copy the triton wheel (installed with torch) carries."""
    candidates = []
    if nvcc:
        candidates.append(os.path.join(os.path.dirname(nvcc), "cuobjdump"))
    candidates.append(shutil.which("cuobjdump"))
    try:
        import importlib.util
        spec = importlib.util.find_spec("triton")
        if spec and spec.submodule_search_locations:
            for root in spec.submodule_search_locations:
                candidates.append(os.path.join(root, "backends", "nvidia", "bin", "cuobjdump"))
    except (ImportError, ValueError):
        pass
    # triton next to this interpreter's site-packages, even when importing it fails
    candidates += glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages", "triton", "backends",
                                         "nvidia", "bin", "cuobjdump"))
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def local_includes(path, csrc, seen=None):
    """The files `path` includes, transitively, that live under csrc (quoted includes)."""
    seen = set() if seen is None else seen
    with open(path) as f:
        text = f.read()
    for kind, name in _INCLUDE.findall(text):
        if kind != '"':
            continue
        for base in (os.path.dirname(path), csrc):
            candidate = os.path.normpath(os.path.join(base, name))
            if os.path.isfile(candidate):
                if candidate not in seen:
                    seen.add(candidate)
                    local_includes(candidate, csrc, seen)
                break
    return seen


def includes_torch(path, csrc):
    for file in [path, *local_includes(path, csrc)]:
        with open(file) as f:
            if any(name.startswith(_TORCH_HEADERS) for _, name in _INCLUDE.findall(f.read())):
                return True
    return False


def torch_free_sources(csrc):
    """Every .cu under csrc that includes only csrc and CUDA headers (the kernel files)."""
    sources = sorted(glob.glob(os.path.join(csrc, "**", "*.cu"), recursive=True))
    return [s for s in sources if not includes_torch(s, csrc)]


def nvcc_version(nvcc):
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]


def _cache_key(source, csrc, arch, nvcc_id, flags):
    h = hashlib.sha256()
    h.update(f"{nvcc_id}|{arch}|{' '.join(flags)}".encode())
    for file in [source, *sorted(local_includes(source, csrc))]:
        with open(file, "rb") as f:
            h.update(os.path.relpath(file, csrc).encode() + b"\0" + f.read())
    return h.hexdigest()[:20]


def compile_one(source, arch, csrc, build_dir, nvcc, cuobjdump, nvcc_id, flags=NVCC_FLAGS, include_dirs=()):
    """Compile `source` for sm_`arch` into a cubin; returns {"source", "arch", "ptxas", "sass",
    "cached", "error"} with the ptxas -v text and the SASS listing."""
    stem = os.path.splitext(os.path.relpath(source, csrc))[0].replace(os.sep, "__")
    key = _cache_key(source, csrc, arch, nvcc_id, [*flags, *include_dirs])
    base = os.path.join(build_dir, f"{stem}.sm_{arch}.{key}")
    cubin, ptxas_log, sass_file = base + ".cubin", base + ".ptxas.txt", base + ".sass.txt"
    result = {"source": os.path.relpath(source, os.path.dirname(csrc)), "arch": f"sm_{arch}", "cached": True,
              "error": None}
    if not (os.path.isfile(cubin) and os.path.isfile(ptxas_log)):
        result["cached"] = False
        for stale in glob.glob(os.path.join(build_dir, f"{stem}.sm_{arch}.*")):  # older versions of the file
            os.remove(stale)
        cmd = [nvcc, "-cubin", f"-arch=sm_{arch}", *flags, f"-I{csrc}", *(f"-I{d}" for d in include_dirs),
               "-o", cubin + ".tmp", source]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            result["error"] = f"nvcc failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}"
            return result
        with open(ptxas_log, "w") as f:
            f.write(proc.stderr)
        os.replace(cubin + ".tmp", cubin)
    if not os.path.isfile(sass_file):
        proc = subprocess.run([cuobjdump, "--dump-sass", cubin], capture_output=True, text=True)
        if proc.returncode != 0:
            result["error"] = f"cuobjdump failed on {cubin}: {proc.stderr[-2000:]}"
            return result
        with open(sass_file + ".tmp", "w") as f:
            f.write(proc.stdout)
        os.replace(sass_file + ".tmp", sass_file)
    with open(ptxas_log) as f:
        result["ptxas"] = f.read()
    with open(sass_file) as f:
        result["sass"] = f.read()
    return result


def compile_all(sources, archs, csrc, build_dir, jobs, nvcc, cuobjdump, include_dirs=()):
    """compile_one over every (source, arch), `jobs` at a time; results in (source, arch) order."""
    os.makedirs(build_dir, exist_ok=True)
    nvcc_id = nvcc_version(nvcc)
    work = [(s, a) for s in sources for a in archs]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(compile_one, s, a, csrc, build_dir, nvcc, cuobjdump, nvcc_id, NVCC_FLAGS, include_dirs)
                   for s, a in work]
        return [f.result() for f in futures]
