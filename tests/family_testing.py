"""Small tokenizers of each kind, trained with the `tokenizers` library in the test, and tiny
model folders of each family around them (for the tokenization and CLI tests)."""
import json
import os

CORPUS = ["Paris is the capital and most populous city of France.",
          "The quick brown fox jumps over the lazy dog near the river bank.",
          "Normans gave their name to Normandy, a region in northern France.",
          "I loved this movie, the acting was great and the story was moving.",
          "A dull, boring film with terrible dialogue and no plot at all.",
          "Who was the first president? George Washington was the first president."] * 10
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_tokenizer(kind, vocab_size=400):
    """A `tokenizers.Tokenizer` of `kind`: "wordpiece" (BERT's specials and post-processor),
    "bbpe" (byte-level BPE, RoBERTa's) or "unigram" (SentencePiece-style, XLM-R's)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS))
        tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                       ("[CLS]", tok.token_to_id("[CLS]")))
        return tok
    if kind == "bbpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=ROBERTA_SPECIALS,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                          ("<s>", tok.token_to_id("<s>")), trim_offsets=True)
        return tok
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=ROBERTA_SPECIALS,
                                                            unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    return tok


def hf_tokenizer(tok, kind):
    """transformers' own tokenizer on the same tokenizer.json, with the family's special tokens."""
    from transformers import PreTrainedTokenizerFast
    names = BERT_SPECIALS if kind == "wordpiece" else ROBERTA_SPECIALS
    if kind == "wordpiece":
        specials = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), names))
    else:
        specials = dict(zip(("bos_token", "pad_token", "eos_token", "unk_token", "mask_token"), names),
                        cls_token="<s>", sep_token="</s>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def write_tokenizer_folder(folder, kind, model_type):
    """A folder with tokenizer.json and a config.json naming the family (no weights)."""
    tok = train_tokenizer(kind)
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    config = {"model_type": model_type, "type_vocab_size": 2 if kind == "wordpiece" else 1}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    return tok


def make_tiny_roberta(folder, seed=0, hidden=32, layers=2):
    """A random 2-layer RoBERTa (hidden 32) with a byte-level BPE tokenizer trained here."""
    import torch
    from transformers import RobertaConfig, RobertaModel
    from transformers.utils import logging as hf_logging
    tok = train_tokenizer("bbpe")
    config = RobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=130,
                           type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5)
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    RobertaModel(config).save_pretrained(folder)
    tok.save(os.path.join(folder, "tokenizer.json"))
    return str(folder)
