"""Student models: the Point-MAE encoder and per-teacher projection heads."""
