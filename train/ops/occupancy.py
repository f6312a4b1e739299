"""Occupancy targets for masked voxels (CMCR's occupancy estimation), on any device.

Points are binned into voxels of ``voxel_size``; a share of the occupied
voxels is masked (their points are removed from the input) and the model is
asked, at the masked voxels and at as many empty voxels next to the scene's
occupied ones, whether they are occupied.
"""

from __future__ import annotations

import torch


def voxel_keys(xyz: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """(N, 3) integer voxel coordinates of points."""
    return torch.floor(xyz / voxel_size).to(torch.int64)


def mask_voxels(xyz: torch.Tensor, voxel_size: float, ratio: float, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep mask (N,) bool of the points outside masked voxels, and the masked voxels (M, 3)."""
    keys = voxel_keys(xyz, voxel_size)
    voxels, inverse = torch.unique(keys, dim=0, return_inverse=True)
    num_masked = int(round(ratio * len(voxels)))
    chosen = torch.randperm(len(voxels), generator=generator, device="cpu")[:num_masked].to(xyz.device)
    masked = torch.zeros(len(voxels), dtype=torch.bool, device=xyz.device)
    masked[chosen] = True
    return ~masked[inverse], voxels[masked]


def occupancy_queries(xyz: torch.Tensor, masked_voxels: torch.Tensor, voxel_size: float,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Query voxels (Q, 3) and their targets (Q,) float: every masked voxel (1) and as many empty ones (0).

    Empty queries are the 26-neighbours of occupied voxels that hold no point,
    drawn at random: hard negatives right next to surfaces.
    """
    occupied = torch.unique(voxel_keys(xyz, voxel_size), dim=0)
    offsets = torch.stack(torch.meshgrid(*[torch.arange(-1, 2, device=xyz.device)] * 3, indexing="ij"), -1).reshape(-1, 3)
    offsets = offsets[(offsets != 0).any(dim=1)]
    around = torch.unique((occupied[:, None, :] + offsets[None]).reshape(-1, 3), dim=0)
    both = torch.cat([occupied, around])
    _, inverse, counts = torch.unique(both, dim=0, return_inverse=True, return_counts=True)
    empty = around[counts[inverse[len(occupied):]] == 1]  # neighbours that are not occupied
    pick = torch.randperm(len(empty), generator=generator, device="cpu")[:len(masked_voxels)].to(xyz.device)
    queries = torch.cat([masked_voxels, empty[pick]])
    targets = torch.cat([torch.ones(len(masked_voxels)), torch.zeros(len(pick))]).to(xyz.device)
    return queries, targets
