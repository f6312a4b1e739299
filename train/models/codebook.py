"""A codebook shared by the 2D and 3D features (CMCR): vector quantisation with the usual commitment loss.

    z_q = e_k, k = argmin_j ||z - e_j||        (nearest code)
    loss = ||sg(z) - z_q||^2 + beta ||z - sg(z_q)||^2   (codebook term + commitment term, VQ-VAE)
    output = z + sg(z_q - z)                     (straight-through: gradients reach z unchanged)

Quantising both modalities' features with one codebook pushes them to share
discrete codes; the code agreement of paired points is a loss of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VectorQuantizer(nn.Module):
    def __init__(self, num_codes: int, dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.beta = beta
        self.codebook = nn.Embedding(num_codes, dim)
        nn.init.uniform_(self.codebook.weight, -1 / num_codes, 1 / num_codes)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, D) features -> straight-through quantised (N, D), code indices (N,), VQ loss (scalar)."""
        codes = torch.cdist(z.detach().float(), self.codebook.weight.float()).argmin(dim=1)
        z_q = self.codebook(codes)
        loss = F.mse_loss(z_q, z.detach()) + self.beta * F.mse_loss(z, z_q.detach())
        return z + (z_q - z).detach(), codes, loss
