"""Student trainer: cache -> point-cloud students, losses, evaluation.

Reads caches only through `cache_schema`; never imports `preprocess`, pyrender
or captioning code, so it works with the `train` extra alone.
"""
