"""The kernel report: compile the torch-free CUDA sources for each arch, read registers, shared
memory and spills from ptxas, check the SASS for the instructions each kernel is meant to use,
print a table, optionally write JSON, and exit non-zero when a hot kernel regressed."""
import argparse
import json
import os
import sys

from . import expectations, parse, toolchain

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def analyse(compiled, table=expectations.EXPECTATIONS):
    """Rows (one per kernel and arch) from compile results holding ptxas and SASS text."""
    per_unit = []
    for unit in compiled:
        if unit.get("error"):
            continue
        ptxas = parse.parse_ptxas(unit["ptxas"])
        sass = parse.parse_sass(unit["sass"])
        per_unit.append((unit, ptxas, sass))
    names = parse.demangle({n for _, p, s in per_unit for n in (*p, *s)})
    rows = []
    for unit, ptxas, sass in per_unit:
        for mangled in sorted(set(ptxas) | set(sass), key=lambda n: parse.shorten(names[n])):
            name = parse.shorten(names[mangled])
            info = ptxas.get(mangled, {})
            verdict = expectations.check(name, info, sass.get(mangled, {}), table)
            rows.append({"kernel": name, "arch": unit["arch"], "source": unit["source"],
                         "registers": info.get("registers"), "smem_bytes": info.get("smem_bytes"),
                         "stack_bytes": info.get("stack_bytes"), **verdict, "mangled": mangled})
    return rows


def _status(row):
    if row["problems"]:
        return "FAIL: " + "; ".join(row["problems"])
    if row["warnings"]:
        return "note: " + "; ".join(row["warnings"])
    return "ok"


def print_report(rows, compiled, out=sys.stdout):
    header = ["kernel", "arch", "regs", "smem", "spill", "hot", "needs", "status"]
    table = []
    for r in rows:
        needs = ",".join(f"{label}:{'yes' if ok else 'NO'}" for label, ok in r["requires"].items()) or "-"
        table.append([r["kernel"], r["arch"], str(r["registers"]), str(r["smem_bytes"]), str(r["spill_bytes"]),
                      "hot" if r["hot"] else "", needs, _status(r)])
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)), file=out)
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths)).rstrip(), file=out)
    for unit in compiled:
        if unit.get("error"):
            print(f"ERROR {unit['source']} {unit['arch']}: {unit['error']}", file=out)
    failed = [r for r in rows if r["problems"]]
    errors = [u for u in compiled if u.get("error")]
    print(f"\n{len(rows)} kernel builds, {sum(r['hot'] for r in rows)} hot; "
          f"{len(failed)} failing, {len(errors)} compile errors. needs: instructions a kernel must have "
          f"(LDG.128 = 128-bit global loads, MMA = tensor-core HMMA/HGMMA); spill in bytes (stores + loads); "
          f"smem: static shared memory in bytes (dynamic shared memory is set at launch)", file=out)
    return not failed and not errors


def build_parser(parser=None):
    parser = parser or argparse.ArgumentParser(
        prog="python -m tools.kernel_report",
        description="Registers, shared memory, spills and key SASS instructions of bertfast's CUDA kernels "
                    "(compiled with nvcc; no GPU needed). Exits 1 when a hot kernel spills, traps or lost "
                    "the instructions it is meant to use, 2 when the tools are missing.")
    parser.add_argument("--csrc", default=os.path.join(REPO, "csrc"), help="the kernel sources (default: %(default)s)")
    parser.add_argument("--arch", action="append", default=None,
                        help="compute capability without the dot, repeatable (default: 80 and 90)")
    parser.add_argument("--only", action="append", default=None,
                        help="compile only the sources whose path contains this text (repeatable)")
    parser.add_argument("--build-dir", default=os.path.join(REPO, "build", "kernel_report"),
                        help="cubins and tool output, reused while sources and flags are unchanged")
    parser.add_argument("--include", action="append", default=[], help="extra include directory (repeatable)")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1))
    parser.add_argument("--json", help="write the rows here")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    nvcc = toolchain.find_nvcc()
    if nvcc is None:
        print("kernel_report: nvcc not found (set CUDA_HOME); nothing to report", file=sys.stderr)
        return 2
    cuobjdump = toolchain.find_cuobjdump(nvcc)
    if cuobjdump is None:
        print("kernel_report: cuobjdump not found (neither in the CUDA toolkit nor in the triton package's "
              "backends/nvidia/bin)", file=sys.stderr)
        return 2
    csrc = os.path.abspath(args.csrc)
    sources = toolchain.torch_free_sources(csrc)
    if args.only:
        sources = [s for s in sources if any(o in s for o in args.only)]
    if not sources:
        print(f"kernel_report: no torch-free .cu sources under {csrc}", file=sys.stderr)
        return 2
    archs = args.arch or ["80", "90"]
    print(f"compiling {len(sources)} sources x {len(archs)} archs with {nvcc} ({args.jobs} jobs)", flush=True)
    # like setup.py: the kernel files need only csrc and the toolkit's headers
    compiled = toolchain.compile_all(sources, archs, csrc, args.build_dir, args.jobs, nvcc, cuobjdump, args.include)
    rows = analyse(compiled)
    ok = print_report(rows, compiled)
    if args.json:
        payload = {"nvcc": toolchain.nvcc_version(nvcc), "cuobjdump": cuobjdump, "archs": archs,
                   "sources": [os.path.relpath(s, os.path.dirname(csrc)) for s in sources],
                   "errors": [{k: u[k] for k in ("source", "arch", "error")} for u in compiled if u.get("error")],
                   "ok": ok, "rows": rows}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
    return 0 if ok else 1
