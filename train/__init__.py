"""Student trainer: cache -> point-cloud students, losses, evaluation.

Reads caches only through `cache_schema`; never imports `preprocess`, pyrender
or captioning code, so it works with the `train` extra alone.
"""

__all__ = ["load_encoder"]


def load_encoder(path: str, device: str = "cpu"):
    """A trained Point-MAE encoder (eval mode) from an exported ``.safetensors`` or a checkpoint:
    ``tokens, global_feature = load_encoder(path)(points)`` with points (B, N, 3)."""
    from train.encoder_io import load_encoder as load

    return load(path, device)
