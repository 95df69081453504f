"""Evaluation metrics, written out so their definitions are visible and need no scipy/sklearn:
accuracy, F1 and Matthews correlation (classify/pair), Pearson and Spearman (regress), token
accuracy and entity-level F1 for BIO/IOB2 tags (tag), and SQuAD's exact match and F1 (qa)."""
import collections
import math
import re
import string

import numpy as np


def classification_metrics(predictions, labels, num_labels):
    """accuracy; f1 (of class 1 when there are two classes, as GLUE; else macro); f1_macro; mcc."""
    p = np.asarray(predictions, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    confusion = np.zeros((num_labels, num_labels), dtype=np.float64)
    np.add.at(confusion, (y, p), 1)
    tp = np.diag(confusion)
    precision = np.divide(tp, confusion.sum(0), out=np.zeros_like(tp), where=confusion.sum(0) > 0)
    recall = np.divide(tp, confusion.sum(1), out=np.zeros_like(tp), where=confusion.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    present = confusion.sum(1) + confusion.sum(0) > 0
    out = {
        "accuracy": float(tp.sum() / max(len(y), 1)),
        "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
        "mcc": matthews(confusion),
    }
    out["f1"] = float(f1[1]) if num_labels == 2 else out["f1_macro"]
    return out


def matthews(confusion):
    """Matthews correlation of a K-class confusion matrix (Gorodkin's R_K; the usual MCC for K=2)."""
    c = np.asarray(confusion, dtype=np.float64)
    n, correct = c.sum(), np.trace(c)
    t, p = c.sum(1), c.sum(0)
    numerator = correct * n - (t * p).sum()
    denominator = math.sqrt(n * n - (p * p).sum()) * math.sqrt(n * n - (t * t).sum())
    return float(numerator / denominator) if denominator > 0 else 0.0


def pearson(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denominator = math.sqrt((xc * xc).sum() * (yc * yc).sum())
    return float((xc * yc).sum() / denominator) if denominator > 0 else 0.0


def ranks(x):
    """Ranks starting at 1, ties sharing their mean rank (as scipy.stats.rankdata)."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    r = np.empty(len(x), np.float64)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        r[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return r


def regression_metrics(predictions, labels):
    p, y = np.asarray(predictions, np.float64), np.asarray(labels, np.float64)
    return {"pearson": pearson(p, y), "spearman": pearson(ranks(p), ranks(y)),
            "mse": float(((p - y) ** 2).mean()) if len(y) else 0.0}


def is_bio(tag_names):
    """True when every tag is O, B-x or I-x (BIO/IOB2), so entity-level F1 means something."""
    return all(t == "O" or (len(t) > 2 and t[:2] in ("B-", "I-")) for t in tag_names)


def entities(tags):
    """Set of (type, first, last) chunks of a BIO/IOB2 sequence, as conlleval reads them: an I-x
    that does not continue an x chunk starts a new one."""
    chunks, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, typ = tag.partition("-")
        continues = prefix == "I" and kind == typ
        if kind is not None and not continues:
            chunks.add((kind, start, i - 1))
            kind = None
        if prefix in ("B", "I") and not continues:
            start, kind = i, typ
    return chunks


def tagging_metrics(predicted, gold, bio=None):
    """Token accuracy over all words; with BIO tags also entity precision, recall and F1 (micro)."""
    flat_p = [t for seq in predicted for t in seq]
    flat_g = [t for seq in gold for t in seq]
    out = {"token_accuracy": sum(a == b for a, b in zip(flat_p, flat_g)) / max(len(flat_g), 1)}
    if bio is None:
        bio = is_bio(set(flat_g))
    if bio:
        found = correct = expected = 0
        for p, g in zip(predicted, gold):
            ep, eg = entities(p), entities(g)
            found, expected, correct = found + len(ep), expected + len(eg), correct + len(ep & eg)
        precision = correct / found if found else 0.0
        recall = correct / expected if expected else 0.0
        out.update(precision=precision, recall=recall,
                   f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return out


# SQuAD v1.1's official evaluation (evaluate-v1.1.py), same normalisation.
def normalize_answer(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_exact_match(prediction, truth):
    return float(normalize_answer(prediction) == normalize_answer(truth))


def squad_f1(prediction, truth):
    p, t = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(p) & collections.Counter(t)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions, examples):
    """exact_match and f1 in percent: each question's best score over its reference answers.
    predictions maps question id -> answer text."""
    em = f1 = 0.0
    for ex in examples:
        truths = [a["text"] for a in ex["answers"]]
        pred = predictions.get(ex["id"], "")
        em += max(squad_exact_match(pred, t) for t in truths)
        f1 += max(squad_f1(pred, t) for t in truths)
    n = max(len(examples), 1)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


# The metric that picks the best checkpoint, per task (higher is better).
MAIN_METRIC = {"classify": "accuracy", "pair": "accuracy", "regress": "pearson", "qa": "f1"}


def main_metric(task, metrics):
    if task == "tag":
        return "f1" if "f1" in metrics else "token_accuracy"
    return MAIN_METRIC[task]
