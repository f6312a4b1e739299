"""Point-cloud geometry ops: pytorch3d's kernels when importable, vectorised PyTorch otherwise."""

from train.ops.geometry import (HAVE_PYTORCH3D, ball_query, chamfer_distance, farthest_point_sample, knn,
                                three_nn_interpolate)

__all__ = ["HAVE_PYTORCH3D", "ball_query", "chamfer_distance", "farthest_point_sample", "knn",
           "three_nn_interpolate"]
