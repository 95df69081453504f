"""Model outputs: objects with transformers' field names, also usable as a dict (`out["loss"]`)
and as a tuple of the fields that are set (`out[0]`), which is how transformers.Trainer reads them."""
from collections import OrderedDict


class ModelOutput(OrderedDict):
    fields = ()

    def __init__(self, **values):
        unknown = set(values) - set(self.fields)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown fields {sorted(unknown)}")
        super().__init__((name, values[name]) for name in self.fields if values.get(name) is not None)

    def __getattr__(self, name):
        if name in type(self).fields:
            return self.get(name)
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self):
        return tuple(self.values())

    def __reduce__(self):
        return type(self), (), None, None, iter(self.items())


class BaseModelOutput(ModelOutput):
    fields = ("last_hidden_state", "pooler_output")


class SequenceClassifierOutput(ModelOutput):
    fields = ("loss", "logits")


class TokenClassifierOutput(ModelOutput):
    fields = ("loss", "logits")


class QuestionAnsweringOutput(ModelOutput):
    fields = ("loss", "start_logits", "end_logits")


class MaskedLMOutput(ModelOutput):
    fields = ("loss", "logits")


class PreTrainingOutput(ModelOutput):
    fields = ("loss", "prediction_logits", "seq_relationship_logits")
