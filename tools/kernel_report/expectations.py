"""What each kernel is meant to look like in SASS, as a small declarative table.

A kernel's shortened name (see parse.shorten) is matched against the patterns in order; the
first match decides. A "hot" kernel is on a path that matters for speed: it must not spill
and must contain every instruction class listed in `requires` (a regex over opcodes, e.g. a
tensor-core MMA). Any kernel with BPT.TRAP fails: that is what CuTe atoms compile to on an arch
that lacks their instruction, a kernel that traps at run time.

A new kernel that matters for speed gets a line here (its owner knows what it must contain);
until then it is reported with "no expectation declared" and never fails the report.
"""
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Expectation:
    pattern: str            # regex searched in the shortened kernel name
    hot: bool               # spills or missing instructions fail the report
    requires: tuple = ()    # (label, opcode regex) pairs the SASS must contain
    note: str = ""

    def matches(self, name):
        return re.search(self.pattern, name) is not None


TENSOR_CORE_MMA = ("MMA", r"^(HMMA|HGMMA)\b")
LOAD_128 = ("LDG.128", r"^LDG\.E(\.[A-Z0-9_]+)*?\.128\b")
TRAP = r"^BPT\.TRAP\b"
LOCAL_MEMORY = r"^(LDL|STL)\b"

EXPECTATIONS = [
    # add_layer_norm: <T, P, VEC, ITEMS, MAX_THREADS>. VEC == 1 is the scalar fallback for
    # misaligned pointers or odd hidden sizes: rare, and allowed to spill (24 bytes seen).
    Expectation(r"^add_layer_norm_(fwd|bwd)_kernel<[^,<>]+,[^,<>]+,1,", hot=False,
                note="scalar fallback path (unaligned / odd hidden)"),
    Expectation(r"^add_layer_norm_(fwd|bwd)_kernel<", hot=True, requires=(LOAD_128,),
                note="16-byte vector path"),
    Expectation(r"^sum_partials_kernel", hot=False, note="parameter-gradient reduction"),
    # attention: the forward/backward kernels are built on tensor-core MMA; their small helpers
    # (row sums of dO*O = "dvec", dQ conversion, zeroing) are memory-bound and have none.
    Expectation(r"(attention|attn|fmha|flash)\w*(preprocess|postprocess|convert|reduce|sum|zero|dot|dvec)", hot=False,
                note="attention helper"),
    Expectation(r"attention|attn|fmha|flash", hot=True, requires=(TENSOR_CORE_MMA,)),
    # cross-entropy: cross_entropy_kernel<T, VEC, GROUP, MODE>, a row-wise online softmax over the
    # vocabulary, bandwidth-bound: 16-byte packs. VEC == 1 is the elementwise fallback for
    # logits and gradient at different offsets from a 16-byte boundary (never for torch's own
    # allocations); check_labels_kernel only validates the labels.
    Expectation(r"^cross_entropy_kernel<[^,<>]+,1,", hot=False, note="elementwise fallback path (misaligned)"),
    Expectation(r"^check_labels_kernel", hot=False, note="label validation"),
    Expectation(r"cross_entropy|xent|softmax", hot=True, requires=(LOAD_128,)),
]

DEFAULT = Expectation(r"", hot=False, note="no expectation declared")


def expectation_for(name, table=EXPECTATIONS):
    for expectation in table:
        if expectation.matches(name):
            return expectation
    return DEFAULT


def check(name, ptxas, opcodes, table=EXPECTATIONS):
    """Verdict for one kernel on one arch: a dict with the facts and a list of `problems`
    (fatal) and `warnings` (reported only)."""
    expectation = expectation_for(name, table)
    spill = (ptxas or {}).get("spill_store_bytes", 0) + (ptxas or {}).get("spill_load_bytes", 0)
    local_ops = sum(n for op, n in opcodes.items() if re.match(LOCAL_MEMORY, op))
    traps = sum(n for op, n in opcodes.items() if re.match(TRAP, op))
    found = {label: any(re.match(rx, op) for op in opcodes) for label, rx in expectation.requires}
    problems, warnings = [], []
    if traps:
        problems.append(f"{traps} BPT.TRAP (an instruction this arch lacks was compiled into a trap)")
    if spill:
        (problems if expectation.hot else warnings).append(
            f"spills {ptxas.get('spill_store_bytes', 0)} B stores / {ptxas.get('spill_load_bytes', 0)} B loads")
    for label, ok in found.items():
        if not ok:
            (problems if expectation.hot else warnings).append(f"no {label}")
    if not opcodes:
        warnings.append("no SASS found for this kernel")
    return {"hot": expectation.hot, "note": expectation.note, "spill_bytes": spill, "local_memory_ops": local_ops,
            "traps": traps, "requires": found, "problems": problems, "warnings": warnings}
