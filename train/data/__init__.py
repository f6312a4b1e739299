"""Streaming data from caches: sharding, sampling, augmentation."""
