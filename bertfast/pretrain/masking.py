"""Masked-LM masking, as BERT and transformers' DataCollatorForLanguageModeling do it.

Each non-special token (or, with whole-word masking, each word: a token and the `##`
continuation pieces after it) is chosen with probability mask_prob; a chosen token becomes
[MASK] 80% of the time, a random non-special token 10%, and stays itself 10%; its label is the
original id, every other label -100. Special tokens ([CLS], [SEP], [PAD], [MASK], [UNK], and the
tokenizer's other added specials) are never chosen.

The masks are a pure function of a seed sequence: training draws them from (seed, epoch, example
index), new each epoch (dynamic masking) yet the same in a resumed run and on any number of
processes; evaluation from (EVAL_SEED, example index), the same in every evaluation and every run.
"""
import numpy as np

IGNORE_INDEX = -100
EVAL_SEED = 20240917  # fixed: held-out masks do not depend on --seed, so runs compare


def train_rng(seed, epoch, index):
    return np.random.default_rng([seed, epoch, index])


def eval_rng(index):
    return np.random.default_rng([EVAL_SEED, 0xE7A1, index])


class Masker:
    """masker(ids, rng) -> (input ids, labels), both int64 arrays shaped like ids."""

    def __init__(self, vocab, special_ids, mask_id, mask_prob=0.15, whole_word=False):
        """vocab: token -> id of the tokenizer; special_ids: ids never masked."""
        if not 0 < mask_prob < 1:
            raise ValueError(f"--mask-prob must be between 0 and 1, got {mask_prob}")
        size = max(vocab.values()) + 1
        self.special = np.zeros(size, dtype=bool)
        self.special[list(special_ids)] = True
        self.continuation = np.zeros(size, dtype=bool)
        self.continuation[[i for t, i in vocab.items() if t.startswith("##")]] = True
        self.ordinary = np.flatnonzero(~self.special)  # what the 10% random replacements draw from
        self.mask_id, self.mask_prob, self.whole_word = mask_id, mask_prob, whole_word

    def chosen(self, ids, rng):
        """Boolean: the positions whose label is their token."""
        candidate = ~self.special[ids]
        if not self.whole_word:
            return candidate & (rng.random(len(ids)) < self.mask_prob)
        starts = ~self.continuation[ids] | ~candidate
        starts[0] = True
        word = np.cumsum(starts) - 1
        return candidate & (rng.random(int(word[-1]) + 1) < self.mask_prob)[word]

    def __call__(self, ids, rng):
        ids = np.asarray(ids, dtype=np.int64)
        chosen = self.chosen(ids, rng)
        labels = np.where(chosen, ids, IGNORE_INDEX)
        action = rng.random(len(ids))
        inputs = ids.copy()
        inputs[chosen & (action < 0.8)] = self.mask_id
        random_at = chosen & (action >= 0.8) & (action < 0.9)
        inputs[random_at] = self.ordinary[rng.integers(len(self.ordinary), size=int(random_at.sum()))]
        return inputs, labels


def tokenizer_masker(tokenizer, mask_prob, whole_word):
    """A Masker for a `tokenizers.Tokenizer` with BERT's [MASK]; the specials are its added special
    tokens (and the usual BERT ones present in the vocabulary)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    mask_id = tokenizer.token_to_id("[MASK]")
    if mask_id is None:
        raise ValueError("the tokenizer's vocabulary has no [MASK] token: it cannot be used for masked-LM training")
    specials = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    specials |= {vocab[t] for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]") if t in vocab}
    return Masker(vocab, specials, mask_id, mask_prob, whole_word)
