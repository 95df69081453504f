"""An optimized model trains as the original does: Trainer round trips (train, save_model, reload in
transformers with equal outputs), gradient checkpointing, dropout, pickling, torch.compile."""
import copy
import subprocess
import sys

import pytest
import torch

import bertfast
from bert_testing import assert_close
from finetune_helpers import minilm_path
from hf_families import inputs, model, run, transformers

pytest.importorskip("accelerate")

SENTENCES = ["a gripping, funny film", "dull", "the plot wanders but the acting is superb and warm",
             "not worth the ticket", "one of the best of the year", "flat jokes, wooden dialogue, no heart at all",
             "charming", "i walked out"]


def _dataset(args, labels):
    rows = args["input_ids"].shape[0]
    return [{**{k: v[i] for k, v in args.items()}, "labels": labels[i]} for i in range(rows)]


def _trainer(m, data, tmp_path, **extra):
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4,
                                          max_steps=3, learning_rate=1e-3, report_to=[], use_cpu=True,
                                          save_strategy="no", logging_strategy="no", **extra)
    return transformers.Trainer(model=m, args=args, train_dataset=data)


def _reload_matches(m, cls, directory, args):
    m.eval()
    reloaded = cls.from_pretrained(directory).eval()
    real = args["attention_mask"].bool()
    with torch.no_grad():
        ours, theirs = m(**args).logits, reloaded(**args).logits
    if ours.shape[:real.dim()] == real.shape:
        ours, theirs = ours[real], theirs[real]
    assert_close(ours, theirs, "logits after save_model and reload")


def test_trainer_round_trip_on_minilm(tmp_path):
    path = minilm_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    m = bertfast.optimize(transformers.BertForSequenceClassification.from_pretrained(path, num_labels=2))
    encoded = [tokenizer(s) for s in SENTENCES]
    data = [{**e, "labels": i % 2} for i, e in enumerate(encoded)]
    collator = transformers.DataCollatorWithPadding(tokenizer)  # dynamic padding: mixed lengths
    trainer = _trainer(m, data, tmp_path, gradient_checkpointing=True)
    trainer.data_collator = collator
    assert trainer.train().global_step == 3
    trainer.save_model(str(tmp_path / "saved"))
    config = transformers.AutoConfig.from_pretrained(tmp_path / "saved")
    assert config.architectures == ["BertForSequenceClassification"]
    batch = collator(encoded)
    _reload_matches(m, transformers.BertForSequenceClassification, tmp_path / "saved",
                    {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")})


@pytest.mark.parametrize("family,head", [("roberta", "ForSequenceClassification"), ("electra", "ForTokenClassification"),
                                         ("distilbert", "ForSequenceClassification")])
def test_trainer_round_trip_on_small_models(tmp_path, family, head):
    m = bertfast.optimize(model(family, head, hidden_dropout_prob=0.1) if family != "distilbert"
                          else model(family, head, dropout=0.1))
    args = inputs(family, head, batch=8)
    labels = (torch.arange(8) % 2 if head == "ForSequenceClassification"
              else torch.randint(0, 2, args["input_ids"].shape).masked_fill(args["attention_mask"] == 0, -100))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    trainer = _trainer(m, _dataset(args, labels), tmp_path)
    assert trainer.train().global_step == 3
    assert any(not torch.equal(p, before[n]) for n, p in m.named_parameters()), "the parameters moved"
    trainer.save_model(str(tmp_path / "saved"))
    _reload_matches(m, type(m), tmp_path / "saved", args)


@pytest.mark.parametrize("family", ["bert", "roberta", "electra", "distilbert"])
@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_with_dropout(family, reentrant):
    """Training mode with dropout: the recomputed layers draw the same masks, so the gradients equal
    those without checkpointing under the same seed."""
    dropout = {"dropout": 0.2} if family == "distilbert" else {"hidden_dropout_prob": 0.2,
                                                                 "attention_probs_dropout_prob": 0.2}
    plain = bertfast.optimize(model(family, "ForTokenClassification", **dropout)).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing_enable({"use_reentrant": reentrant})
    args = inputs(family, "ForTokenClassification")
    torch.manual_seed(5)
    expected_outputs, expected_grads = run(plain, args)
    calls = []
    first = checkpointed.base_model.encoder.layer[0] if family != "distilbert" else \
        checkpointed.base_model.transformer.layer[0]
    first.attention.register_forward_hook(lambda *_: calls.append(1))
    torch.manual_seed(5)
    outputs, grads = run(checkpointed, args)
    assert len(calls) == 2, "the layer ran again in backward: it was checkpointed"
    assert_close(outputs[0], expected_outputs[0], "logits")
    for name, expected in expected_grads.items():
        assert_close(grads[name], expected, f"grad {name}", rtol=1e-5, atol=1e-7)


def test_gradient_checkpointing_matches_transformers_on_minilm():
    hf = transformers.BertModel.from_pretrained(minilm_path())
    ours = bertfast.optimize(copy.deepcopy(hf))
    for m in (hf, ours):
        m.train()
        m.gradient_checkpointing_enable()
        for module in m.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    batch = tokenizer(SENTENCES[:4], padding=True, return_tensors="pt")
    args = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    expected_outputs, expected_grads = run(hf, args)
    outputs, grads = run(ours, args)
    assert_close(outputs[0], expected_outputs[0], "last_hidden_state", atol=3e-5)
    for name, expected in expected_grads.items():
        assert_close(grads[name], expected, f"grad {name}", rtol=1e-3, atol=1e-5)


def test_save_pretrained_of_a_base_model_names_transformers_class(tmp_path):
    m = bertfast.optimize(model("roberta", "Model"))
    m.save_pretrained(tmp_path)
    assert transformers.AutoConfig.from_pretrained(tmp_path).architectures == ["RobertaModel"]


def test_pickled_model_loads_in_a_fresh_process(tmp_path):
    m = bertfast.optimize(model("electra", "ForSequenceClassification").eval())
    torch.save(m, tmp_path / "m.pt")
    args = inputs("electra", "ForSequenceClassification")
    torch.save(args, tmp_path / "args.pt")
    expected = m(**args).logits
    code = (f"import torch; m = torch.load({str(tmp_path / 'm.pt')!r}, weights_only=False); "
            f"args = torch.load({str(tmp_path / 'args.pt')!r}); "
            f"assert type(m.electra).__qualname__ == 'BertfastElectraModel'; "
            f"torch.save(m(**args).logits, {str(tmp_path / 'out.pt')!r})")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tmp_path),
                   env={"PYTHONPATH": ":".join(sys.path)})
    assert_close(torch.load(tmp_path / "out.pt"), expected, "logits after unpickling")


def test_torch_compile():
    m = bertfast.optimize(model("bert", "ForSequenceClassification").eval())
    args = inputs("bert", "ForSequenceClassification")
    expected = m(**args).logits
    compiled = torch.compile(m)
    assert_close(compiled(**args).logits, expected, "compiled logits")
