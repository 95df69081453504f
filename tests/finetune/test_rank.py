"""--task rank, `bertfast embed` and `bertfast search`: the loss against plain PyTorch (gradients
included), pooling against sentence-transformers' definitions, the metrics on hand-computed
cases, mining, a tiny end-to-end run that gets better, exact resume, 2-process DDP, embed/search
round trip, zero-shot MiniLM against transformers + mean pooling, and the error messages."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from bertfast.finetune.bi_encoder import pool, rank_loss
from bertfast.finetune.data import sample_path
from bertfast.finetune.retrieval_metrics import ranking_metrics, top_k

from finetune_helpers import ROOT, minilm_path



def run_cli(args, env_extra=None, check=True, torchrun=False):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun else []
    proc = subprocess.run([sys.executable, *launcher, "-m", "bertfast", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def small(tmp_path, split="train", rows=96):
    path = tmp_path / f"rank-{split}.jsonl"
    if not path.exists():
        lines = open(sample_path("rank", split)).read().splitlines()[:rows]
        path.write_text("\n".join(lines) + "\n")
    return path


# ---- the loss ----

def reference_loss(q, d, n, doc_ids, pos_sets, scale, symmetric):
    """Plain PyTorch, one query at a time: cross-entropy over the candidates that are not
    another of its positives."""
    total = 0.0
    for i in range(n):
        keep = [j for j in range(len(d)) if j == i or int(doc_ids[j]) not in pos_sets[i]]
        logits = scale * torch.stack([q[i] @ d[j] for j in keep])
        total = total + F.cross_entropy(logits[None], torch.tensor([keep.index(i)]))
    if not symmetric:
        return total
    back = 0.0
    for j in range(n):
        keep = [k for k in range(n) if k == j or int(doc_ids[j]) not in pos_sets[k]]
        logits = scale * torch.stack([d[j] @ q[k] for k in keep])
        back = back + F.cross_entropy(logits[None], torch.tensor([keep.index(j)]))
    return (total + back) / 2


@pytest.mark.parametrize("symmetric", [False, True])
def test_loss_matches_plain_pytorch_with_gradients(symmetric):
    torch.manual_seed(0)
    n, h, dim = 5, 7, 16
    q = F.normalize(torch.randn(n, dim, dtype=torch.float64), dim=-1).float().requires_grad_()
    d = F.normalize(torch.randn(n + h, dim, dtype=torch.float64), dim=-1).float().requires_grad_()
    # query 0 and 3 share document 10 as a positive (rows 0 and 3); query 1 has a second positive 11 (row 6)
    doc_ids = torch.tensor([10, 20, 30, 10, 50, 60, 11, 70, 80, 90, 100, 110])
    pos_sets = [{10}, {20, 11}, {30}, {10}, {50}]
    pos_ids = torch.tensor([[10, -1], [20, 11], [30, -1], [10, -1], [50, -1]])
    ours = rank_loss(q, d, n, doc_ids, pos_ids, scale=20.0, symmetric=symmetric)
    ref = reference_loss(q, d, n, doc_ids, pos_sets, 20.0, symmetric)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    g_ours = torch.autograd.grad(ours, (q, d))
    g_ref = torch.autograd.grad(ref, (q, d))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # float32, logits up to 20


def test_loss_goes_through_the_fused_op(monkeypatch):
    import bertfast.finetune.bi_encoder as be
    calls = []
    real = be.softmax_cross_entropy
    monkeypatch.setattr(be, "softmax_cross_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))
    q, d = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
    rank_loss(q, d, 3, torch.arange(3), torch.arange(3)[:, None], symmetric=True)
    assert len(calls) == 2


# ---- pooling: sentence-transformers' definitions on transformers' hidden states ----

@pytest.mark.parametrize("mode", ["mean", "cls", "max", "mean_sqrt_len"])
def test_pooling_matches_sentence_transformers(mode, tiny0):
    from transformers import BertModel as HFBert
    from bertfast.finetune.rank import load_bi_encoder
    ours, _ = load_bi_encoder(tiny0, mode)
    hf = HFBert.from_pretrained(tiny0).eval()
    ids = torch.randint(1000, 2000, (3, 9))
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4, [1] * 2 + [0] * 7])
    with torch.no_grad():
        h = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask[..., None].float()
        ref = {"mean": (h * m).sum(1) / m.sum(1).clamp(min=1e-9), "cls": h[:, 0],
               "max": h.masked_fill(m == 0, -1e9).max(1).values,
               "mean_sqrt_len": (h * m).sum(1) / m.sum(1).sqrt()}[mode]
        got = ours.eval().embed(ids, mask)
    torch.testing.assert_close(got, F.normalize(ref, dim=-1), rtol=1e-4, atol=1e-5)


def test_pool_on_packed_rows():
    hidden = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    cu = torch.tensor([0, 1, 4, 6], dtype=torch.int32)
    torch.testing.assert_close(pool(hidden, cu, ["mean"]), torch.tensor([[0., 1.], [4., 5.], [9., 10.]]))
    torch.testing.assert_close(pool(hidden, cu, ["cls", "max"]),
                               torch.tensor([[0., 1., 0., 1.], [2., 3., 6., 7.], [8., 9., 10., 11.]]))


# ---- metrics and search ----

def test_ranking_metrics_hand_computed():
    # query A: relevant {1}, found at rank 2; query B: relevant {5, 6}, at ranks 1 and 12
    rankings = [[0, 1, 2, 3], [5, 0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 6]]
    m = ranking_metrics(rankings, [{1}, {5, 6}])
    assert m["mrr@10"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["recall@1"] == pytest.approx((0 + 0.5) / 2)
    assert m["recall@10"] == pytest.approx((1 + 0.5) / 2)
    assert m["recall@100"] == pytest.approx(1.0)
    ndcg_a = (1 / math.log2(3)) / 1.0
    ndcg_b = 1.0 / (1 + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx((ndcg_a + ndcg_b) / 2)


def test_top_k_in_chunks_equals_a_full_sort():
    torch.manual_seed(1)
    q, c = torch.randn(4, 8), torch.randn(1000, 8)
    scores, index = top_k(q, c, 17, chunk=64)
    full = (q @ c.T).topk(17, dim=1)
    torch.testing.assert_close(scores, full.values)
    assert torch.equal(index, full.indices)


def test_mining_excludes_positives_and_given_negatives(tiny0, tmp_path):
    from bertfast.finetune.rank import RankConfig, RankData, load_bi_encoder, mine_negatives
    from bertfast.finetune.rank_data import read_rank_file
    from bertfast.finetune.distributed import DistContext
    from bertfast.finetune.tokenization import BertTokenizer
    cfg = RankConfig(task="rank", model=tiny0, train=str(small(tmp_path)), output="")
    examples = read_rank_file(cfg.train)
    data = RankData(cfg, BertTokenizer(tiny0), examples, None, lambda msg: None)
    model, _ = load_bi_encoder(tiny0)
    mined = mine_negatives(model, data, 3, DistContext())
    assert len(mined) == len(examples)
    for q, docs in enumerate(mined):
        assert len(docs) == 3 and len(set(docs)) == 3
        assert not set(docs) & data.pos_sets[q] and not set(docs) & set(data.given[q])


# ---- training end to end, resume, DDP ----

def rank_config(model, out, tmp_path, **kw):
    from bertfast.finetune.rank import RankConfig
    base = dict(task="rank", model=model, train=str(small(tmp_path, rows=160)), eval=str(small(tmp_path, "eval", 100)),
                output=str(out), max_length=64, query_max_length=24, epochs=2, batch_size=16, lr=1e-3, device="cpu",
                progress=False, quiet=True)
    return RankConfig(**{**base, **kw})


def test_training_improves_retrieval_and_saves_a_sentence_embedding_folder(tiny0, tmp_path):
    from bertfast.finetune.rank import evaluate_rank, finetune_rank
    out = tmp_path / "out"
    result = finetune_rank(rank_config(tiny0, out, tmp_path, mine_negatives=2))
    before, best = result["initial_eval"], result["best"]
    assert set(best) == {"mrr@10", "recall@1", "recall@10", "recall@100", "ndcg@10"}
    assert best["mrr@10"] > before["mrr@10"] + 0.03, (before, best)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json", "modules.json",
                 "sentence_bert_config.json", "bertfast_task.json", "eval_results.json", "eval_log.jsonl"):
        assert (out / name).exists(), name
    assert json.load(open(out / "1_Pooling" / "config.json"))["pooling_mode_mean_tokens"] is True
    saved = json.load(open(out / "eval_results.json"))
    assert saved["before_training"] == before and saved["best"] == best
    again = evaluate_rank(str(out), str(small(tmp_path, "eval", 100)), device="cpu")
    for k, v in best.items():
        assert again[k] == pytest.approx(v, abs=1e-4), k
    from transformers import BertModel as HFBert
    HFBert.from_pretrained(str(out), local_files_only=True)
    from bertfast.cli import main  # evaluate finds the task in bertfast_task.json
    assert main(["evaluate", "--model", str(out), "--data", str(small(tmp_path, "eval", 100)), "--device", "cpu",
                 "--output", str(tmp_path / "metrics.json")]) == 0
    assert json.load(open(tmp_path / "metrics.json"))["mrr@10"] == pytest.approx(best["mrr@10"], abs=1e-4)


def test_resume_with_mining_each_epoch_is_bitwise_identical(tiny, tmp_path):
    """Killed while saving and between checkpoints, mining again each epoch, dropout on."""
    args = lambda out: ["finetune", "--task", "rank", "--model", tiny, "--train", small(tmp_path),
                        "--eval", small(tmp_path, "eval", 60), "--output", out, "--max-length", "48",
                        "--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--device", "cpu", "--save-every", "2",
                        "--eval-every", "3", "--mine-negatives", "2", "--mine-every-epoch", "--symmetric",
                        "--keep-checkpoints", "--no-progress"]
    run_cli(args(tmp_path / "straight"))
    killed = tmp_path / "killed"
    assert run_cli(args(killed), {"BERTFAST_TEST_DIE_AT": "save:4"}, check=False).returncode == 17
    second = run_cli(["finetune", "--resume", "--output", killed, "--no-progress"], {"BERTFAST_TEST_DIE_AT": "step:8"},
                     check=False)
    assert second.returncode == 17, second.stderr
    run_cli(["finetune", "--resume", "--output", killed, "--no-progress"])
    a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = lambda p: [json.loads(x) for x in open(p / "eval_log.jsonl")]
    assert lines(tmp_path / "straight") == lines(killed)


def test_ddp_two_processes_match_one(tiny0, tmp_path):
    """torchrun, 2 CPU processes (gloo) of batch 8, candidates gathered: the same updates as one
    process of batch 16 (float tolerance)."""
    common = ["finetune", "--task", "rank", "--model", tiny0, "--train", small(tmp_path, rows=64),
              "--eval", small(tmp_path, "eval", 40), "--max-length", "48", "--epochs", "1", "--lr", "1e-3",
              "--device", "cpu", "--symmetric", "--no-progress"]
    run_cli(common + ["--batch-size", "16", "--output", tmp_path / "one"])
    proc = run_cli(common + ["--batch-size", "8", "--output", tmp_path / "two"], torchrun=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trained 4 steps in" in proc.stdout
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5)
    la, lb = ([json.loads(x) for x in open(tmp_path / n / "eval_log.jsonl")] for n in ("one", "two"))
    for x, y in zip(la, lb):
        assert x["mrr@10"] == pytest.approx(y["mrr@10"], abs=2e-3)


# ---- embed and search ----

def write_corpus(tmp_path, rows):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def corpus_rows():
    docs = dict.fromkeys(json.loads(x)["positive"] for x in open(sample_path("rank", "eval")))
    return [{"id": f"p{i}", "text": t} for i, t in enumerate(docs)]


@pytest.mark.parametrize("suffix", [".safetensors", ".npy"])
def test_embed_then_search_round_trip(tiny0, tmp_path, capsys, suffix):
    from bertfast.cli import main
    rows = corpus_rows()
    corpus, emb = write_corpus(tmp_path, rows), tmp_path / f"emb{suffix}"
    assert main(["embed", "--model", tiny0, "--input", str(corpus), "--output", str(emb), "--device", "cpu",
                 "--no-progress", "--max-tokens", "512"]) == 0
    assert "embedded 30 documents" in capsys.readouterr().out
    query = rows[7]["text"]
    for source in (emb, corpus):  # the embeddings file, or the corpus embedded on the fly
        assert main(["search", "--model", tiny0, "--corpus", str(source), "--query", query, "--top-k", "3",
                     "--device", "cpu", "--no-progress"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 3
        rank, doc_id, score = lines[0].split()[:3]
        assert (rank, doc_id) == ("1", "p7") and float(score) == pytest.approx(1.0, abs=1e-4)


def test_zero_shot_minilm_equals_transformers_with_mean_pooling():
    from transformers import AutoModel, AutoTokenizer
    from bertfast.finetune.rank import evaluate_rank
    model_dir, data = minilm_path(), sample_path("rank", "eval")
    ours = evaluate_rank(model_dir, data, device="cpu")
    rows = [json.loads(x) for x in open(data)]
    docs = list(dict.fromkeys(r["positive"] for r in rows))
    tok, hf = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()

    def embed(texts):
        batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            h = hf(**batch).last_hidden_state
        m = batch["attention_mask"][..., None].float()
        return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    q, d = embed([r["query"] for r in rows]), torch.cat([embed(docs[i:i + 16]) for i in range(0, len(docs), 16)])
    ranked = (q @ d.T).argsort(dim=1, descending=True).tolist()
    ref = ranking_metrics(ranked, [{docs.index(r["positive"])} for r in rows])
    assert ours["queries"] == len(rows) and ours["documents"] == len(docs)
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, abs=1e-3), k


# ---- bad input: one line naming the file and line ----

def one_line_error(capsys, argv, *expected):
    from bertfast.cli import main
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"bertfast {argv[0]}: error: ") and "Traceback" not in err
    for text in expected:
        assert text in err, err
    return err


def test_bad_input_messages(tiny0, tiny, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    common = ["--task", "rank", "--model", tiny0, "--train", bad, "--output", tmp_path / "o", "--device", "cpu"]
    bad.write_text('{"query": "q1", "positive": "d1"}\n{"query": "q2", "positive": ""}\n')
    one_line_error(capsys, ["finetune", *common], f"{bad}, line 2", "'positive' is empty")
    bad.write_text('{"query": "q1", "positive": "d1"}\n{"positive": "d2"}\n')
    one_line_error(capsys, ["finetune", *common], f"{bad}, line 2", "query")
    bad.write_text('{"query": "q1", "positive": "d1", "negatives": ["d9", "d1"]}\n')
    one_line_error(capsys, ["finetune", *common], f"{bad}, line 1", "both a positive and a negative")
    one_line_error(capsys, ["finetune", *common, "--query-max-length", "2"], "--query-max-length must be at least 3")
    assert not (tmp_path / "o").exists()
    corpus = write_corpus(tmp_path, [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}])
    one_line_error(capsys, ["embed", "--model", tiny0, "--input", corpus, "--output", tmp_path / "e.safetensors",
                            "--device", "cpu"], f"{corpus}, line 3", "duplicate id 'a'")
    assert not (tmp_path / "e.safetensors").exists()
    good = write_corpus(tmp_path, corpus_rows()[:4])
    from bertfast.cli import main
    assert main(["embed", "--model", tiny0, "--input", str(good), "--output", str(tmp_path / "e.safetensors"),
                 "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    one_line_error(capsys, ["search", "--model", tiny, "--corpus", tmp_path / "e.safetensors", "--query", "x",
                            "--device", "cpu"], "e.safetensors", "another model")


def test_search_rerank_with_a_pair_cross_encoder(tiny0, tmp_path, capsys):
    """--rerank re-scores the top k with a --task pair model: its scores are probabilities, best first."""
    from bertfast.cli import main
    from bertfast.finetune.trainer import FinetuneConfig, finetune
    cross = tmp_path / "cross"
    finetune(FinetuneConfig(task="pair", model=tiny0, train=sample_path("pair"), output=str(cross), max_length=48,
                            epochs=0.1, batch_size=16, device="cpu", max_train_examples=64, progress=False, quiet=True))
    corpus = write_corpus(tmp_path, corpus_rows()[:6])
    assert main(["search", "--model", tiny0, "--corpus", str(corpus), "--query", "Who won?", "--top-k", "4",
                 "--rerank", str(cross), "--device", "cpu", "--no-progress"]) == 0
    scores = [float(line.split()[2]) for line in capsys.readouterr().out.splitlines()]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
