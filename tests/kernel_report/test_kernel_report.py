"""The kernel report: its parsers on captured nvcc 13.0 output (sm_80, add_layer_norm), its
verdicts, and one real run on the add_layer_norm kernels when nvcc is installed."""
import json
import os
import subprocess
import sys

import pytest

from tools.kernel_report import expectations, parse, report, toolchain

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
SCALAR = "_ZN8bertfast54_GLOBAL__N__ac044b98_21_layer_norm_kernels_cu_ec673f6f25add_layer_norm_fwd_kernelI13__nv_bfloat16S2_Li1ELi16ELi256EEEvNS_19AddLayerNormFwdArgsEi"
VECTOR = "_ZN8bertfast54_GLOBAL__N__ac044b98_21_layer_norm_kernels_cu_ec673f6f25add_layer_norm_fwd_kernelI13__nv_bfloat16S2_Li8ELi2ELi256EEEvNS_19AddLayerNormFwdArgsEi"
PARTIALS = "_ZN8bertfast54_GLOBAL__N__ac044b98_21_layer_norm_kernels_cu_ec673f6f19sum_partials_kernelI13__nv_bfloat16EEvPKfiiPT_S6_S6_"


def _read(name):
    with open(os.path.join(DATA, name)) as f:
        return f.read()


def _captured(ptxas=None, sass=None):
    return [{"source": "csrc/add_layer_norm/add_layer_norm_kernels.cu", "arch": "sm_80", "error": None,
             "ptxas": _read("ptxas_sm80.txt") if ptxas is None else ptxas,
             "sass": _read("sass_sm80.txt") if sass is None else sass}]


def test_parse_ptxas_reads_every_entry():
    kernels = parse.parse_ptxas(_read("ptxas_sm80.txt"))
    assert set(kernels) == {SCALAR, VECTOR, PARTIALS}
    assert kernels[SCALAR] == {"arch": "sm_80", "registers": 64, "smem_bytes": 32, "stack_bytes": 0,
                               "spill_store_bytes": 0, "spill_load_bytes": 0}
    assert kernels[VECTOR]["registers"] == 62
    assert kernels[PARTIALS]["smem_bytes"] == 1056


def test_parse_ptxas_spills_and_device_functions():
    text = ("ptxas info    : Function properties for _Z6helperv\n"
            "    8 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads\n"
            "ptxas info    : Compiling entry function '_Z1kv' for 'sm_90'\n"
            "ptxas info    : Function properties for _Z1kv\n"
            "    24 bytes stack frame, 24 bytes spill stores, 16 bytes spill loads\n"
            "ptxas info    : Used 255 registers, 0 bytes smem, 400 bytes cmem[0]\n")
    kernels = parse.parse_ptxas(text)
    assert list(kernels) == ["_Z1kv"]  # the non-entry helper is not a kernel
    assert kernels["_Z1kv"]["spill_store_bytes"] == 24 and kernels["_Z1kv"]["spill_load_bytes"] == 16
    assert kernels["_Z1kv"]["registers"] == 255 and kernels["_Z1kv"]["arch"] == "sm_90"


def test_parse_sass_counts_opcodes_with_predicates():
    functions = parse.parse_sass(_read("sass_sm80.txt"))
    assert set(functions) == {SCALAR, VECTOR, PARTIALS}
    assert functions[VECTOR].get("LDG.E.128", 0) > 0
    assert "LDG.E.128" not in functions[SCALAR]
    assert functions[PARTIALS]["EXIT"] == 2  # "@P1 EXIT" and "EXIT"


def test_shorten_demangled_names():
    names = parse.demangle([VECTOR])
    if names[VECTOR] == VECTOR:
        pytest.skip("c++filt is not installed")
    assert parse.shorten(names[VECTOR]) == "add_layer_norm_fwd_kernel<bf16,bf16,8,2,256>"
    assert parse.shorten("void bertfast::(anonymous namespace)::k<float>(float const*, int)") == "k<f32>"
    assert parse.shorten("void bertfast::attention_cuda::(anonymous namespace)::attention_fwd_kernel<__half, 64>"
                         "(bertfast::AttentionFwdArgs)") == "attention_fwd_kernel<fp16,64>"


def test_expectations_table():
    assert not expectations.expectation_for("add_layer_norm_fwd_kernel<bf16,f32,1,16,256>").hot
    assert expectations.expectation_for("add_layer_norm_bwd_kernel<f32,f32,4,4,512>").hot
    mma = (expectations.TENSOR_CORE_MMA,)
    assert expectations.expectation_for("flash_attention_fwd_kernel<bf16,64>").requires == mma
    assert not expectations.expectation_for("some_new_kernel").hot
    assert not expectations.expectation_for("cross_entropy_kernel<bf16,1,32,0>").hot  # elementwise fallback
    assert not expectations.expectation_for("attention_bwd_dvec_kernel<bf16>").hot  # rowsum(dO * O)
    assert expectations.expectation_for("attention_bwd_dkdv_kernel<bf16,64,64>").hot
    assert expectations.expectation_for("cross_entropy_kernel<bf16,8,256,2>").requires == (expectations.LOAD_128,)


def test_report_on_captured_output_passes():
    rows = report.analyse(_captured())
    by_name = {r["kernel"]: r for r in rows}
    if VECTOR in {r["kernel"] for r in rows}:
        pytest.skip("c++filt is not installed")
    vector = by_name["add_layer_norm_fwd_kernel<bf16,bf16,8,2,256>"]
    assert vector["hot"] and vector["requires"] == {"LDG.128": True} and not vector["problems"]
    assert not by_name["add_layer_norm_fwd_kernel<bf16,bf16,1,16,256>"]["hot"]
    assert report.print_report(rows, _captured(), out=open(os.devnull, "w"))


def test_report_fails_when_a_hot_kernel_spills_or_loses_its_loads():
    spilled = _read("ptxas_sm80.txt").replace(
        f"Function properties for {VECTOR}\n    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads",
        f"Function properties for {VECTOR}\n    24 bytes stack frame, 24 bytes spill stores, 24 bytes spill loads")
    assert spilled != _read("ptxas_sm80.txt")
    rows = report.analyse(_captured(ptxas=spilled))
    assert [r["problems"] for r in rows if r["mangled"] == VECTOR] == [["spills 24 B stores / 24 B loads"]]
    assert not report.print_report(rows, _captured(), out=open(os.devnull, "w"))

    no_wide_loads = _read("sass_sm80.txt").replace("LDG.E.128", "LDG.E.64")
    rows = report.analyse(_captured(sass=no_wide_loads))
    assert [r["problems"] for r in rows if r["mangled"] == VECTOR] == [["no LDG.128"]]


def test_scalar_fallback_may_spill_and_traps_always_fail():
    spilled = _read("ptxas_sm80.txt").replace(
        f"Function properties for {SCALAR}\n    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads",
        f"Function properties for {SCALAR}\n    24 bytes stack frame, 24 bytes spill stores, 24 bytes spill loads")
    rows = report.analyse(_captured(ptxas=spilled))
    scalar = [r for r in rows if r["mangled"] == SCALAR][0]
    assert scalar["spill_bytes"] == 48 and not scalar["problems"] and scalar["warnings"]

    trapped = _read("sass_sm80.txt").replace("EXIT ;", "BPT.TRAP 0x1 ;", 1)
    rows = report.analyse(_captured(sass=trapped))
    assert any("BPT.TRAP" in p for r in rows for p in r["problems"])


def test_torch_free_sources_leave_out_torch_glue(tmp_path):
    (tmp_path / "op").mkdir()
    (tmp_path / "op" / "op.h").write_text("#pragma once\n#include <cuda_runtime.h>\n")
    (tmp_path / "op" / "glue.h").write_text("#pragma once\n#include <ATen/ATen.h>\n")
    (tmp_path / "op" / "op_kernels.cu").write_text('#include "op.h"\n__global__ void k() {}\n')
    (tmp_path / "op" / "op_torch.cu").write_text('#include "glue.h"\n')
    found = toolchain.torch_free_sources(str(tmp_path))
    assert [os.path.basename(s) for s in found] == ["op_kernels.cu"]


@pytest.mark.slow
@pytest.mark.skipif(toolchain.find_nvcc() is None, reason="nvcc is not installed")
def test_kernel_report_runs_on_add_layer_norm(tmp_path):
    if toolchain.find_cuobjdump(toolchain.find_nvcc()) is None:
        pytest.skip("cuobjdump is not installed")
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "tools.kernel_report", "--only", "add_layer_norm_kernels.cu",
                           "--arch", "80", "--json", str(out)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    names = {r["kernel"] for r in payload["rows"]}
    assert "add_layer_norm_fwd_kernel<bf16,bf16,8,2,256>" in names
    assert all(r["registers"] for r in payload["rows"])
    assert any(r["hot"] and r["requires"] == {"LDG.128": True} for r in payload["rows"])


def test_runs_from_the_checkout_without_the_build():
    proc = subprocess.run([sys.executable, "-m", "tools.kernel_report", "--help"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "--arch" in proc.stdout


def test_missing_nvcc_is_a_clear_skip(monkeypatch, capsys):
    monkeypatch.setattr(toolchain, "find_nvcc", lambda: None)
    assert report.main([]) == 2
    assert "nvcc not found" in capsys.readouterr().err
