"""Student trainer: cache -> point-cloud students, losses, evaluation.

Reads caches only through `cache_schema`; never imports `preprocess`, pyrender
or captioning code, so it works with the `train` extra alone.
"""

__all__ = ["load_encoder"]


def load_encoder(path: str, device: str = "cpu"):
    """A trained encoder (eval mode) from an exported ``.safetensors``, a checkpoint of this tool, or a released
    Point-MAE / Point-M2AE checkpoint: ``tokens, global_feature = load_encoder(path)(points)``, points (B, N, 3)."""
    from train.encoder_io import load_encoder as load

    return load(path, device)
