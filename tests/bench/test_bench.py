"""`bertfast bench` end to end on the CPU in a tiny configuration, and its parts. No test here
asserts a speed: timings on a shared CI machine mean nothing."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from bertfast import bench
from bertfast.bench import implementations, memory, output, workloads

# One thread: on a loaded 2-core CI machine, two OpenMP threads wait on each other for seconds.
TINY = ["--device", "cpu", "--threads", "1", "--model", "tiny", "--seq-len", "16", "--batch-size", "2", "--steps", "1",
        "--warmup", "0", "--real-batches", "2"]
IMPLS = ("bertfast", "hf-eager", "hf-sdpa")


def test_bench_runs_end_to_end_and_writes_every_row(tmp_path, capsys):
    json_path, csv_path = tmp_path / "bench.json", tmp_path / "bench.csv"
    assert bench.run(TINY + ["--task", "classification", "mlm", "--json", str(json_path), "--csv", str(csv_path)]) == 0
    payload = json.loads(json_path.read_text())
    rows = payload["rows"]
    expected = {(task, lengths, mode, impl) for task in ("classification", "mlm") for lengths in ("full", "real")
                for mode in ("train", "inference") for impl in IMPLS}
    got = {(r["task"], r["lengths"].split(":")[0], r["mode"], r["impl"]) for r in rows}
    assert got == expected and len(rows) == len(expected)
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["samples_per_s"] > 0 and r["ms"] > 0
        assert r["real_tokens"] <= r["padded_tokens"]
        assert r["mfu"] is None and r["cpu_ms"] >= 0  # no GEMM ceiling on the CPU; process CPU time instead
        if memory.cpu_rss_available():
            assert r["peak_mem_MB"] > 0
        if r["impl"] == "bertfast":
            assert r["vs_hf_eager"] > 0 and r["vs_hf_sdpa"] > 0 and "cpu_vs_hf_sdpa" in r
    for key in ("device", "torch", "cuda", "commit", "date"):
        assert key in payload["conditions"]
    assert payload["settings"]["model"] == ["tiny"] and payload["settings"]["family"] == ["bert"]
    assert payload["complete"] and {r["family"] for r in rows} == {"bert"}
    with open(csv_path, newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == len(rows) and {"device", "torch", "commit", "tokens_per_s"} <= set(lines[0])
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "hf-sdpa" in printed


def test_baselines_only_and_one_mode(tmp_path):
    path = tmp_path / "b.json"
    bench.run(TINY + ["--no-bertfast", "--baselines", "sdpa", "--mode", "inference", "--lengths", "real",
                      "--json", str(path)])
    rows = json.loads(path.read_text())["rows"]
    assert [(r["impl"], r["mode"], r["lengths"]) for r in rows] == [("hf-sdpa", "inference", "real:rotten_tomatoes")]


def test_optimize_rows(tmp_path):
    path = tmp_path / "b.json"
    bench.run(TINY + ["--optimize", "--baselines", "sdpa", "--mode", "inference", "--lengths", "full",
                      "--json", str(path)])
    payload = json.loads(path.read_text())
    rows = {r["impl"]: r for r in payload["rows"]}
    assert rows["hf-sdpa+optimize"]["uses_bertfast"] and rows["hf-sdpa+optimize"]["vs_hf_sdpa"] > 0


def test_families_with_optimize_give_every_row(tmp_path, capsys):
    json_path, csv_path = tmp_path / "b.json", tmp_path / "b.csv"
    assert bench.run(TINY + ["--family", "roberta", "distilbert", "--optimize", "--baselines", "sdpa",
                             "--json", str(json_path), "--csv", str(csv_path)]) == 0
    payload = json.loads(json_path.read_text())
    rows = payload["rows"]
    expected = {(family, lengths, mode, impl) for family in ("roberta", "distilbert") for lengths in ("full", "real")
                for mode in ("train", "inference") for impl in ("bertfast", "hf-sdpa", "hf-sdpa+optimize")}
    assert {(r["family"], r["lengths"].split(":")[0], r["mode"], r["impl"]) for r in rows} == expected
    assert len(rows) == len(expected) and payload["notes"] == []
    assert payload["settings"]["family"] == ["roberta", "distilbert"]
    for r in rows:
        assert all(math.isfinite(v) and v > 0 for v in [r["ms"], r["tokens_per_s"], *r["samples_s"]])
        if r["impl"] != "hf-sdpa":
            assert math.isfinite(r["vs_hf_sdpa"]) and r["vs_hf_sdpa"] > 0
    with open(csv_path, newline="") as f:
        assert [line["family"] for line in csv.DictReader(f)] == [r["family"] for r in rows]
    table = capsys.readouterr().out
    assert "family" in table and "distilbert" in table and "roberta" in table


@pytest.mark.parametrize("family", workloads.FAMILIES)
@pytest.mark.parametrize("task", workloads.TASKS)
def test_bertfast_and_optimize_compute_what_transformers_computes(family, task):
    """The benchmark compares equal work: on its own (padded, real-length) batch, bertfast's model
    and the drop-in give transformers' logits for every family."""
    impls = implementations.make_implementations("tiny", task, "cpu", ["sdpa"], True, [False], "fp32",
                                                 with_optimize=True, family=family)
    batch = workloads.for_family(workloads.make_batches(task, 4, 128, "real", 1, torch.Generator().manual_seed(0)),
                                 family)[0]
    assert batch.real_tokens < batch.padded_tokens and (batch.token_type_ids is None) == (family == "distilbert")
    logits = {impl.name: implementations.inference_step(impl, batch, "cpu", "fp32") for impl in impls}
    assert set(logits) == {"bertfast", "hf-sdpa", "hf-sdpa+optimize"}
    real = batch.attention_mask.bool() if task == "mlm" else slice(None)  # padding's logits are nobody's
    for name in ("bertfast", "hf-sdpa+optimize"):
        torch.testing.assert_close(logits[name][real], logits["hf-sdpa"][real], rtol=1e-4, atol=1e-6, msg=name)


def test_family_batches_use_the_family_pad_id_and_vocabulary():
    bert = workloads.make_batches("mlm", 4, 128, "real", 1, torch.Generator().manual_seed(0))
    roberta, = workloads.for_family(bert, "roberta")
    pad = bert[0].attention_mask == 0
    assert (roberta.input_ids[pad] == 1).all() and (bert[0].input_ids[pad] == 0).all()
    assert torch.equal(roberta.input_ids[~pad], bert[0].input_ids[~pad]) and torch.equal(roberta.labels, bert[0].labels)
    fields = workloads.family_config_fields("distilbert", "tiny")
    assert fields["dim"] == 64 and fields["n_layers"] == 2 and "hidden_size" not in fields


def test_module_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "bertfast.bench", "--help"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert proc.returncode == 0 and "--baselines" in proc.stdout and "--family" in proc.stdout


@pytest.mark.parametrize("bad", [["--precision", "fp16"], ["--seq-len", "1024"], ["--batch-size", "0"],
                                 ["--device", "mps"]])
def test_bad_options_are_clear_errors(bad):
    with pytest.raises(SystemExit) as info:
        bench.run(["--device", "cpu", "--model", "tiny"] + bad if bad[0] != "--device" else ["--model", "tiny"] + bad)
    assert "bertfast bench" in str(info.value)


def test_real_batches_follow_the_histogram_and_pad_to_their_longest():
    g = torch.Generator().manual_seed(0)
    batches = workloads.make_batches("mlm", 8, 128, "real", 3, g)
    values, _ = workloads.load_length_histogram("rotten_tomatoes")
    assert len(batches) == 3
    for b in batches:
        assert b.input_ids.shape == (8, max(b.lengths)) and all(n <= 128 for n in b.lengths)
        assert set(b.lengths) <= set(values.tolist())
        assert b.attention_mask.sum(1).tolist() == b.lengths
        assert (b.labels[b.attention_mask == 0] == -100).all() and (b.labels != -100).any(1).all()
    long = workloads.make_batches("classification", 4, 512, "real", 1, g)[0]
    assert workloads.real_distribution_for(512) == "squad" and long.labels.shape == (4,)
    full = workloads.make_batches("classification", 4, 64, "full", 5, g)
    assert len(full) == 1 and full[0].real_tokens == full[0].padded_tokens == 256


def test_flops_count():
    size = dict(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16)
    per_token = 2 * 2 * (4 * 64 + 2 * 8 * 16)
    attention = 2 * 4 * (3 * 3 + 5 * 5) * 8
    head = 2 * 2 * (64 + 16)
    assert workloads.forward_flops(size, [3, 5], "classification") == 8 * per_token + attention + head
    assert workloads.step_flops(size, [3, 5], "classification", "train") == 3 * (8 * per_token + attention + head)


def test_peak_memory_sees_a_large_allocation():
    module = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(module.parameters())
    if not memory.cpu_rss_available():
        pytest.skip("no /proc/self/statm")

    def allocate():
        x = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
        return int(x[::4096].sum())
    peak = memory.peak_bytes(allocate, module, optimizer, False, "cpu")
    assert peak >= 48 << 20


def test_table_and_plot(tmp_path):
    rows = [{"family": "bert", "model": "tiny", "task": "classification", "seq_len": 16, "lengths": "full",
             "batch_size": 2, "mode": "train", "impl": impl, "precision": "fp32", "ms": ms,
             "tokens_per_s": 32 / ms * 1e3,
             "samples_per_s": 2 / ms * 1e3, "peak_mem_MB": 10.0, "tflops": 0.001, "mfu": None}
            for impl, ms in (("bertfast", 1.0), ("hf-sdpa", 2.0))]
    table = output.format_table(rows)
    assert "tokens/s" in table and "MFU" not in table  # all-None columns are dropped
    markdown = output.format_markdown(rows).splitlines()
    assert len(markdown) == 4 and markdown[0].startswith("| family | model") and "bertfast" in markdown[2]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="pip install matplotlib"):
            output.plot(str(tmp_path), rows, {"device": "cpu"})
        return
    paths = output.plot(str(tmp_path), rows, {"device": "cpu", "torch": torch.__version__})
    assert [os.path.basename(p) for p in paths] == ["throughput.png", "memory.png"]
    assert all(os.path.getsize(p) > 1000 for p in paths)
