"""The tri-grid feature decoder (official ``OSGDecoder``).

Plane-mean of the ``[B, 3, M, 12]`` sampled features, then FC(12 → 32) → Softplus → FC(32 → 33).
Output 0 is the raw density σ (the renderer applies ``softplus(σ - 1)``); outputs 1…32 are the
32-channel feature that the w-modulated ToRGB turns into colour. No activation on the features
(the released model uses ``decoder_activation='none'``) and no view dependence. The paper calls
the decoder "modulated by w"; in the code it is not — only ToRGB and the background use w.
"""

from __future__ import annotations

from torch import Tensor, nn

from .layers import FullyConnectedLayer


class TriGridDecoder(nn.Module):
    def __init__(self, in_features: int = 12, hidden: int = 32, out_features: int = 32):
        super().__init__()
        self.out_features = out_features
        self.net = nn.Sequential(
            FullyConnectedLayer(in_features, hidden),
            nn.Softplus(),
            FullyConnectedLayer(hidden, 1 + out_features),
        )

    def forward(self, sampled: Tensor) -> tuple[Tensor, Tensor]:
        """sampled ``[B, 3, M, C]`` → (sigma ``[B, M, 1]``, features ``[B, M, out_features]``)."""
        x = sampled.mean(1)
        b, m, c = x.shape
        x = self.net(x.reshape(b * m, c)).reshape(b, m, -1)  # 2-D input: the FC layers use fused addmm
        return x[..., :1], x[..., 1:]
