"""The model: config, the activation table, the unpadded encoder, task heads, outputs, packing,
and the Hugging Face checkpoint reader/writer (hf_checkpoint.py; the trainer's own checkpoints are in bertfast.finetune)."""
from .config import BertConfig
from .encoder import BertModel, BertPreTrainedModel
from .heads import (BertForMaskedLM, BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
                    BertForTokenClassification)

__all__ = ["BertConfig", "BertModel", "BertPreTrainedModel", "BertForSequenceClassification",
           "BertForTokenClassification", "BertForQuestionAnswering", "BertForMaskedLM", "BertForPreTraining"]
