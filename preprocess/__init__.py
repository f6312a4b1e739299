"""Cache builder: meshes / LiDAR -> renders, captions, teacher features -> cache.

Heavy dependencies (pyrender, open_clip, transformers, dask) live here only.
"""
