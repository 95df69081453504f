"""The implementations compared: transformers' BERT with attn_implementation "eager" and "sdpa",
bertfast's model with the same weights, each optionally under torch.compile; and the step each
one runs (a training step with AdamW, or inference)."""
from dataclasses import dataclass, field

import torch

from .._precision import autocast
from .workloads import MODEL_SIZES, VOCAB_SIZE

HF_CLASSES = {"classification": "BertForSequenceClassification", "mlm": "BertForMaskedLM"}
BASELINES = ("eager", "sdpa")


@dataclass
class Implementation:
    name: str                    # "bertfast", "hf-sdpa", "hf-eager", "hf-sdpa+optimize"; + "+compile"
    model: torch.nn.Module       # the module the step calls (compiled or not)
    base: torch.nn.Module        # the nn.Module that owns the parameters
    optimizer: torch.optim.Optimizer
    compiled: bool = False
    scaler: object = None
    notes: list = field(default_factory=list)

    @property
    def uses_bertfast(self):
        return self.name.startswith("bertfast") or "+optimize" in self.name


def hf_config(model_size, task):
    import transformers
    return transformers.BertConfig(vocab_size=VOCAB_SIZE, num_labels=2, **MODEL_SIZES[model_size])


def build_hf(config, task, attn_implementation):
    import transformers
    cls = getattr(transformers, HF_CLASSES[task])
    return cls._from_config(config, attn_implementation=attn_implementation)


def bertfast_unavailable_reason(task):
    """None when bertfast's model for `task` exists in this checkout, else why it is skipped."""
    try:
        import bertfast
    except ImportError as e:
        return f"bertfast does not import: {e}"
    missing = [name for name in ("BertConfig", HF_CLASSES[task]) if not hasattr(bertfast, name)]
    if missing:
        return f"bertfast has no {', '.join(missing)} yet (model code not merged): bertfast rows skipped"
    return None


def build_bertfast(hf_model, task):
    """bertfast's model for `task` with the configuration and weights of `hf_model`."""
    import bertfast
    config_dict = hf_model.config.to_dict()
    for key in ("_attn_implementation", "_attn_implementation_autoset", "attn_implementation", "torch_dtype",
                "dtype", "transformers_version"):
        config_dict.pop(key, None)
    config = bertfast.BertConfig.from_dict(config_dict)
    model = getattr(bertfast, HF_CLASSES[task])(config)
    state = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    try:  # the checkpoint loader maps transformers' names (fused QKV etc.) and checks coverage
        from bertfast.model.hf_checkpoint import load_state_into
    except ImportError:
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise RuntimeError(f"bertfast model did not take transformers' weights; missing {result.missing_keys[:10]}")
    else:
        load_state_into(model, state, source="transformers model")
    return model


def make_implementations(model_size, task, device, baselines, with_bertfast, compile_modes, precision, notes,
                         with_optimize=False):
    """Implementations sharing one set of random weights. A compiled variant shares the module
    and optimizer of its eager twin (the same parameters, so memory is not doubled)."""
    torch.manual_seed(0)
    config = hf_config(model_size, task)
    reference = build_hf(config, task, "eager")  # the weights every implementation starts from
    modules = {}
    for attn in baselines:
        model = reference if attn == "eager" else build_hf(config, task, attn)
        if model is not reference:
            model.load_state_dict(reference.state_dict())
        modules[f"hf-{attn}"] = model
    if with_bertfast:
        try:
            modules = {"bertfast": build_bertfast(reference, task), **modules}
        except Exception as e:  # a model that exists but cannot take these weights: say so, keep the baselines
            notes.append(f"bertfast model could not be built from transformers' config/weights: {e!r}")
    if with_optimize:  # transformers' own model with its encoder patched by bertfast.optimize
        import bertfast
        model = build_hf(config, task, "sdpa")
        model.load_state_dict(reference.state_dict())
        modules["hf-sdpa+optimize"] = bertfast.optimize(model)
    del reference
    impls = []
    for name, module in modules.items():
        module.to(device)
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5, fused=torch.device(device).type == "cuda")
        scaler = torch.amp.GradScaler(torch.device(device).type) if precision == "fp16" else None
        for compiled in compile_modes:
            model = torch.compile(module) if compiled else module
            impls.append(Implementation(name + ("+compile" if compiled else ""), model, module, optimizer,
                                        compiled, scaler))
    return impls


def train_step(impl, batch, device, precision):
    """One optimizer step: forward with labels, backward, AdamW."""
    impl.base.train()
    impl.optimizer.zero_grad(set_to_none=True)
    with autocast(device, precision):
        out = impl.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         token_type_ids=batch.token_type_ids, labels=batch.labels)
    loss = out.loss if hasattr(out, "loss") else out["loss"]
    if impl.scaler is not None:
        impl.scaler.scale(loss).backward()
        impl.scaler.step(impl.optimizer)
        impl.scaler.update()
    else:
        loss.backward()
        impl.optimizer.step()


def inference_step(impl, batch, device, precision):
    impl.base.eval()
    with torch.no_grad(), autocast(device, precision):
        out = impl.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         token_type_ids=batch.token_type_ids)
    return out.logits if hasattr(out, "logits") else out["logits"]


STEPS = {"train": train_step, "inference": inference_step}
