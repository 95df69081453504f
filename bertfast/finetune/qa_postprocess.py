"""From start/end logits of QA windows to answer text: the n best start and end tokens of every
window, spans inside the context, in order, at most max_answer_length tokens, each token scored in
the window where it has the most context; the best span over all windows of a question wins."""
import numpy as np


def best_answers(examples, features, start_logits, end_logits, n_best=20, max_answer_length=30):
    """{question id: {"text", "start" (character), "score"}} for every example with a window."""
    best = {}
    for f, feature in enumerate(features):
        ex = examples[feature.example_index]
        s_logits, e_logits = np.asarray(start_logits[f]), np.asarray(end_logits[f])
        n = len(feature.input_ids)
        starts = np.argsort(-s_logits[:n], kind="stable")[:n_best]
        ends = np.argsort(-e_logits[:n], kind="stable")[:n_best]
        for s in starts:
            if feature.offsets[s] is None or not feature.max_context[s]:
                continue
            for e in ends:
                if feature.offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(s_logits[s] + e_logits[e])
                current = best.get(ex["id"])
                if current is None or score > current["score"]:
                    char_start, char_end = feature.offsets[s][0], feature.offsets[e][1]
                    best[ex["id"]] = {"text": ex["context"][char_start:char_end], "start": char_start,
                                      "score": score}
    for ex in examples:
        best.setdefault(ex["id"], {"text": "", "start": -1, "score": float("-inf")})
    return best
