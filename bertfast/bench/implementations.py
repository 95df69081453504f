"""The implementations compared, for one family (bert, roberta, xlm-roberta, camembert, electra,
distilbert): transformers' class for that family with attn_implementation "eager" and "sdpa",
bertfast's model with the same weights, transformers' model through bertfast.optimize, each
optionally under torch.compile; and the step each one runs (a training step with AdamW, or
inference)."""
from dataclasses import dataclass, field

import torch

from .._precision import autocast
from . import workloads

# bertfast's classes (every family) and transformers' auto classes, which pick the family's own
MODEL_CLASSES = {"classification": "BertForSequenceClassification", "mlm": "BertForMaskedLM"}
HF_AUTO_CLASSES = {"classification": "AutoModelForSequenceClassification", "mlm": "AutoModelForMaskedLM"}
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


def hf_config(model_size, task, family="bert"):
    import transformers
    return transformers.AutoConfig.for_model(family, num_labels=2,
                                             **workloads.family_config_fields(family, model_size))


def build_hf(config, task, attn_implementation):
    """transformers' class for the config's family and `task` (RobertaForMaskedLM, ...)."""
    import transformers
    return getattr(transformers, HF_AUTO_CLASSES[task]).from_config(config, attn_implementation=attn_implementation)


def build_bertfast(hf_model, task):
    """bertfast's model for `task` with the configuration and weights of `hf_model`, of any family:
    the checkpoint mapping renames transformers' keys and checks that every encoder weight came."""
    import bertfast
    from bertfast.model.hf_checkpoint import load_state_into
    config_dict = hf_model.config.to_dict()
    for key in ("_attn_implementation", "_attn_implementation_autoset", "attn_implementation", "torch_dtype",
                "dtype", "transformers_version"):
        config_dict.pop(key, None)
    model = getattr(bertfast, MODEL_CLASSES[task])(bertfast.BertConfig.from_dict(config_dict))
    load_state_into(model, {k: v.detach().clone() for k, v in hf_model.state_dict().items()},
                    source="transformers model")
    return model


def make_implementations(model_size, task, device, baselines, with_bertfast, compile_modes, precision,
                         with_optimize=False, family="bert"):
    """Implementations sharing one set of random weights. A compiled variant shares the module
    and optimizer of its eager twin (the same parameters, so memory is not doubled)."""
    torch.manual_seed(0)
    config = hf_config(model_size, task, family)
    reference = build_hf(config, task, "eager")  # the weights every implementation starts from
    modules = {}
    for attn in baselines:
        model = reference if attn == "eager" else build_hf(config, task, attn)
        if model is not reference:
            model.load_state_dict(reference.state_dict())
        modules[f"hf-{attn}"] = model
    if with_bertfast:
        modules = {"bertfast": build_bertfast(reference, task), **modules}
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


def _inputs(batch):
    """The model's keyword inputs; no token_type_ids for a family without them (DistilBERT)."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if batch.token_type_ids is not None:
        inputs["token_type_ids"] = batch.token_type_ids
    return inputs


def train_step(impl, batch, device, precision):
    """One optimizer step: forward with labels, backward, AdamW."""
    impl.base.train()
    impl.optimizer.zero_grad(set_to_none=True)
    with autocast(device, precision):
        out = impl.model(**_inputs(batch), labels=batch.labels)
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
        out = impl.model(**_inputs(batch))
    return out.logits if hasattr(out, "logits") else out["logits"]


STEPS = {"train": train_step, "inference": inference_step}
