"""Evaluation: scores of trained models on a cache, one module a job.

- ``metrics.py``: confusion matrix, per-class IoU / mIoU, ShapeNetPart's part IoUs (numpy only).
- ``frozen.py``: frozen students: load_student, embed, zero-shot, linear probe, SVM few-shot, a run's validation.
- ``split.py``: a split's usable rows, and the model in eval mode for one pass.
- ``classification.py``: a fine-tuned classifier's OA and mAcc, with voting; load_classifier.
- ``part_segmentation.py``: a part-segmentation run's predictions and instance / class mIoU; load_segmenter.
- ``lidar_segmentation.py``: a fusion run's LiDAR-only segmentation mIoU; load_fusion.
- ``detection_metrics.py``: votenet / 3DETR's indoor detection AP25 / AP50: NMS, per-class proposals, VOC AP.

Nothing is imported here: the data streams and models import ``metrics`` (its ignore index), and the training
tasks import the evaluations they validate with, so the package itself stays empty to keep both cycle-free.
"""
