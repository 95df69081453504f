"""Data for fine-tuning: file readers, task examples, shipped samples and length-bucketed batches."""
from .readers import DataError, read_conll, read_squad, read_table, read_tagged_jsonl
from .sample_data import sample_path
from .tasks import (TASKS, Columns, TagExample, TextExample, check_known_labels, describe_unseen, label_list,
                    load_examples, unseen_labels)

__all__ = ["DataError", "read_conll", "read_squad", "read_table", "read_tagged_jsonl", "sample_path", "TASKS",
           "Columns", "TagExample", "TextExample", "check_known_labels", "label_list", "load_examples",
           "unseen_labels", "describe_unseen"]
