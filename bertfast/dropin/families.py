"""The transformers families bertfast.optimize converts, as data: where each family's classes live,
which module of an encoder layer gets which packed forward, and where its LayerNorms are.

BERT, RoBERTa, XLM-RoBERTa, CamemBERT and ELECTRA share one layer structure (transformers
generates the last four from BERT's modular file): `<P>Layer` holds `attention` (`self`,
`output`), `intermediate` and `output`. DistilBERT's `TransformerBlock` holds `attention` (Q, K, V
and the output projection), `sa_layer_norm`, `ffn` and `output_layer_norm`.
"""
import importlib
from dataclasses import dataclass, field

from . import packed


@dataclass(frozen=True)
class Family:
    name: str                # as users know it: "RoBERTa"
    module: str              # transformers.models.<module>
    base: str                # the base model class: "RobertaModel"
    encoder_attr: str        # the base model's attribute holding the layers: "encoder"
    encoder: str             # its class
    layer: str               # the layer class
    layer_forward: object    # its packed forward
    parts: dict = field(default_factory=dict)  # path inside a layer -> (class name, packed forward or None: kept)
    layer_norms: tuple = ()  # attribute paths of the LayerNorms the fused op reads
    activation_attr: str = "hidden_act"
    packed_forward: object = None  # the base model's forward on packed tokens
    sequence_head: str = ""  # its [CLS] classification head: the last layer computes position 0 only
    sequence_classifier: str = ""  # the head's `classifier` class that reads position 0 ("": the head does)

    def classes(self):
        """The transformers modeling module of this family (imported on first use)."""
        return importlib.import_module(f"transformers.models.{self.module}")


def _bert_like(name, module, prefix):
    # BERT's head classifies the pooler's output; the others' classifier reads position 0 itself
    classifier = "" if prefix == "Bert" else f"{prefix}ClassificationHead"
    return Family(
        name=name, module=module, base=f"{prefix}Model", encoder_attr="encoder", encoder=f"{prefix}Encoder",
        layer=f"{prefix}Layer", layer_forward=packed.bert_layer_forward,
        parts={"attention": (f"{prefix}Attention", packed.bert_attention_forward),
               "attention.self": (f"{prefix}SelfAttention", packed.bert_self_attention_forward),
               "attention.output": (f"{prefix}SelfOutput", packed.dense_add_norm_forward),
               "intermediate": (f"{prefix}Intermediate", None),
               "output": (f"{prefix}Output", packed.dense_add_norm_forward)},
        layer_norms=("attention.output.LayerNorm", "output.LayerNorm"),
        packed_forward=packed.bert_model_forward, sequence_head=f"{prefix}ForSequenceClassification",
        sequence_classifier=classifier)


FAMILIES = (
    _bert_like("BERT", "bert.modeling_bert", "Bert"),
    _bert_like("RoBERTa", "roberta.modeling_roberta", "Roberta"),
    _bert_like("XLM-RoBERTa", "xlm_roberta.modeling_xlm_roberta", "XLMRoberta"),
    _bert_like("CamemBERT", "camembert.modeling_camembert", "Camembert"),
    _bert_like("ELECTRA", "electra.modeling_electra", "Electra"),
    Family(name="DistilBERT", module="distilbert.modeling_distilbert", base="DistilBertModel",
           encoder_attr="transformer", encoder="Transformer", layer="TransformerBlock",
           layer_forward=packed.distilbert_block_forward,
           parts={"attention": ("DistilBertSelfAttention", packed.distilbert_attention_forward),
                  "ffn": ("FFN", None)},
           layer_norms=("sa_layer_norm", "output_layer_norm"), activation_attr="activation",
           packed_forward=packed.distilbert_model_forward, sequence_head="DistilBertForSequenceClassification"),
)

NAMES = ", ".join(f.name for f in FAMILIES)


def find(model):
    """(family, base model) for a transformers model of a known family (a base model or any head
    around one), else (None, None). Subclasses count: a class is matched by its MRO."""
    base = getattr(model, "base_model", model)
    modules = {cls.__module__ for cls in type(base).__mro__}
    for family in FAMILIES:
        if f"transformers.models.{family.module}" in modules:
            base_class = getattr(family.classes(), family.base)
            if isinstance(base, base_class):
                return family, base
    return None, None


def submodule(module, path):
    for name in path.split("."):
        module = getattr(module, name, None)
    return module
