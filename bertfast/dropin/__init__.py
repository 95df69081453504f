"""bertfast.optimize(model): a transformers model of the BERT family with its encoder on packed real
tokens and bertfast's kernels.

Families: BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA, DistilBERT (`families.py`), base models
and every head class. Padding is removed once at the encoder's entrance and restored once at its
exit (`packed.py`): each layer runs varlen attention and the fused bias + dropout + residual +
LayerNorm on real tokens only.

The conversion is a per-instance class swap: the base model, its encoder, each layer and the
attention and output modules inside it get a subclass of their own transformers class whose
forward runs the packed path. Parameters, buffers, state dict keys and module objects stay the
same, so nothing is copied and the model saves, loads, trains (Trainer, gradient checkpointing)
as before. A swapped class keeps its original `__name__` (what `save_pretrained` writes as the
architecture and what accelerate's `no_split_modules` compare); its `__qualname__`,
`Bertfast<Name>`, is where pickle finds it.
"""
import functools
import logging
import warnings

from torch import nn

from .._library import has_cuda_kernels
from ..model.activations import ACTIVATIONS
from . import families, packed

logger = logging.getLogger(__name__)

_FAST_CLASSES = {}  # original class -> swapped class
_PACKED_MODEL_FORWARDS = {}


def _forward_like(original_forward, forward):
    """`forward` under the original's name, docstring and signature (Trainer reads the signature
    to decide which dataset columns the model takes)."""
    @functools.wraps(original_forward)
    def wrapper(self, *args, **kwargs):
        return forward(self, *args, **kwargs)
    return wrapper


def _fast_class(original, attributes):
    """A subclass of `original` with `attributes` (its forward, ...), one per original class,
    registered as a module attribute under its __qualname__ so that pickling finds it."""
    if original in _FAST_CLASSES:
        return _FAST_CLASSES[original]
    qualname = f"Bertfast{original.__name__}"
    while qualname in globals():
        qualname += "_"  # two original classes of one name (a user's subclass named like transformers')
    attributes = {**attributes, "forward": _forward_like(original.forward, attributes["forward"]),
                  "_bertfast_original_forward": original.forward, "__module__": __name__}
    cls = type(original.__name__, (original,), attributes)
    cls.__qualname__ = qualname
    globals()[qualname] = cls
    _FAST_CLASSES[original] = cls
    return cls


def _swapped_attributes(family):
    """transformers class name -> the attributes its swapped class gets, for each class of `family`."""
    attributes = {part: {"forward": forward} for part, forward in family.parts.values() if forward is not None}
    attributes[family.layer] = {"forward": family.layer_forward}
    attributes[family.encoder] = {"forward": packed.encoder_forward}
    attributes[family.sequence_head] = {"forward": packed.first_token_head_forward}
    attributes[family.base] = {"forward": packed.model_forward,
                               "_bertfast_packed_forward": _packed_model_forward(family)}
    return attributes


def __getattr__(name):
    """A swapped class by name, made on demand: unpickling an optimized model in a fresh process."""
    for family in families.FAMILIES if name.startswith("Bertfast") else ():
        original = name[len("Bertfast"):]
        attributes = _swapped_attributes(family).get(original)
        if attributes is not None:
            return _fast_class(getattr(family.classes(), original), attributes)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_optimized(module):
    return type(module) in _FAST_CLASSES.values()


def _swap(module, attributes):
    if not is_optimized(module):
        module.__class__ = _fast_class(type(module), attributes)


def _config_reason(family, config):
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "it is a decoder (is_decoder/add_cross_attention): bertfast runs bidirectional encoders only"
    position = getattr(config, "position_embedding_type", "absolute")
    if position not in (None, "absolute"):
        return f"position_embedding_type={position!r} (relative attention scores) is not supported"
    activation = getattr(config, family.activation_attr, None)
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        return f"{family.activation_attr}={activation!r} is not an activation bertfast knows ({', '.join(ACTIVATIONS)})"
    return None


def _layer_reason(family, classes, i, layer):
    if not isinstance(layer, getattr(classes, family.layer)):
        return f"encoder layer {i} is a {type(layer).__name__}, not transformers' {family.layer}"
    for path, (class_name, _) in family.parts.items():
        part = families.submodule(layer, path)
        if not isinstance(part, getattr(classes, class_name)):
            return f"encoder layer {i}: {path} is a {type(part).__name__}, not transformers' {class_name}"
    for path in family.layer_norms:
        norm = families.submodule(layer, path)
        if type(norm) is not nn.LayerNorm or norm.weight is None or norm.bias is None:
            return f"encoder layer {i}: {path} is a {type(norm).__name__}, not a torch.nn.LayerNorm with weight and bias"
    return None


def unconvertible_reason(family, base):
    """Why `base` (a base model of `family`) cannot run the packed path, or None."""
    reason = _config_reason(family, base.config)
    if reason is not None:
        return reason
    if any(p.device.type == "cuda" for p in base.parameters()) and not has_cuda_kernels():
        return "it is on a CUDA device and this bertfast build has no CUDA kernels (rebuild with nvcc)"
    classes = family.classes()
    encoder = getattr(base, family.encoder_attr, None)
    if not isinstance(encoder, getattr(classes, family.encoder)):
        return f"its {family.encoder_attr} is not transformers' {family.encoder}"
    for i, layer in enumerate(encoder.layer):
        reason = _layer_reason(family, classes, i, layer)
        if reason is not None:
            return reason
    return None


def _packed_model_forward(family):
    if family.name not in _PACKED_MODEL_FORWARDS:
        _PACKED_MODEL_FORWARDS[family.name] = packed.packed_model_forward(family.packed_forward)
    return _PACKED_MODEL_FORWARDS[family.name]


def _reads_only_position_0(family, model):
    """transformers' own sequence-classification head (not a subclass) with its own classifier."""
    classes = family.classes()
    if type(model) is not getattr(classes, family.sequence_head):
        return False
    return not family.sequence_classifier or type(model.classifier) is getattr(classes, family.sequence_classifier)


def _convert(family, model, base):
    attributes = _swapped_attributes(family)
    if _reads_only_position_0(family, model):
        _swap(model, attributes[family.sequence_head])
    encoder = getattr(base, family.encoder_attr)
    for layer in encoder.layer:
        for path, (class_name, forward) in family.parts.items():
            if forward is not None:
                _swap(families.submodule(layer, path), attributes[class_name])
        _swap(layer, attributes[family.layer])
    _swap(encoder, attributes[family.encoder])
    _swap(base, attributes[family.base])
    # transformers finds what a model can record (hidden states) by the name of its class
    from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    _CAN_RECORD_REGISTRY[base] = base._can_record_outputs


def optimize(model):
    """Run a transformers BERT-family model's encoder on packed real tokens and bertfast's kernels,
    in place; returns the same model object.

    Takes the base models and every head class of BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA
    and DistilBERT, on CPU or CUDA, in train or eval mode. Parameters are shared, not copied.
    Outputs on real tokens and all gradients match the original within floating-point tolerance
    (dropout draws different masks); padded positions of `last_hidden_state` are zeros.

    Models it cannot convert (decoders, relative position embeddings, unknown activations or
    LayerNorms, modules that are not transformers' own) are returned unchanged with a warning that
    says why. A call asking for what the packed path cannot give (output_attentions, a head mask,
    a cache, cross-attention inputs, a 4D mask) runs the original forward. Calling it twice is harmless.
    """
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError("bertfast.optimize needs the `transformers` package") from e
    family, base = families.find(model)
    if family is None:
        warnings.warn(f"bertfast.optimize: {type(model).__name__} left unchanged: it is not a transformers model of "
                      f"a family bertfast converts ({families.NAMES})", stacklevel=2)
        return model
    if is_optimized(base):
        return model
    reason = unconvertible_reason(family, base)
    if reason is not None:
        warnings.warn(f"bertfast.optimize: {type(model).__name__} left unchanged: {reason}", stacklevel=2)
        return model
    _convert(family, model, base)
    if type(model).__name__.endswith("ForQuestionAnswering"):
        logger.warning("bertfast.optimize: %s: transformers' span loss also softmaxes over padded positions, whose "
                       "logits come from the pad tokens' hidden states; here those are zeros, so on padded "
                       "batches the loss differs slightly (logits on real tokens are equal)", type(model).__name__)
    logger.info("bertfast.optimize: %s (%s): %d encoder layers now run on packed tokens", type(model).__name__,
                family.name, len(getattr(base, family.encoder_attr).layer))
    return model
