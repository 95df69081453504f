"""Every benchmarks/bench_*.py through the harness on its --quick shapes on the CPU: the cases it
declares come back measured, compared with their baseline, with their rates and written as JSON;
run_all.py and summarize.py over them; the harness's own rules. No test asserts a speed."""
import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from bertfast.bench import harness, timing

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHMARKS = os.path.join(REPO, "benchmarks")
QUICK = ["--device", "cpu", "--quick", "--reps", "1", "--warmup", "0"]

# (op, dtype, mode, impl) of every row each script's quick CPU run must write, and the rate its rows carry
EXPECTED = {
    "bench_add_layer_norm": ({("add_layer_norm", dtype, mode, impl) for dtype in ("float32", "bfloat16")
                              for mode in ("forward", "forward+backward") for impl in ("bertfast", "composite")}
                             | {("add_layer_norm", "float32", "forward+backward, warm malloc", impl)
                                for impl in ("bertfast", "composite")}, "GBps"),
    "bench_attention": ({("attention", "float32", mode, impl)
                         for mode in ("fwd+bwd, padding mask", "forward, padding mask")
                         for impl in ("bertfast", "bertfast varlen", "sdpa")}
                        | {("attention", "float32", mode, impl) for mode in ("fwd+bwd, dropout 0.1", "forward, dropout 0.1")
                           for impl in ("bertfast", "sdpa")}, "tflops"),
    "bench_cross_entropy": ({("softmax_cross_entropy", "float32", "fwd+bwd", impl)
                             for impl in ("bertfast", "bertfast inplace", "F.cross_entropy")}
                            | {("linear_cross_entropy", "float32", "fwd+bwd", impl)
                               for impl in ("bertfast", "unfused")}, None),
}
# the rows of a case repeated on one thread (the same keys, threads=1)
ONE_THREAD = {"bench_attention": ["bertfast", "bertfast varlen", "sdpa"]}


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_is_checked_here():
    scripts = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(BENCHMARKS, "bench_*.py"))}
    assert scripts == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_runs_through_the_harness_and_writes_its_json(name, tmp_path, monkeypatch, capsys):
    module = _load(name)
    if hasattr(module, "keep_malloc_warm"):  # its mallopt() would outlive the test in this process
        monkeypatch.setattr(module, "keep_malloc_warm", lambda: True)
    path = tmp_path / f"{name}.json"
    assert harness.main(module.__doc__, module.cases, QUICK + ["--json", str(path)]) == 0
    payload = json.loads(path.read_text())
    expected, rate = EXPECTED[name]
    rows = payload["rows"]
    assert {(r["op"], r["dtype"], r["mode"], r["impl"]) for r in rows} == expected
    assert [r["impl"] for r in rows if r["threads"] == 1] == ONE_THREAD.get(name, [])
    assert len(rows) == len(expected) + len(ONE_THREAD.get(name, []))
    assert payload["complete"] and payload["notes"] == [] and payload["settings"]["quick"]
    assert {"device", "torch", "cuda", "date", "commit", "command"} <= set(payload["conditions"])
    for r in rows:
        assert r["ms"] > 0 and r["cpu_ms"] >= 0 and r["baseline"] in {x["impl"] for x in rows if x["op"] == r["op"]}
        assert (r["speedup"] is None) == (r["impl"] == r["baseline"])
        assert r["speedup"] is None or r["speedup"] > 0
        if rate:
            assert r[rate] > 0
    _check_rates(payload)
    assert "speedup" in capsys.readouterr().out


def _check_rates(payload):
    """Each rate beside its ceiling; linear_cross_entropy's memory, fused below unfused."""
    for r in payload["rows"]:
        if "GBps" in r:
            assert r["of_copy_bw"] == pytest.approx(r["GBps"] / payload["ceilings"]["copy_GBps"], rel=0.01)
        if "tflops" in r:
            assert r["of_gemm"] == pytest.approx(r["tflops"] / payload["ceilings"]["gemm_TFLOPs"], rel=0.01)
    memory = {r["impl"]: r for r in payload["rows"] if r["op"] == "linear_cross_entropy"}
    if memory:
        fused, unfused = memory["bertfast"], memory["unfused"]
        assert 0 < fused["peak_extra_MB"] < unfused["peak_extra_MB"]
        assert fused["memory_ratio"] == pytest.approx(fused["peak_extra_MB"] / unfused["peak_extra_MB"], rel=0.05)


def test_a_failing_case_costs_only_its_rows(tmp_path, capsys):
    x = torch.ones(4)

    def cases(device, quick):
        yield harness.Case("good", (4,), torch.float32, "forward", {"a": lambda: x + 1, "b": lambda: x * 2}, "b",
                           bytes=32, threads=1)
        yield harness.Case("bad", (4,), torch.float32, "forward", {"a": lambda: x @ torch.ones(3), "b": lambda: x}, "b")
    path = tmp_path / "b.json"
    assert harness.main("", cases, QUICK + ["--json", str(path)]) == 1
    payload = json.loads(path.read_text())
    assert [(r["op"], r["impl"], r["threads"]) for r in payload["rows"]] == [("good", "a", 1), ("good", "b", 1)]
    assert len(payload["notes"]) == 1 and payload["notes"][0].startswith("bad (4,) float32 forward failed")
    assert payload["complete"] and "copy_GBps" in payload["ceilings"]


def test_before_runs_untimed_before_every_call():
    calls = []
    timing.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, "cpu",
                            warmup=1, reps=2, before=lambda: calls.append("refill"))
    assert calls == ["refill", "a", "refill", "b"] + ["refill", "a", "refill", "b"] * 2


def test_run_all_and_summarize(tmp_path):
    """run_all.py --quick (one benchmark, for time): its JSON and log, summary.txt and summary.json."""
    proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "run_all.py"), "--quick", "--device", "cpu",
                           "--only", "attention", "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bench = json.loads((tmp_path / "bench_attention.json").read_text())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failed"] == [] and summary["rows"] == bench["rows"]
    assert "timing attention" in (tmp_path / "bench_attention.log").read_text()
    text = (tmp_path / "summary.txt").read_text()
    assert "bertfast varlen" in text and "command:" not in text and "bench_attention gemm_TFLOPs" in text


def test_summarize_joins_rows_and_flags_a_cut_short_run(tmp_path, capsys):
    sys.path.insert(0, BENCHMARKS)
    try:
        import summarize
    finally:
        sys.path.pop(0)
    row = {"op": "a", "shape": "(2,)", "dtype": "float32", "mode": "forward", "impl": "bertfast", "ms": 1.0}
    (tmp_path / "bench_a.json").write_text(json.dumps({"conditions": {"device": "cpu", "command": "x"},
                                                       "rows": [row], "complete": True}))
    (tmp_path / "bench_b.json").write_text(json.dumps({"rows": [dict(row, op="b")], "complete": False,
                                                       "notes": ["b (2,) failed"]}))
    (tmp_path / "e2e.json").write_text(json.dumps({"rows": [dict(row, op="e2e")]}))  # not an op benchmark
    assert [r["op"] for r in summarize.main(str(tmp_path))] == ["a", "b"]
    out = capsys.readouterr().out
    assert "device: cpu" in out and "command" not in out
    assert "note: bench_b: b (2,) failed" in out and "note: bench_b: incomplete" in out
