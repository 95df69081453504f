"""Running a fine-tuned model over features (in evaluation and `bertfast predict`), turning its
outputs into per-example predictions, and scoring them."""
import numpy as np
import torch

from .._precision import autocast
from . import metrics
from .data.batching import collate, eval_order
from .data.tasks import unseen_labels
from .distributed import DistContext, all_gather_objects
from .qa_postprocess import best_answers


@torch.no_grad()
def model_outputs(model, task, features, batch_size, device, precision, pad_id, ctx=None):
    """Per-feature outputs as numpy arrays: class logits, a score, per-word tag logits, or the
    (start, end) logits of QA. With DDP each rank runs a share and all ranks get everything."""
    ctx = ctx or DistContext(device=device)
    was_training = model.training
    model.eval()
    order = eval_order([len(f.input_ids) for f in features])[ctx.rank::ctx.world_size]
    mine = {}
    for i in range(0, len(order), batch_size):
        indices = order[i:i + batch_size]
        batch = {k: v.to(device) for k, v in collate(task, features, indices, pad_id, with_labels=False).items()}
        with autocast(device, precision):
            out = model(**batch)
        if task == "qa":
            starts, ends = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
            for r, f in enumerate(indices):
                n = len(features[f].input_ids)
                mine[f] = (starts[r, :n], ends[r, :n])
        elif task == "tag":
            logits = out.logits.float().cpu().numpy()
            for r, f in enumerate(indices):
                positions = np.asarray(features[f].word_starts)
                word_logits = np.full((len(positions), logits.shape[-1]), np.nan, dtype=np.float32)
                kept = positions >= 0
                word_logits[kept] = logits[r, positions[kept]]
                mine[f] = word_logits
        else:
            logits = out.logits.float().cpu().numpy()
            for r, f in enumerate(indices):
                mine[f] = logits[r]
    model.train(was_training)
    merged = {}
    for part in all_gather_objects(ctx, mine):
        merged.update(part)
    return [merged[f] for f in range(len(features))]


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def decode(task, examples, features, outputs, labels, n_best=20, max_answer_length=30):
    """One prediction per example. Tag: words cut by --max-length (or that tokenize to nothing)
    get 'O' when the tag set has it, else the first tag."""
    if task == "qa":
        answers = best_answers(examples, features, [o[0] for o in outputs], [o[1] for o in outputs],
                               n_best=n_best, max_answer_length=max_answer_length)
        return [answers[ex["id"]] for ex in examples]
    preds = [None] * len(examples)
    for feature, out in zip(features, outputs):
        i = feature.example_index
        if task == "regress":
            preds[i] = {"score": float(out[0])}
        elif task == "tag":
            fallback = "O" if "O" in labels else labels[0]
            preds[i] = {"tags": [labels[int(np.argmax(w))] if not np.isnan(w).any() else fallback for w in out]}
        else:
            p = softmax(out.astype(np.float64))
            k = int(np.argmax(p))
            preds[i] = {"label": labels[k], "probabilities": {name: float(v) for name, v in zip(labels, p)}}
    return preds


def score(task, examples, predictions, labels):
    """Metrics of the predictions against the examples' own labels. Labels the model never saw in
    training are errors (for classes: one extra class that is never predicted), and their number is
    given as `unseen_labels`."""
    unseen = sum(unseen_labels(task, examples, labels).values()) if task in ("classify", "pair", "tag") else 0
    result = _score(task, examples, predictions, labels)
    if unseen:
        result["unseen_labels"] = unseen
    return result


def _score(task, examples, predictions, labels):
    if task == "qa":
        return metrics.squad_metrics({ex["id"]: p["text"] for ex, p in zip(examples, predictions)}, examples)
    if task == "regress":
        return metrics.regression_metrics([p["score"] for p in predictions], [ex.label for ex in examples])
    if task == "tag":
        return metrics.tagging_metrics([p["tags"] for p in predictions], [ex.tags for ex in examples],
                                       bio=metrics.is_bio(labels))
    index = {name: i for i, name in enumerate(labels)}
    gold = [index.get(ex.label, len(labels)) for ex in examples]  # len(labels): a class never predicted
    return metrics.classification_metrics([index[p["label"]] for p in predictions], gold,
                                          len(labels) + (max(gold) == len(labels)))
