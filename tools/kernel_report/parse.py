"""Parsers for what the CUDA tools print: `ptxas -v` resource usage and `cuobjdump --dump-sass`
listings, plus demangling and shortening of kernel names. Pure text in, dicts out, so that the
report can be unit-tested on captured samples without nvcc."""
import re
import shutil
import subprocess

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")

_SASS_FUNCTION = re.compile(r"^\s*Function : (\S+)")
# "/*0a70*/   @!P0 LDG.E.128 R4, desc[UR4][R2.64] ;": the opcode with its modifiers.
_SASS_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)")


def parse_ptxas(text):
    """{mangled entry name: {"arch", "registers", "smem_bytes", "stack_bytes", "spill_store_bytes",
    "spill_load_bytes"}} from the stderr of `nvcc -Xptxas -v` (entry functions only: the
    properties of non-inlined device functions are ignored)."""
    kernels, current, in_entry = {}, None, False
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = {"arch": m.group(2), "registers": None, "smem_bytes": 0, "stack_bytes": 0,
                       "spill_store_bytes": 0, "spill_load_bytes": 0}
            kernels[m.group(1)] = current
            in_entry = True
            continue
        m = _PROPERTIES.search(line)
        if m:
            in_entry = current is not None and m.group(1) in kernels and kernels[m.group(1)] is current
            continue
        if current is None or not in_entry:
            continue
        m = _FRAME.search(line)
        if m:
            current["stack_bytes"], current["spill_store_bytes"], current["spill_load_bytes"] = map(int, m.groups())
            continue
        m = _USED.search(line)
        if m:
            current["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            current["smem_bytes"] = int(s.group(1)) if s else 0
    return kernels


def parse_sass(text):
    """{mangled function name: {opcode with modifiers: count}} from `cuobjdump --dump-sass`."""
    functions, current = {}, None
    for line in text.splitlines():
        m = _SASS_FUNCTION.match(line)
        if m:
            current = functions.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        m = _SASS_INSTRUCTION.match(line)
        if m:
            current[m.group(1)] = current.get(m.group(1), 0) + 1
    return functions


def demangle(names):
    """{mangled: demangled} through c++filt when it is installed; names stay as they are otherwise."""
    names = list(names)
    tool = shutil.which("c++filt") or shutil.which("llvm-cxxfilt")
    if not names or tool is None:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    if len(out) != len(names):
        return {n: n for n in names}
    return dict(zip(names, out))


_TYPE_NAMES = {"__nv_bfloat16": "bf16", "__half": "fp16", "float": "f32", "double": "f64"}


def shorten(demangled):
    """'void bertfast::(anonymous namespace)::add_layer_norm_fwd_kernel<__nv_bfloat16, float, 8, 2,
    256>(bertfast::AddLayerNormFwdArgs, int)' -> 'add_layer_norm_fwd_kernel<bf16,f32,8,2,256>'
    (namespaces dropped: kernel names are unique enough, and patterns can anchor on them)."""
    name = demangled.strip()
    if name.startswith("void "):
        name = name[len("void "):]
    # drop the parameter list: the last top-level "(...)"
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and not name.startswith("(anonymous", i):
            cut = i
            break
    name = name[:cut]
    name = name.replace("(anonymous namespace)::", "")
    head, bracket, rest = name.partition("<")
    name = head.rsplit("::", 1)[-1] + bracket + rest  # the kernel's own name, without namespaces
    name = name.replace("bertfast::", "")
    name = re.sub(r"\s*,\s*", ",", name)
    for long, short in _TYPE_NAMES.items():
        name = re.sub(rf"\b{re.escape(long)}\b", short, name)
    return name
