"""The mapping network: ``(z, camera label, body pose)`` → ``ws``.

Layout (official ``MappingNetwork`` with ``c_dim = 25 + 6``): ``embed`` FC(31 → w_dim) on the
conditioning, both inputs second-moment normalised and concatenated, then ``num_layers``
lrelu FC layers with lr multiplier 0.01, broadcast to ``num_ws`` copies. ``w_avg`` is the
tracked mean used for truncation.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .layers import FullyConnectedLayer, normalize_2nd_moment


class MappingNetwork(nn.Module):
    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int,
        num_layers: int = 2,
        lr_multiplier: float = 0.01,
    ):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.num_ws, self.num_layers = num_ws, num_layers
        self.embed = FullyConnectedLayer(c_dim, w_dim)
        features = [z_dim + w_dim] + [w_dim] * num_layers
        for i in range(num_layers):
            setattr(
                self,
                f"fc{i}",
                FullyConnectedLayer(
                    features[i], features[i + 1], activation="lrelu", lr_multiplier=lr_multiplier
                ),
            )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self, z: Tensor, c: Tensor, truncation_psi: float = 1.0, truncation_cutoff: Optional[int] = None
    ) -> Tensor:
        """z ``[B, z_dim]``, c ``[B, c_dim]`` (camera label ⊕ pose) → ws ``[B, num_ws, w_dim]``."""
        x = torch.cat([normalize_2nd_moment(z.float()), normalize_2nd_moment(self.embed(c.float()))], 1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :cut] = self.w_avg.lerp(ws[:, :cut], truncation_psi)
        return ws
