"""The command line of search: `bertfast finetune --task rank` options, `bertfast evaluate
--task rank`, `bertfast embed` and `bertfast search` (cli.py calls these)."""
import os

RANK_ARGS = ("query_column", "positive_column", "negatives_column", "query_max_length", "scale", "symmetric",
             "mine_negatives", "mine_every_epoch", "pooling", "corpus")


def add_rank_arguments(p):
    g = p.add_argument_group("rank (bi-encoder search): JSONL {\"query\", \"positive\": str or [str], \"negatives\": [str]}")
    g.add_argument("--query-column", help="column of the query (default: query, question or anchor)")
    g.add_argument("--positive-column", help="column of the relevant document(s) (default: positive, ...)")
    g.add_argument("--negatives-column", help="column of the hard negatives (default: negatives, if present)")
    g.add_argument("--query-max-length", type=int, help="tokens per query (default 64); --max-length is for documents")
    g.add_argument("--scale", type=float, help="cosine similarity times this is the logit (default 20)")
    g.add_argument("--symmetric", action="store_true", default=None, help="also the loss of documents to queries")
    g.add_argument("--mine-negatives", type=int, help="before training, add K hard negatives per query: the "
                   "training documents the model ranks highest that are not its positives")
    g.add_argument("--mine-every-epoch", action="store_true", default=None, help="mine again at each epoch start")
    g.add_argument("--pooling", choices=["mean", "cls", "max", "mean_sqrt_len"],
                   help="pooling of the token embeddings (default: the checkpoint's 1_Pooling/config.json, else mean)")
    g.add_argument("--corpus", help="extra documents of the evaluation, JSONL/CSV {\"id\", \"text\"} or .txt")


def add_commands(sub):
    e = sub.add_parser("embed", help="embeddings of a corpus (safetensors or .npy, with ids)",
                       description="Embed a corpus with a bi-encoder (a model made by `finetune --task rank`, or a "
                                   "sentence-embedding checkpoint): JSONL/CSV {\"id\", \"text\"} or .txt, one document a line.")
    e.add_argument("--model", required=True, help="model folder")
    e.add_argument("--input", required=True, help="corpus file")
    e.add_argument("--output", required=True, help="embeddings file: .safetensors (or .npy)")
    e.add_argument("--id-column", help="column of the ids (default: id)")
    e.add_argument("--text-column", help="column of the texts (default: text)")
    s = sub.add_parser("search", help="the documents of a corpus nearest to a query",
                       description="Exact search of queries against a corpus: an embeddings file from `bertfast embed` "
                                   "or a corpus file embedded on the fly. Prints rank, id, score and the start of the text.")
    s.add_argument("--model", required=True, help="model folder (the one that made the embeddings)")
    s.add_argument("--corpus", required=True, help="embeddings file (.safetensors/.npy) or corpus file")
    s.add_argument("--query", required=True, action="append", help="query text (repeat for several)")
    s.add_argument("--top-k", type=int, default=10, help="documents per query (default 10)")
    s.add_argument("--rerank", help="re-score the top k with this cross-encoder (a model made by --task pair)")
    for q in (e, s):
        q.add_argument("--max-length", type=int, help="tokens per document (default: the model's)")
        q.add_argument("--max-tokens", type=int, default=16384, help="tokens per batch, bounds memory (default 16384)")
        q.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
        q.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast precision")
        q.add_argument("--no-progress", action="store_true", help="no progress bar")


def is_rank_run(cfg):
    from .rank import is_rank_run as check
    return check(cfg)


def finetune_rank_args(cfg, args):
    from .rank import as_rank_config, finetune_rank
    return finetune_rank(as_rank_config(cfg, {k: getattr(args, k, None) for k in RANK_ARGS
                                              if getattr(args, k, None) is not None}))


def is_rank_model(model_dir):
    from .models import TASK_FILE, read_task_info
    if not os.path.exists(os.path.join(model_dir, TASK_FILE)):
        return False
    info = read_task_info(model_dir)  # a corrupt file is named, with what to do
    return isinstance(info, dict) and info.get("task") == "rank"


def evaluate_rank_args(args):
    from .rank import evaluate_rank
    return evaluate_rank(args.model, args.data, args.corpus, args.device, args.precision, args.max_length)


def run_embed(args):
    from .data.readers import DataError
    from .embed import Encoder, embed_corpus, write_embeddings
    from .rank_data import read_corpus
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise DataError(f"--output {args.output}: the folder {folder} does not exist")
    if not args.output.lower().endswith((".safetensors", ".npy")):
        raise DataError(f"--output {args.output}: name it .safetensors or .npy")
    ids, texts = read_corpus(args.input, args.id_column, args.text_column)
    encoder = Encoder(args.model, args.device, args.precision, args.max_length, args.max_tokens)
    import time
    start = time.time()
    emb, truncated = embed_corpus(encoder, texts, not args.no_progress)
    seconds = time.time() - start
    write_embeddings(args.output, emb, ids, texts, encoder.metadata)
    print(f"embedded {len(ids)} documents in {seconds:.1f} s ({len(ids) / max(seconds, 1e-9):,.0f} documents/s), "
          f"dimension {emb.shape[1]}, to {args.output}" + (f"; {truncated} truncated to {encoder.doc_length} tokens"
                                                            if truncated else ""))
    return 0


def run_search(args):
    from .data.readers import DataError
    from .embed import Encoder, corpus_for_search, rerank, search
    if args.top_k < 1:
        raise DataError(f"--top-k must be at least 1, got {args.top_k}")
    encoder = Encoder(args.model, args.device, args.precision, args.max_length, args.max_tokens)
    emb, ids, texts = corpus_for_search(args.corpus, encoder, not args.no_progress)
    for query, hits in zip(args.query, search(encoder, args.query, emb, args.top_k)):
        if args.rerank:
            hits = rerank(args.rerank, query, hits, texts, args.device, args.precision)
        if len(args.query) > 1:
            print(f"query: {query}")
        for rank, (row, score) in enumerate(hits, 1):
            text = " ".join(texts[row][:200].split())
            print(f"{rank:>3}  {ids[row]}  {score:.4f}  {text[:80]}")
    return 0
