"""Downstream tasks on a pre-trained encoder: classification fine-tuning (Full / MLP-3 / Linear), evaluation with
voting, few-shot fine-tuning. Each is a :class:`train.loop.Task` or a function of a checkpoint; none is a branch
inside the pre-training stages."""
