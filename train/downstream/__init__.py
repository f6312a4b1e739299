"""Downstream tasks on a pre-trained encoder: classification fine-tuning (Full / MLP-3 / Linear), few-shot
fine-tuning, part segmentation. Each is a :class:`train.loop.Task` or a function of a checkpoint; none is a branch
inside the pre-training stages. Their scores (classification with voting, part mIoU) are in ``train/eval/``."""
