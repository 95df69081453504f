"""`bertfast finetune`, `predict` and `evaluate`: the trainer (trainer.py), its checkpoints
(checkpoints.py), the model loading it does (models.py), evaluation and prediction
(evaluation.py, predict.py), metrics, QA post-processing, tokenization, distributed set-up and
the data readers (data/)."""
