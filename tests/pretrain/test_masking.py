"""Masking statistics on large samples: the rate, 80/10/10, whole words, no special tokens, and
masks that are a pure function of their seeds."""
import numpy as np
import pytest

from bertfast.pretrain.masking import IGNORE_INDEX, Masker, eval_rng, tokenizer_masker, train_rng

VOCAB = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4,
         **{f"w{i}": i for i in range(5, 505)}, **{f"##p{i}": i for i in range(505, 1005)}}
SPECIALS = {0, 1, 2, 3, 4}


def sample_ids(rng, n):
    """Words of 1-3 tokens (a word piece then ## pieces), with [CLS]/[SEP] sprinkled in."""
    ids = []
    while len(ids) < n:
        ids.append(int(rng.integers(5, 505)))
        ids += [int(x) for x in rng.integers(505, 1005, size=int(rng.integers(0, 3)))]
        if rng.random() < 0.05:
            ids.append(int(rng.choice([2, 3])))
    return np.asarray(ids[:n])


@pytest.mark.parametrize("whole_word", [False, True])
def test_rate_and_80_10_10_and_no_specials(whole_word):
    masker = Masker(VOCAB, SPECIALS, mask_id=4, mask_prob=0.15, whole_word=whole_word)
    ids = sample_ids(np.random.default_rng(0), 200_000)
    inputs, labels = masker(ids, np.random.default_rng(1))
    chosen = labels != IGNORE_INDEX
    special = np.isin(ids, list(SPECIALS))
    assert not chosen[special].any()                       # specials never masked
    assert (labels[chosen] == ids[chosen]).all()           # labels are the original tokens
    assert (inputs[~chosen] == ids[~chosen]).all()         # the rest untouched
    assert chosen[~special].mean() == pytest.approx(0.15, abs=0.005)
    n = chosen.sum()
    as_mask = (inputs[chosen] == 4).sum() / n
    kept = (inputs[chosen] == ids[chosen]).sum() / n
    randomised = 1 - as_mask - kept
    assert as_mask == pytest.approx(0.8, abs=0.01)
    assert kept == pytest.approx(0.1, abs=0.01)            # (a random draw equal to the token is ~0.1%)
    assert randomised == pytest.approx(0.1, abs=0.01)
    replaced = inputs[chosen & (inputs != 4) & (inputs != ids)]
    assert not np.isin(replaced, list(SPECIALS)).any()    # random replacements are ordinary tokens


def test_whole_word_masks_every_piece_of_a_chosen_word():
    masker = Masker(VOCAB, SPECIALS, mask_id=4, mask_prob=0.15, whole_word=True)
    ids = sample_ids(np.random.default_rng(2), 100_000)
    chosen = masker.chosen(ids, np.random.default_rng(3))
    start = (ids < 505) | np.isin(ids, list(SPECIALS))
    word = np.cumsum(start) - 1
    per_word = np.bincount(word, weights=chosen) / np.bincount(word)
    assert set(np.unique(per_word)) <= {0.0, 1.0}          # all of a word or none of it
    multi = np.bincount(word) > 1
    assert per_word[multi].mean() == pytest.approx(0.15, abs=0.01)
    # token-level masking splits words
    token_chosen = Masker(VOCAB, SPECIALS, 4, 0.15).chosen(ids, np.random.default_rng(3))
    split = np.bincount(word, weights=token_chosen) / np.bincount(word)
    assert ((split > 0) & (split < 1)).any()


def test_masks_are_pure_functions_of_their_seeds():
    masker = Masker(VOCAB, SPECIALS, 4, 0.15)
    ids = sample_ids(np.random.default_rng(4), 128)
    a, b = masker(ids, train_rng(7, 0, 5)), masker(ids, train_rng(7, 0, 5))
    assert all((x == y).all() for x, y in zip(a, b))
    other_epoch = masker(ids, train_rng(7, 1, 5))
    assert not (a[1] == other_epoch[1]).all()              # dynamic: a new mask each epoch
    assert (masker(ids, eval_rng(5))[1] == masker(ids, eval_rng(5))[1]).all()


def test_tokenizer_masker_knows_bert_specials():
    from finetune_helpers import minilm_path
    from bertfast.finetune.tokenization import BertTokenizer
    masker = tokenizer_masker(BertTokenizer(minilm_path()).tokenizer, 0.15, True)
    assert masker.mask_id == 103 and masker.special[[0, 100, 101, 102, 103]].all()
    assert masker.continuation.sum() > 5000 and not masker.continuation[1000:2000].all()
    with pytest.raises(ValueError):
        Masker(VOCAB, SPECIALS, 4, mask_prob=1.5)
